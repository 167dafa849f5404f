"""A Modbus TCP device whose counter (holding register 0) goes up by one on every read of it.

Each poll then reads a value no other poll read: a reading missing from what reached the
forwarder or the broker was polled and lost, a value seen twice was delivered twice, and two
collectors polling the device at once show as twice the reads per period.
"""

from __future__ import annotations

from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

HOLDING = 3  # the function code pymodbus' datastore is addressed with for holding registers


class CountingCore(SimCore):
    """pymodbus' datastore, adding one to holding register 0 on every read that covers it."""

    def __init__(self, devices: list[SimDevice]) -> None:
        super().__init__(devices)
        self.reads = 0

    async def async_getValues(self, device_id: int, func_code: int, address: int, count: int = 1) -> Any:
        if func_code == HOLDING and address <= 0 < address + count:
            self.reads += 1
            await super().async_setValues(device_id, HOLDING, 0, [self.reads % 65536])
        return await super().async_getValues(device_id, func_code, address, count)


async def counting_server(port: int, unit: int = 1) -> tuple[ModbusTcpServer, CountingCore]:
    """A counting device on 127.0.0.1:port, serving in the background of the running loop."""
    devices = [SimDevice(id=unit, simdata=(
        [SimData(0, count=16, values=False, datatype=DataType.BITS)],
        [SimData(0, count=16, values=False, datatype=DataType.BITS)],
        [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
        [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
    ))]
    server = ModbusTcpServer(devices, address=("127.0.0.1", port))
    core = server.context = CountingCore(devices)
    await server.serve_forever(background=True)
    return server, core
