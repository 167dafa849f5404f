"""A Modbus TCP device whose counter (holding register 0) goes up by one on every read of it.

Each poll then reads a value no other poll read: a reading missing from what reached the
forwarder or the broker was polled and lost, a value seen twice was delivered twice, and two
collectors polling the device at once show as twice the reads per period.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from tests.support.broker import free_port

HOLDING = 3  # the function code pymodbus' datastore is addressed with for holding registers


class CountingCore(SimCore):
    """pymodbus' datastore, adding one to holding register 0 on every read that covers it."""

    def __init__(self, devices: list[SimDevice], delay: float = 0.0) -> None:
        super().__init__(devices)
        self.reads = 0
        self.delay = delay  # seconds each answer takes (a slow device: a read is long under way)

    async def async_getValues(self, device_id: int, func_code: int, address: int, count: int = 1) -> Any:
        if func_code == HOLDING and address <= 0 < address + count:
            self.reads += 1
            await super().async_setValues(device_id, HOLDING, 0, [self.reads % 65536])
            if self.delay:
                await asyncio.sleep(self.delay)
        return await super().async_getValues(device_id, func_code, address, count)


def _devices(unit: int) -> list[SimDevice]:
    return [SimDevice(id=unit, simdata=(
        [SimData(0, count=16, values=False, datatype=DataType.BITS)],
        [SimData(0, count=16, values=False, datatype=DataType.BITS)],
        [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
        [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
    ))]


async def counting_server(port: int, unit: int = 1, delay: float = 0.0) -> tuple[ModbusTcpServer, CountingCore]:
    """A counting device on 127.0.0.1:port, serving in the background of the running loop."""
    devices = _devices(unit)
    server = ModbusTcpServer(devices, address=("127.0.0.1", port))
    core = server.context = CountingCore(devices, delay)
    await server.serve_forever(background=True)
    return server, core


async def counting_serial_server(
    path: str, unit: int = 1, baudrate: int = 19200
) -> tuple[ModbusSerialServer, CountingCore]:
    """A counting Modbus RTU device on the serial port (or pty) `path`."""
    devices = _devices(unit)
    server = ModbusSerialServer(devices, port=path, baudrate=baudrate)
    core = server.context = CountingCore(devices)
    await server.serve_forever(background=True)
    return server, core


class Devices:
    """Counting devices for a test or bench outside asyncio: one pymodbus TCP server per device,
    on an event loop in a thread of this process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: dict[str, ModbusTcpServer | ModbusSerialServer] = {}

    def start(self, name: str) -> int:
        """Start device `name`; its port."""
        port = free_port()

        async def serve() -> None:
            self.servers[name], _ = await counting_server(port)

        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)
        return port

    def start_serial(self, name: str, path: str, baudrate: int = 19200) -> None:
        """Start device `name` as a Modbus RTU unit 1 on the serial port (or pty) `path`."""

        async def serve() -> None:
            self.servers[name], _ = await counting_serial_server(path, baudrate=baudrate)

        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            for server in self.servers.values():
                with contextlib.suppress(Exception):
                    await server.shutdown()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
