"""A Modbus TCP device whose counter (holding register 0) goes up by one on every read of it.

Each poll then reads a value no other poll read: a reading missing from what reached the
forwarder or the broker was polled and lost, a value seen twice was delivered twice, and two
collectors polling the device at once show as twice the reads per period.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from typing import Any

from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from tests.support import sparkplug as sp
from tests.support.broker import free_port
from tests.support.mqtt import Message

HOLDING = 3  # the function code pymodbus' datastore is addressed with for holding registers

# The device file of a counting device polled every 100 ms; `extra`: more tags (YAML list items).
DEVICE_YAML = """\
name: {name}
protocol: modbus
connection:
  tcp: {{host: 127.0.0.1, port: {port}}}
unit: 1
poll: 100ms
tags:
  - name: counter
    table: holding
    address: 0
    type: uint16
{extra}"""


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


class CountingDevice:
    """`with CountingDevice() as device:` serves unit 1 on `device.port` until the block ends."""

    def __init__(self) -> None:
        self._devices = Devices()
        self.port = self._devices.start("device")

    def __enter__(self) -> CountingDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self._devices.close()


def device_yaml(port: int, name: str = "press-1", extra: str = "") -> str:
    return DEVICE_YAML.format(name=name, port=port, extra=extra)


def missing(values: list[int]) -> list[int]:
    """Counter values between the first and the last seen that never arrived (wrap at 65536 ignored)."""
    seen = sorted(set(values))
    return [v for a, b in itertools.pairwise(seen) for v in range(a + 1, b)]


def repeated(values: list[int]) -> int:
    """Values that arrived more than once."""
    return len(values) - len(set(values))


def sparkplug_counter(messages: list[Message], group: str, node: str, device: str = "press-1") -> list[int]:
    """Every counter value a Sparkplug host got: in DBIRTHs (by name) and DDATA (by the alias the
    last DBIRTH gave it)."""
    values: list[int] = []
    alias = None
    for message in messages:
        if message.topic == f"spBv1.0/{group}/DBIRTH/{node}/{device}":
            counter = sp.decode(message.payload).metric("counter")
            alias = counter.alias
            if counter.value is not None and not counter.is_null:
                values.append(int(counter.value))
        elif message.topic == f"spBv1.0/{group}/DDATA/{node}/{device}":
            values += [int(m.value) for m in sp.decode(message.payload).metrics if m.alias == alias]
    return values
