"""Real parts for the Modbus tests: a pymodbus server on a free port, a recording forwarder end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from collectors.core.config import HandoffConfig
from collectors.core.handoff import HandoffServer
from collectors.core.model import DeviceState, Reading, WriteResult
from collectors.modbus.config import ModbusCollectorConfig
from tests.support.broker import free_port

# function codes the pymodbus server's datastore is addressed with, per table
FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


def sim_device(unit: int, size: int = 64) -> SimDevice:
    """A device with `size` coils, discrete inputs, input and holding registers, all zero."""
    return SimDevice(id=unit, simdata=(
        [SimData(0, count=size, values=False, datatype=DataType.BITS)],
        [SimData(0, count=size, values=False, datatype=DataType.BITS)],
        [SimData(0, count=size, values=0, datatype=DataType.REGISTERS)],
        [SimData(0, count=size, values=0, datatype=DataType.REGISTERS)],
    ))


class Server:
    """pymodbus' own server, stopped and started again on the same port or serial port."""

    def __init__(self, units: tuple[int, ...] = (1,), port: int | None = None,
                 serial: str | None = None) -> None:
        self.units = units
        self.port = port or free_port()
        self.serial = serial
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self.preset: list[tuple[int, str, int, list[Any]]] = []

    async def start(self) -> Server:
        devices = [sim_device(unit) for unit in self.units]
        if self.serial:
            self._server = ModbusSerialServer(devices, port=self.serial, baudrate=115200)
        else:
            self._server = ModbusTcpServer(devices, address=("127.0.0.1", self.port))
        await self._server.serve_forever(background=True)
        for unit, table, address, values in self.preset:
            await self.set(unit, table, address, values, remember=False)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    async def set(
        self, unit: int, table: str, address: int, values: list[Any], remember: bool = True
    ) -> None:
        """Set values; remembered ones are set again after a restart (a device keeps its registers)."""
        assert self._server is not None
        if remember:
            self.preset.append((unit, table, address, values))
        await self._server.async_setValues(unit, FC[table], address, values)

    async def get(self, unit: int, table: str, address: int, count: int = 1) -> list[Any]:
        assert self._server is not None
        return list(await self._server.async_getValues(unit, FC[table], address, count))


class Sink:
    """The forwarder's end of the hand-off, recording what arrives."""

    def __init__(self) -> None:
        self.received: list[Reading] = []
        self.states: list[DeviceState] = []
        self.results: list[WriteResult] = []

    async def readings(self, collector: str, readings: list[Reading]) -> None:
        self.received.extend(readings)

    async def device_state(self, collector: str, state: DeviceState) -> None:
        self.states.append(state)

    def write_result(self, collector: str, result: WriteResult) -> None:
        self.results.append(result)

    def latest(self, device: str) -> dict[str, Reading]:
        return {r.tag: r for r in self.received if r.device == device}

    def of(self, device: str, tag: str) -> list[Reading]:
        return [r for r in self.received if r.device == device and r.tag == tag]


async def until(check: Callable[[], Any], timeout: float = 8.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"{what}: not reached in {timeout}s"
        await asyncio.sleep(0.02)


@pytest.fixture(autouse=True)
def quiet_pymodbus() -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = await Server().start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def forwarder(tmp_path: Path) -> AsyncIterator[tuple[Sink, HandoffServer, HandoffConfig]]:
    sink = Sink()
    settings = HandoffConfig(socket=tmp_path / "handoff.sock", linger=0.001)
    async with HandoffServer(settings.socket, sink) as handoff:
        yield sink, handoff, settings


def collector_config(settings: HandoffConfig, devices: list[dict[str, Any]], tmp_path: Path,
                     **extra: Any) -> ModbusCollectorConfig:
    return ModbusCollectorConfig.model_validate({
        "name": "modbus", "handoff": settings.model_dump(), "metrics_port": None,
        "state_dir": str(tmp_path), "devices": devices, **extra,
    })
