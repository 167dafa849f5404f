"""Which requests a device's tags need: poll classes, and neighbouring tags coalesced into blocks.

Pure: a device in, a plan out. The collector polls the plan and `fieldgate plan` prints it.

Tags with the same effective poll interval form one poll class. Within a class, the tags of
one table are sorted by address and joined greedily into blocks: a tag joins the block
before it when the block then stays within the device's limit (max_registers, or max_bits
for coils and discrete inputs) and the unused stretch between them is at most max_gap
registers (bits: max_gap * 16, as a register's worth of bits costs about one register on
the wire). A device has one unit id, so a block never spans units; it never spans tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from collectors.core.config import format_duration
from collectors.core.errors import ConfigError
from collectors.modbus.config import ModbusDevice, ModbusTag, Table


class Member(NamedTuple):
    """A tag inside a block, `offset` registers (bits) from the block's start."""

    tag: ModbusTag
    offset: int


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: `count` registers (bits) of `table` from `start`."""

    table: Table
    start: int
    count: int
    tags: tuple[Member, ...]
    gap: int  # registers (bits) read but belonging to no tag
    interval: float

    @property
    def end(self) -> int:
        """The last address read."""
        return self.start + self.count - 1

    def describe(self) -> str:
        """`holding 0..9 (10 regs, 2 gap) every 250ms: temperature, pressure`"""
        unit = ("bit" if self.table.is_bits else "reg") + ("" if self.count == 1 else "s")
        names = ", ".join(member.tag.name for member in self.tags)
        return (
            f"{self.table.value} {self.start}..{self.end} ({self.count} {unit}, {self.gap} gap) "
            f"every {format_duration(self.interval)}: {names}"
        )


@dataclass(frozen=True, slots=True)
class PollClass:
    """The blocks polled together, every `interval` seconds."""

    interval: float
    blocks: list[Block] = field(default_factory=list)

    @property
    def tags(self) -> list[ModbusTag]:
        return [member.tag for block in self.blocks for member in block.tags]

    def describe(self) -> str:
        requests = "request" if len(self.blocks) == 1 else "requests"
        lines = [f"every {format_duration(self.interval)}: {len(self.blocks)} {requests}"]
        lines.extend(f"  {block.describe()}" for block in self.blocks)
        return "\n".join(lines)


def plan_device(device: ModbusDevice) -> list[PollClass]:
    """The device's poll classes, fastest first, each with its coalesced blocks.

    Raises ConfigError when one tag alone is longer than the device lets a request read.
    """
    by_interval: dict[float, list[ModbusTag]] = {}
    for tag in device.tags:
        by_interval.setdefault(tag.poll or device.poll, []).append(tag)
    classes = []
    for interval in sorted(by_interval):
        blocks: list[Block] = []
        for table in Table:
            tags = [tag for tag in by_interval[interval] if tag.table is table]
            blocks.extend(_coalesce(device, table, tags, interval))
        classes.append(PollClass(interval, blocks))
    return classes


def describe_plan(device: ModbusDevice) -> str:
    """What `fieldgate plan` shows for one device."""
    classes = plan_device(device)
    requests = sum(len(poll_class.blocks) for poll_class in classes)
    head = f"{device.name} (unit {device.unit}, {device.connection.link_key}): {requests} requests"
    return "\n".join([head, *(f"  {line}" for c in classes for line in c.describe().splitlines())])


def _coalesce(device: ModbusDevice, table: Table, tags: list[ModbusTag], interval: float) -> list[Block]:
    if table.is_bits:
        limit, max_gap, what = device.max_bits, device.max_gap * 16, "max_bits"
    else:
        limit, max_gap, what = device.max_registers, device.max_gap, "max_registers"
    blocks: list[Block] = []
    current: list[ModbusTag] = []
    start = end = 0  # the open block covers [start, end)
    for tag in sorted(tags, key=lambda t: (t.address, t.name)):
        size = tag.registers
        if size > limit:
            raise ConfigError(
                f"{device.name}: tag {tag.name} spans {size} registers, more than one request "
                f"reads ({what}: {limit})",
                device=device.name, tag=tag.name,
            )
        tag_end = tag.address + size
        if current and tag.address - end <= max_gap and max(end, tag_end) - start <= limit:
            current.append(tag)
            end = max(end, tag_end)
            continue
        if current:
            blocks.append(_block(table, start, end, current, interval))
        current, start, end = [tag], tag.address, tag_end
    if current:
        blocks.append(_block(table, start, end, current, interval))
    return blocks


def _block(table: Table, start: int, end: int, tags: list[ModbusTag], interval: float) -> Block:
    used: set[int] = set()
    for tag in tags:
        used.update(range(tag.address, tag.address + tag.registers))
    members = tuple(Member(tag, tag.address - start) for tag in tags)
    return Block(table, start, end - start, members, end - start - len(used), interval)
