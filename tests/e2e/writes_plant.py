"""A plant for write tests, in one process: pymodbus' server -> Modbus collector -> forwarder -> Mosquitto.

The device records every request it serves (`Device.log`), so a test can tell exactly what was
written to it and when it was polled, and it can be made slow to write (`write_delay`), as a PLC
busy with its scan is. The forwarder and the collector are the real ones; the SCADA side is a
real MQTT client (`Subscriber`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from collectors.forwarder.app import Forwarder
from collectors.forwarder.config import ForwarderConfig
from collectors.modbus.collector import ModbusCollector
from collectors.modbus.config import ModbusCollectorConfig
from tests.support.broker import Mosquitto, free_port
from tests.support.mqtt import Subscriber

PREFIX = "fieldgate/line3"
DEVICE = "press-1"
SETPOINTS = [f"sp{i}" for i in range(8)]  # writable uint16 holding 10..17

TAGS: list[dict[str, Any]] = [
    {"name": "level", "table": "holding", "address": 0, "type": "uint16"},
    {"name": "speed", "table": "holding", "address": 1, "type": "float64", "scale": 0.001, "writable": True},
    {"name": "limit", "table": "holding", "address": 5, "type": "int16", "scale": 0.1, "writable": True},
    {"name": "run", "table": "coil", "address": 0, "type": "bool", "writable": True},
    *({"name": name, "table": "holding", "address": 10 + i, "type": "uint16", "writable": True}
      for i, name in enumerate(SETPOINTS)),
]
WRITE_CODES = {5, 6, 15, 16}


@dataclass
class Request:
    at: float  # time.monotonic()
    function_code: int
    address: int
    count: int
    values: list[Any] | None


@dataclass
class Device:
    """What the device served, and how slowly it takes writes."""

    write_delay: float = 0.0
    log: list[Request] = field(default_factory=list)
    failing_reads: set[int] = field(default_factory=set)  # FC 3 reads from these addresses fail


    async def action(self, function_code: int, start_address: int, address: int, count: int,
                     current_registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        # pymodbus calls this twice for a write: with the values, then to read them back for the answer
        if function_code in WRITE_CODES and set_values is None:
            return None
        if function_code == 3 and address in self.failing_reads:
            return ExcCodes.DEVICE_FAILURE
        values = list(set_values) if set_values is not None else None
        self.log.append(Request(time.monotonic(), function_code, address, count, values))
        if values is not None and self.write_delay:
            await asyncio.sleep(self.write_delay)
        return None

    def written(self, function_code: int, address: int) -> list[Any]:
        """Every value written to one register (coil), in order."""
        return [r.values[0] for r in self.log
                if r.function_code == function_code and r.address == address and r.values]

    def writes(self) -> list[Request]:
        return [r for r in self.log if r.function_code in WRITE_CODES]

    def poll_gap(self, since: float, until: float) -> float:
        """The widest time between two polls of the device's block (FC 3 from address 0) in a window."""
        polls = [r.at for r in self.log if r.function_code == 3 and r.address == 0 and since <= r.at <= until]
        edges = [since, *polls, until]
        return max(b - a for a, b in pairwise(edges))


@dataclass
class Plant:
    device: Device
    forwarder: Forwarder
    collector: ModbusCollector
    subscriber: Subscriber


def forwarder_config(tmp_path: Path, broker: Mosquitto, **mqtt: Any) -> ForwarderConfig:
    return ForwarderConfig.model_validate({
        "gateway": {"id": "line3", "group": "plant1"},
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": "5s", **mqtt},
        "buffer": {"dir": str(tmp_path / "buffer")},
        "metrics": {"port": None},
        "handoff": {"socket": str(tmp_path / "handoff.sock"), "linger": "5ms"},
        "devices": [{
            "name": DEVICE, "collector": "modbus",
            "tags": [{"name": t["name"], "type": t["type"], "writable": t.get("writable", False)} for t in TAGS],
        }],
    })


@asynccontextmanager
async def plant(tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, *, write_timeout: float = 10.0,
                write_delay: float = 0.0, timeout: str = "500ms", limits: dict[str, Any] | None = None,
                **mqtt: Any) -> AsyncIterator[Plant]:
    """`limits`: keys added to the `limit` tag (write_min, write_max)."""
    device = Device(write_delay)
    blocks = ([SimData(0, count=32, values=False, datatype=DataType.BITS)],
              [SimData(0, count=32, values=False, datatype=DataType.BITS)],
              [SimData(0, count=32, values=0, datatype=DataType.REGISTERS)],
              [SimData(0, count=32, values=0, datatype=DataType.REGISTERS)])
    port = free_port()
    server = ModbusTcpServer([SimDevice(id=1, simdata=blocks, action=device.action)], address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    config = forwarder_config(tmp_path, broker, **mqtt)
    collector_config = ModbusCollectorConfig.model_validate({
        "name": "modbus", "handoff": {"socket": str(config.handoff.socket), "linger": "5ms"},
        "metrics_port": None, "state_dir": str(tmp_path),
        "devices": [{"name": DEVICE, "protocol": "modbus", "poll": "50ms", "timeout": timeout,
                     "connection": {"tcp": {"host": "127.0.0.1", "port": port}},
                     "tags": [{**t, **(limits or {})} if t["name"] == "limit" else t for t in TAGS]}],
    })
    try:
        async with Forwarder(config, write_timeout=write_timeout) as forwarder, \
                ModbusCollector(collector_config) as collector:
            task = asyncio.create_task(collector.run(), name="test-modbus-collector")
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 15
                while "modbus" not in forwarder.handoff.collectors or not device.log:
                    assert loop.time() < deadline, "the collector did not join the hand-off and poll"
                    await asyncio.sleep(0.02)
                yield Plant(device, forwarder, collector, subscriber)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        await server.shutdown()
