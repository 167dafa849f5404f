"""A Modbus TCP device whose holding register 0 counts its own reads: a reading lost anywhere
between the device and the broker shows as a counter value missing at the subscriber.

pymodbus' server on an event loop in a thread of the test process (the tests that use it run
the collector as a child process). bench/bench_updates.py measures the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from tests.support import sparkplug as sp
from tests.support.broker import free_port
from tests.support.mqtt import Message

HOLDING = 3  # the function code pymodbus' datastore addresses holding registers with

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


def device_yaml(port: int, name: str = "press-1", extra: str = "") -> str:
    return DEVICE_YAML.format(name=name, port=port, extra=extra)


class _CountingCore(SimCore):
    """pymodbus' datastore, adding one to holding register 0 on every read that covers it."""

    def __init__(self, devices: list[SimDevice]) -> None:
        super().__init__(devices)
        self.reads = 0

    async def async_getValues(self, device_id: int, func_code: int, address: int, count: int = 1) -> Any:
        if func_code == HOLDING and address <= 0 < address + count:
            self.reads += 1
            await super().async_setValues(device_id, HOLDING, 0, [self.reads % 65536])
        return await super().async_getValues(device_id, func_code, address, count)


class CountingDevice:
    """`with CountingDevice() as device:` serves unit 1 on `device.port` until the block ends."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="counting-modbus", daemon=True)
        self._server: ModbusTcpServer | None = None

    def __enter__(self) -> CountingDevice:
        self._thread.start()

        async def serve() -> None:
            devices = [SimDevice(id=1, simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
            ))]
            server = ModbusTcpServer(devices, address=("127.0.0.1", self.port))
            server.context = _CountingCore(devices)
            await server.serve_forever(background=True)
            self._server = server

        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                with contextlib.suppress(Exception):
                    await self._server.shutdown()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


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
