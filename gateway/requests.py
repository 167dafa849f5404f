"""`fieldgate plan DIR`: the exact requests each collector will make, per device, and the load
this puts on each link.

Modbus: the poll classes and coalesced blocks of `collectors.modbus.planner`; per serial line,
how busy the plan keeps it (RTU frames at the configured baud rate), so an engineer sees a
line that cannot keep up before the polls run late. OPC UA: the subscription and polled
reads of `collectors.opcua.subscriptions`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

from collectors.modbus.config import ModbusDevice
from collectors.opcua.config import OpcuaDevice
from gateway.config import ConfigErrors, GatewayConfig, load_config

# RTU: every character is 11 bits on the wire (start, 8 data, parity or a second stop, stop),
# and frames are separated by at least 3.5 characters of silence (Modbus over serial line, 2.5.1).
RTU_CHAR_BITS = 11
RTU_SILENCE_CHARS = 3.5
RTU_READ_REQUEST = 8  # unit, function, start (2), count (2), CRC (2)
RTU_RESPONSE_OVERHEAD = 5  # unit, function, byte count, CRC (2)


@dataclass
class LinkLoad:
    """What the plan asks of one link (TCP endpoint or serial port)."""

    key: str
    devices: list[str] = field(default_factory=list)
    requests_per_s: float = 0.0
    busy_s_per_s: float = 0.0  # serial only: seconds of line time per second
    settings: str = ""


def rtu_request_time(count: int, bits: bool, baudrate: int, frame_delay: float = 0.0) -> float:
    """Seconds one read occupies a serial line: request, response, the silences, the pause."""
    data = math.ceil(count / 8) if bits else 2 * count
    chars = RTU_READ_REQUEST + RTU_RESPONSE_OVERHEAD + data + 2 * RTU_SILENCE_CHARS
    return chars * RTU_CHAR_BITS / baudrate + frame_delay


def modbus_section(device: ModbusDevice, loads: dict[str, LinkLoad]) -> list[str]:
    from collectors.modbus.planner import plan_device

    classes = plan_device(device)
    requests = sum(len(c.blocks) for c in classes)
    key = device.connection.link_key
    lines = [f"{device.name}: modbus unit {device.unit} on {key}, {requests} "
             f"request{'s' if requests != 1 else ''} in {len(classes)} poll "
             f"class{'es' if len(classes) != 1 else ''}"]
    load = loads.setdefault(key, LinkLoad(key))
    load.devices.append(device.name)
    rtu = device.connection.rtu
    if rtu is not None:
        load.settings = f"{rtu.baudrate} {rtu.bytesize}{rtu.parity}{rtu.stopbits}"
    for poll_class in classes:
        lines.extend(f"  {line}" for line in poll_class.describe().splitlines())
        load.requests_per_s += len(poll_class.blocks) / poll_class.interval
        if rtu is not None:
            busy = sum(
                rtu_request_time(block.count, block.table.is_bits, rtu.baudrate, device.frame_delay)
                for block in poll_class.blocks
            )
            load.busy_s_per_s += busy / poll_class.interval
    return lines


def opcua_section(device: OpcuaDevice) -> list[str]:
    from collectors.opcua.subscriptions import plan_device

    return plan_device(device)


def link_lines(loads: dict[str, LinkLoad]) -> list[str]:
    lines = ["links:"]
    for load in loads.values():
        text = f"  {load.key}: {', '.join(load.devices)}; {load.requests_per_s:.3g} requests/s"
        if load.settings:
            busy = 100 * load.busy_s_per_s
            text += f", {load.settings}: line busy {busy:.0f}%"
            if busy > 100:
                text += " - the line cannot keep up: poll less often, raise the baud rate or split the line"
            elif busy > 70:
                text += " - little room left for writes and retries"
        lines.append(text)
    return lines


def plan_text(config: GatewayConfig) -> str:
    """What `fieldgate plan` prints."""
    loads: dict[str, LinkLoad] = {}
    sections: list[str] = []
    for entry in config.devices:
        device = entry.device
        if isinstance(device, ModbusDevice):
            sections.append("\n".join(modbus_section(device, loads)))
        else:
            sections.append("\n".join(opcua_section(device)))
    if loads:
        sections.append("\n".join(link_lines(loads)))
    return "\n\n".join(sections)


def main_plan(args: argparse.Namespace) -> int:
    """`fieldgate plan DIR`: per device, the requests a collector makes; exit 1 on config errors."""
    try:
        config = load_config(args.dir)
    except ConfigErrors as exc:
        for problem in exc.problems:
            print(problem)
        return 1
    print(plan_text(config))
    return 0
