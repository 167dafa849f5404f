"""The reading model: one value of one tag, with its source timestamp and quality.

Every collector produces `Reading`s and every payload format consumes them; the
glossary is device, tag, unit (engineering unit), reading, quality.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

# A tag value as it travels: JSON scalars, or a list of them (OPC UA arrays).
Value = bool | int | float | str | list[Any] | None


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class Reading(NamedTuple):
    """One value of one tag.

    `ts_ms` is the source timestamp in milliseconds since the epoch, UTC (OPC UA source
    timestamp; Modbus: time of the poll response). `reason` says why quality is not good.
    A NamedTuple because a busy gateway makes and moves ~10^5 of these a second: it is
    immutable, cheap to build, and travels the hand-off as a plain JSON array.
    `quality` compares equal to `Quality` members whether it is one or its plain string.
    """

    device: str
    tag: str
    value: Value
    ts_ms: int
    quality: str = Quality.GOOD
    reason: str | None = None


@dataclass(slots=True, frozen=True)
class WriteRequest:
    """A write of one tag, as asked northbound (json `/set` or a Sparkplug DCMD).

    `deadline_ms` (ms since the epoch, UTC): the requester's answer is due then, so the
    collector does not start the write after it; None: no deadline (an older forwarder).
    """

    id: str
    device: str
    tag: str
    value: Any
    deadline_ms: int | None = None


@dataclass(slots=True, frozen=True)
class WriteResult:
    id: str
    device: str
    tag: str
    ok: bool
    error: str | None = None


@dataclass(slots=True, frozen=True)
class DeviceState:
    """A device went online (answers) or offline (stopped answering)."""

    device: str
    online: bool
    reason: str | None = None


@dataclass(slots=True, frozen=True)
class DeviceTypes:
    """The datatypes a collector read from a device for its tags (OPC UA: each node's DataType
    attribute), in the catalog's type names (`int16`, `float`, `datetime`, `double[]`, ...).
    Formats that must declare a datatype (Sparkplug births) use them instead of guessing one
    from the first value."""

    device: str
    types: dict[str, str]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso_ms(ts_ms: int) -> str:
    """`2026-11-28T08:00:00.123Z`: UTC with milliseconds, as the MQTT payloads carry it (docs/mqtt.md)."""
    seconds, ms = divmod(ts_ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms:03d}Z"
