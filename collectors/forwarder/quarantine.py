"""What the forwarder cannot publish is set aside, counted and kept on disk, never replayed.

One bad reading must not stop publishing (a device `x/#` makes paho refuse the topic, a
`ts_ms` that is no integer or past year 9999 makes the payload formats raise), and a buffer
written by an older version, or damaged, must not stop it at every restart. So:

- `Screen.split` checks each reading before it is encoded: names usable as one MQTT topic
  level, `ts_ms` an integer in 1970..9999, a known quality, a reason that is text, an integer
  value within 64 bits. A reading that fails is dropped from its batch and the rest of the
  batch is published. (The hand-off checks readings as they arrive; this is the second line,
  for what reaches the buffer another way: a segment an older version wrote.)
- What the payload format or paho still refuses is dropped the same way (app.py, mqtt.py).
- `Quarantine` keeps what was dropped under `{buffer.dir}/quarantine/`: readings as JSON
  lines in `readings.jsonl` (up to `MAX_READINGS_FILE` bytes; past it they are only counted),
  and buffer segments with records that cannot be decoded (copied whole), or the torn tail
  cut off a segment at start-up. The first drop of an episode is logged at ERROR, the
  following ones at DEBUG (ErrorLatch); counters and the gauge of quarantined files are in
  /metrics, and /healthz says `degraded:` while quarantined segments are on disk.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from collectors.core.model import Quality, Reading
from collectors.core.service import ErrorLatch

log = logging.getLogger(__name__)

DIRECTORY = "quarantine"
READINGS_FILE = "readings.jsonl"
MAX_READINGS_FILE = 4 * 1024 * 1024  # a flood of bad readings must not fill the buffer's disk
TS_MAX = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant an ISO timestamp can carry
MAX_NAME = 1024  # bytes of a device or tag name; names from the config are at most 64 characters
_QUALITIES = frozenset(str(q) for q in Quality)
_NOT_IN_A_LEVEL = ("/", "+", "#", "\0")
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what JSON (orjson) and Sparkplug (Int64/UInt64) carry
_KNOWN_MAX = 100_000  # (device, tag) pairs remembered as checked; forgotten all at once past it


def shorten(text: str, limit: int = 64) -> str:
    """`text` cut to `limit` characters, with "…" when it was longer (echoes of input in logs and answers)."""
    return text if len(text) <= limit else text[:limit] + "…"


def bad_name(kind: str, name: Any) -> str | None:
    """Why `name` cannot be one MQTT topic level (a sentence), or None."""
    if not isinstance(name, str):
        return f"{kind} {shorten(repr(name))} is not text"
    if not name or any(c in name for c in _NOT_IN_A_LEVEL) or len(name.encode("utf-8", "replace")) > MAX_NAME:
        return f"{kind} {shorten(repr(name))} is not one MQTT topic level (empty, too long, or with / + # NUL)"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"{kind} {shorten(repr(name))} is not valid UTF-8"
    return None


def unpublishable(reading: Reading) -> str | None:
    """Why this reading cannot be published (a sentence), or None when it can."""
    device, tag, value, ts_ms, quality, reason = reading
    why = bad_name("device", device) or bad_name("tag", tag)
    if why:
        return why
    if type(ts_ms) is not int or not 0 <= ts_ms <= TS_MAX:
        return f"ts_ms {shorten(repr(ts_ms))} is not milliseconds since 1970 (an integer up to {TS_MAX})"
    if not isinstance(quality, str) or quality not in _QUALITIES:
        return f"quality {shorten(repr(quality))} is not one of good, uncertain, bad"
    if reason is not None and not isinstance(reason, str):
        return f"reason {shorten(repr(reason))} is not text"
    if isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _INT_MAX:
        return f"value {shorten(repr(value))} does not fit 64 bits"
    if value is not None and not isinstance(value, bool | int | float | str | list | dict):
        return f"value of type {type(value).__name__} is not a JSON value"
    return None


class Screen:
    """Splits batches into publishable readings and the rest; cheap for the usual all-good batch.

    The names of a (device, tag) pair are checked once and remembered; per reading only the
    timestamp, quality and the type of the value are looked at on the fast path."""

    def __init__(self) -> None:
        self._known: set[tuple[str, str]] = set()

    def split(self, readings: list[Reading]) -> tuple[list[Reading], list[tuple[Reading, str]]]:
        """(publishable readings in their order, [(dropped reading, why)])."""
        known = self._known
        try:
            for device, tag, value, ts_ms, quality, reason in readings:
                if (
                    type(ts_ms) is not int or not 0 <= ts_ms <= TS_MAX or (device, tag) not in known
                    or quality not in _QUALITIES or (reason is not None and type(reason) is not str)
                    or (type(value) is int and not _INT_MIN <= value <= _INT_MAX)
                ):
                    break
            else:
                return readings, []
        except (TypeError, ValueError):  # an unhashable name or quality: the slow path says which
            pass
        good: list[Reading] = []
        bad: list[tuple[Reading, str]] = []
        for reading in readings:
            try:
                why = unpublishable(reading)
            except Exception as exc:  # not even a reading (wrong arity from a damaged segment)
                why = f"not a reading: {shorten(str(exc))}"
            if why is None:
                good.append(reading)
                if len(known) >= _KNOWN_MAX:
                    known.clear()
                known.add((reading[0], reading[1]))
            else:
                bad.append((reading, why))
        return good, bad


class Quarantine:
    """`{buffer.dir}/quarantine/`: readings and buffer segments the forwarder could not publish."""

    def __init__(self, buffer_dir: Path, max_readings_bytes: int = MAX_READINGS_FILE) -> None:
        self.dir = buffer_dir / DIRECTORY
        self._max = max_readings_bytes
        self.readings = 0  # dropped readings (kept in readings.jsonl, or only counted once it is full)
        self.messages = 0  # messages the broker client refused (counted in mqtt.BrokerSession)
        self.quarantined = 0  # segments (or torn tails) set aside by this run
        self._latch = ErrorLatch(log, "forwarder: readings that cannot be published are dropped")
        if self.segments:
            log.warning("buffer: %d quarantined segments in %s (kept for inspection, never replayed)",
                        self.segments, self.dir)

    @property
    def segments(self) -> int:
        """Segment files in the quarantine now (an operator may remove them once looked at)."""
        try:
            return sum(1 for p in self.dir.iterdir() if ".seg" in p.name)
        except OSError:
            return 0

    def _ensure_dir(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def drop(self, dropped: Iterable[tuple[Reading, str]], where: str) -> None:
        """Count, log (latched) and keep readings that will not be published."""
        dropped = list(dropped)
        if not dropped:
            return
        self.readings += len(dropped)
        first_reading, first_why = dropped[0]
        self._latch.failure(
            f"{len(dropped)} dropped from a {where} batch, e.g. {shorten(repr(tuple(first_reading)), 160)}: "
            f"{first_why} (kept in {self.dir / READINGS_FILE}, counted in "
            "fieldgate_forwarder_unpublishable_readings_total)"
        )
        lines = b"".join(
            orjson.dumps({"why": why, "reading": shorten(repr(tuple(reading)), 4096), "from": where}) + b"\n"
            for reading, why in dropped
        )
        try:
            self._ensure_dir()
            path = self.dir / READINGS_FILE
            size = path.stat().st_size if path.exists() else 0
            if size + len(lines) > self._max:
                return  # full: counted only
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, lines)
            finally:
                os.close(fd)
        except OSError as exc:
            log.debug("quarantine: cannot keep dropped readings in %s: %s", self.dir, exc)

    def published(self) -> None:
        """A batch went out whole: the next drop is logged at ERROR again."""
        if self._latch.failing:
            self._latch.failing = False
            self._latch.failures = 0

    def keep_segment(self, path: Path, lane: str, why: str, tail_from: int | None = None) -> Path | None:
        """Copy a buffer segment (or its tail from `tail_from`) into the quarantine; the caller
        then skips or cuts what could not be read. None when the copy failed (logged)."""
        suffix = "" if tail_from is None else f".tail-{tail_from}"
        target = self.dir / f"{lane}-{path.name}{suffix}"
        try:
            self._ensure_dir()
            n = 1
            while target.exists():  # the same segment name again after a restart: keep both
                n += 1
                target = self.dir / f"{lane}-{path.name}{suffix}.{n}"
            with path.open("rb") as source, open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600),
                                                 "wb") as copy:
                if tail_from is not None:
                    source.seek(tail_from)
                shutil.copyfileobj(source, copy)
        except OSError as exc:
            log.error("buffer %s: %s; could not keep it in %s: %s", lane, why, self.dir, exc)
            return None
        self.quarantined += 1
        log.error("buffer %s: %s; kept as %s (never replayed; counted in "
                  "fieldgate_forwarder_quarantined_segments)", lane, why, target)
        return target

    def note(self) -> str | None:
        """A `degraded:` line for /healthz while quarantined segments are on disk."""
        count = self.segments
        if not count:
            return None
        return (f"{count} buffer segments quarantined in {self.dir} (unreadable records, "
                "kept for inspection, never replayed)")
