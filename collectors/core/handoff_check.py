"""What the forwarder takes from a collector: each reading checked against that collector's catalog.

A reading that reaches the broker names a topic (json: `{prefix}/{device}/{tag}`) and a
Sparkplug metric, so one the forwarder does not know must never get that far: a device of
another collector, a tag no device has, `x/#` or `x/set` as a name, a timestamp paho or
Sparkplug cannot encode, a quality outside the model, a value no tag can carry. Such a
reading is dropped and counted per (collector, reason); the first of each pair is logged at
WARNING, the repeats at DEBUG. The rest of its batch goes on, and the batch is acknowledged,
so a collector never resends poison forever.

The catalog is the forwarder's (`devices:` of its slice, rendered by the gateway): device ->
the collector that owns it and its tags, with the type of the values its collector hands off
when the config tells it (Modbus; OPC UA tags have none, any JSON scalar or array passes).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from collectors.core.model import Quality, Reading
from collectors.core.names import NAME_MAX, NAME_PATTERN

log = logging.getLogger(__name__)

# Source timestamps from 2000-01-01 to 2200-01-01 UTC, in ms: wider than any clock a PLC or an
# OPC UA server keeps, narrower than what makes datetime, paho or a uint64 metric fail.
TS_MIN = 946_684_800_000
TS_MAX = 7_258_118_400_000
REASON_MAX = 1024  # characters of a reading's `reason` (a sentence, not a payload)
VALUE_DEPTH = 32  # nesting of OPC UA values: arrays of structures of arrays ...

_NAME = re.compile(NAME_PATTERN)
_QUALITIES = frozenset(q.value for q in Quality)
_NUMBER = (bool, int, float)
# Value classes that pass without a closer look: [0] a numeric Modbus tag, [1] a `string` one,
# [2] an OPC UA tag (anything else, a list or an object, is looked at by value_fits).
_FAST_VALUES = (frozenset({bool, int, float, type(None)}), frozenset({str, type(None)}),
                frozenset({bool, int, float, str, type(None)}))


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One device as the forwarder knows it: its collector and its tags (tag -> value type or None)."""

    collector: str
    tags: Mapping[str, str | None]


def good_name(name: object) -> bool:
    """A device or tag name that is one MQTT topic level (collectors.core.names.Name)."""
    return isinstance(name, str) and len(name) <= NAME_MAX and _NAME.fullmatch(name) is not None


def _scalar(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _json(value: object, depth: int) -> bool:
    if isinstance(value, list):
        return depth < VALUE_DEPTH and all(_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return depth < VALUE_DEPTH and all(_json(v, depth + 1) for v in value.values())
    return _scalar(value)


def value_fits(value: object, type_name: str | None) -> bool:
    """Whether a value is one a tag of this type (None: unknown, OPC UA) can carry.

    An OPC UA value is any JSON (structures are objects, arrays lists) nested at most VALUE_DEPTH
    deep. A Modbus tag's values are a text (`string`) or a number (every other type; a bool is one,
    and a bool tag's 0/1 is a number too): anything else no Modbus tag can have. The exact type and
    range is the payload format's business (Sparkplug's datatypes)."""
    if value is None:
        return True  # bad and uncertain readings carry no value
    if type_name is None:
        return _scalar(value) or _json(value, 0)
    if type_name == "string":
        return isinstance(value, str)
    return isinstance(value, _NUMBER)


class LogOnce:
    """Logs the first event of each key at `level` and the repeats at DEBUG (a flood of bad
    frames or rogue connections must not become a flood of log lines). Keys are bounded by
    `limit`: past it every event is logged at DEBUG."""

    def __init__(self, logger: logging.Logger, limit: int = 1000) -> None:
        self._log = logger
        self._seen: set[object] = set()
        self._limit = limit

    def __call__(self, key: object, level: int, message: str, *args: object, exc_info: bool = False) -> bool:
        """Log; True when this was the first of its key."""
        if key in self._seen or len(self._seen) >= self._limit:
            self._log.debug(message, *args, stacklevel=2, exc_info=exc_info)
            return False
        self._seen.add(key)
        self._log.log(level, message, *args, stacklevel=2, exc_info=exc_info)
        return True


@dataclass(slots=True)
class Rejections:
    """Readings dropped at the hand-off, per (collector, reason), for /metrics."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, collector: str, reason: str, detail: str) -> None:
        key = (collector, reason)
        seen = self.counts.get(key, 0)
        self.counts[key] = seen + 1
        if seen == 0:
            log.warning(
                "hand-off: dropped a reading from collector %s: %s (%s); further ones are counted in "
                "fieldgate_forwarder_handoff_rejected_total and logged at DEBUG", collector, detail, reason,
            )
        else:
            log.debug("hand-off: dropped a reading from collector %s: %s", collector, detail)

    def samples(self) -> list[tuple[dict[str, str], float]]:
        return [({"collector": c, "reason": r}, n) for (c, r), n in sorted(self.counts.items())]


def catalog_of(devices: Iterable[Any]) -> dict[str, CatalogEntry]:
    """The forwarder's `devices:` (CatalogDevice: name, collector, tags[name, type]) as a lookup."""
    return {d.name: CatalogEntry(d.collector, {t.name: t.type for t in d.tags}) for d in devices}


class ReadingCheck:
    """Turns the rows of a `batch` frame into the Readings a collector may hand off."""

    def __init__(self, catalog: Mapping[str, CatalogEntry] | None) -> None:
        """`catalog` None checks everything but catalog membership (collector tests without one)."""
        self._catalog = catalog
        self.rejected = Rejections()

    @classmethod
    def from_catalog(cls, devices: Iterable[Any]) -> ReadingCheck:
        """From the forwarder's `devices:` (CatalogDevice: name, collector, tags[name, type])."""
        return cls(catalog_of(devices))

    def use_catalog(self, devices: Iterable[Any]) -> None:
        """Check against a new catalog from now on (the forwarder's reload in place); the
        counts of what was dropped go on."""
        self._catalog = catalog_of(devices)

    def readings(self, collector: str, rows: object) -> list[Reading]:
        """The good readings of a batch, in order; the others counted and logged."""
        if not isinstance(rows, list):
            self.rejected.add(collector, "malformed", f"`r` is a {type(rows).__name__}, not a list of readings")
            return []
        out: list[Reading] = []
        catalog, qualities = self._catalog, _QUALITIES
        for row in rows:
            if type(row) is not list or not 4 <= len(row) <= 6:
                self.rejected.add(collector, "malformed", f"a reading is {_short(row)}, not [device, tag, value, "
                                  "ts_ms, quality?, reason?]")
                continue
            device, tag, value, ts = row[0], row[1], row[2], row[3]
            if catalog is not None:
                entry = catalog.get(device) if type(device) is str else None
                if entry is None or entry.collector != collector or type(tag) is not str or tag not in entry.tags:
                    self._refuse_name(collector, device, tag)
                    continue
                type_name = entry.tags[tag]
            elif good_name(device) and good_name(tag):
                type_name = None
            else:
                self._refuse_name(collector, device, tag)
                continue
            # The common case inline, as cheaply as it goes (~10^5 readings a second pass here):
            # a number or text value, an int timestamp in range, a known quality, no reason.
            n = len(row)
            if (
                value.__class__ in _FAST_VALUES[type_name == "string" if type_name else 2]
                and type(ts) is int and TS_MIN <= ts <= TS_MAX
                and (n < 5 or (row[4].__class__ is str and row[4] in qualities))
                and (n < 6 or row[5] is None)
            ):
                out.append(Reading(*row))
                continue
            refusal = self._refusal(row, value, ts, type_name)
            if refusal is None:
                out.append(Reading(*row))
            else:
                self.rejected.add(collector, refusal[0], f"{_short(device)}/{_short(tag)}: {refusal[1]}")
        return out

    def device(self, collector: str, device: object) -> bool:
        """Whether a `state` frame's device is one of this collector's (else counted and logged)."""
        if self._catalog is None:
            ok = good_name(device)
        else:
            entry = self._catalog.get(device) if type(device) is str else None
            ok = entry is not None and entry.collector == collector
        if not ok:
            self._refuse_name(collector, device, None)
        return ok

    def _refuse_name(self, collector: str, device: object, tag: object) -> None:
        what = f"{_short(device)}/{_short(tag)}" if tag is not None else f"device {_short(device)}"
        if not (good_name(device) and (tag is None or good_name(tag))):
            self.rejected.add(collector, "bad_name", f"{what} is not a device/tag name "
                              f"(one topic level: {NAME_PATTERN}, at most {NAME_MAX} characters)")
            return
        assert self._catalog is not None and isinstance(device, str)
        entry = self._catalog.get(device)
        if entry is None:
            self.rejected.add(collector, "unknown_device", f"{what}: no device {device} in the catalog")
        elif entry.collector != collector:
            self.rejected.add(collector, "other_collector",
                              f"{what}: device {device} belongs to collector {entry.collector}")
        else:
            self.rejected.add(collector, "unknown_tag", f"{what}: device {device} has no tag {tag}")

    @staticmethod
    def _refusal(row: list[Any], value: object, ts: object, type_name: str | None) -> tuple[str, str] | None:
        if type(ts) is not int or not TS_MIN <= ts <= TS_MAX:
            return "bad_timestamp", f"ts_ms {_short(ts)} is not an integer between {TS_MIN} and {TS_MAX} (2000..2200)"
        if len(row) > 4 and (type(row[4]) is not str or row[4] not in _QUALITIES):
            return "bad_quality", f"quality {_short(row[4])} is not one of {', '.join(sorted(_QUALITIES))}"
        if len(row) > 5 and row[5] is not None and not (type(row[5]) is str and len(row[5]) <= REASON_MAX):
            return "bad_reason", f"reason {_short(row[5])} is not a text of at most {REASON_MAX} characters"
        if not value_fits(value, type_name):
            return "bad_value", (f"value {_short(value)} is not a {type_name}" if type_name
                                 else f"value {_short(value)} is nested deeper than {VALUE_DEPTH}")
        return None


def _short(thing: object, limit: int = 80) -> str:
    """A peer's value for a log line: bounded, so a 4 MiB string does not become a 4 MiB line."""
    text = repr(thing)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
