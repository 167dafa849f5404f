"""Store-and-forward: readings wait here until the broker has them.

Two lanes, each first-in first-out, so every tag keeps its order within a lane::

    live     readings that arrived while the session was up and ready
             outage durability: in memory;  always durability: on disk (live/), with an
             in-memory copy of the tail so publishing never reads the disk back
    backlog  readings that arrived while the broker was away or the format not ready, what
             the live lane held when the session was lost or when it grew past
             `spill_readings`, and what a previous run left behind: on disk (backlog/); its
             tail waits in memory (`unwritten`) while the disk refuses writes (below)

For each tag, its backlog readings are older than its live ones: the live lane is spilled
whole into the backlog, never partly, and, with `keep_tag_order` (json), a reading that
arrives while its tag still has readings in the backlog goes to the backlog's tail, behind
them, so the backlog drains oldest first and each tag stays in order. Readings of the other
tags go live at once. `take()` alternates between the lanes: live readings wait for at most
one replay batch, and replay runs at the publisher's full speed, well above the live rate;
backlog batches are `historical`. A tag's readings in the backlog are tracked as the disk
position of its newest one: the tag queues behind the backlog while that position is not
yet taken; a live reading of a tag whose backlog readings are taken but not yet acknowledged
waits (a gate on the live lane) for their acknowledgement, since after a lost connection
they would be sent again. After a restart, which tags the backlog holds is not known: every
tag queues behind it until it is all taken. Without `keep_tag_order` (Sparkplug, which flags
the replay `is_historical` and keeps the newest value live) live readings never wait.

A spill that the disk refuses (full, failing) keeps its readings, already acknowledged to
the collectors, in memory as the backlog's tail; they are written when the disk takes writes
again (retried by `retry()` and before every backlog append) or published from memory once
the disk backlog is all taken. Meanwhile readings from the hand-off that would go to the
backlog are refused (put raises OSError: the collector keeps them), and `write_error` says why.

On disk a lane is a directory of append-only segment files and a `commit` file::

    00000000000000000007.seg:  [u32 BE length][u32 BE readings][orjson rows] [...] ...
    commit:                    {"segment": 7, "offset": 81920}   (written by rename)

A row is `[device, tag, value, ts_ms, quality, reason]`, as on the hand-off. A batch leaves
a lane (its commit offset moves past it) only when `ack()` says the broker has it, so after
a crash or a kill -9 everything past the commit offset is sent again: at-least-once.
Records are written with one `os.write` each, so a kill -9 of the forwarder loses nothing
written; `sync_handles()` hands out what was written since the last call for an fsync away
from the event loop. Under `always` the forwarder flushes before it acknowledges a hand-off
batch (a group commit: app.GroupSync), so a power loss loses nothing acknowledged either;
otherwise it flushes once a second. A torn record at the end of a segment (power loss mid-write) is cut off at
start-up.

Past `max_bytes` on disk the oldest segments are deleted (backlog first), the readings in
them counted in `dropped`, and one warning is logged per episode (until the buffer empties).

A record that cannot be decoded (a segment damaged, or written by another version) is
skipped, its readings counted as never to be sent, and its segment copied to the quarantine
(quarantine.py) once; a torn tail cut off at start-up is kept there too. Nothing in a
segment can make `take()` raise, so nothing left on disk can stop publishing at every start.

The buffer holds plant data: its directories are created 0700 and its files 0600 (and
made so when an older version left them wider).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import struct
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Literal

import orjson

from collectors.core.model import DeviceState, Reading
from collectors.forwarder.quarantine import Quarantine, shorten

log = logging.getLogger(__name__)

_RECORD = struct.Struct(">II")  # body length, readings in the record
Position = tuple[int, int]  # (segment id, offset)
RECORD_READINGS = 5000  # most readings one spilled record holds
MAX_SEGMENT = 4 * 1024 * 1024


@dataclass(slots=True, eq=False)
class Batch:
    """Readings taken from one lane; hand it back to `Buffer.ack` once delivered."""

    readings: list[Reading]
    historical: bool
    lane: Lane
    end: Position | int = 0  # where this batch ends in its lane (offset on disk or item seq in memory)
    arrived: float = 0.0  # loop time it reached the forwarder (live only): for the latency metric
    acked: bool = False
    skipped: int = 0  # readings of undecodable records within it (quarantined, never sent)


@dataclass(slots=True)
class _Item:
    seq: int
    readings: list[Reading]
    arrived: float


def _rows(readings: Iterable[Reading]) -> bytes:
    return orjson.dumps([tuple(r) for r in readings])


def private_dir(path: Path) -> None:
    """Create `path` (and missing parents) 0700; narrow it to 0700 when it exists wider."""
    missing: list[Path] = []
    at = path
    while not at.exists() and at != at.parent:
        missing.append(at)
        at = at.parent
    for folder in reversed(missing):
        with suppress(FileExistsError):
            folder.mkdir(mode=0o700)
    with suppress(OSError):
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)


def _private_file(path: Path) -> None:
    with suppress(OSError):
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)


def _decode(body: bytes) -> list[Reading]:
    """A record's rows as readings; ValueError or TypeError when it is not one."""
    rows = orjson.loads(body)
    if not isinstance(rows, list):
        raise ValueError("the record is not a list of rows")
    return [Reading(*row) for row in rows]


class Lane(ABC):
    """A FIFO of readings: take a batch, ack it once delivered, rewind what was not."""

    def __init__(self, name: str, historical: bool) -> None:
        self.name = name
        self.historical = historical
        self.inflight: deque[Batch] = deque()
        self.appended = 0  # appends so far: device states wait until the live lane took theirs
        self.taken_through = 0  # the newest append taken so far (never moves back)

    @property
    @abstractmethod
    def pending(self) -> int:
        """Readings not yet acknowledged (queued or in flight)."""

    @property
    def disk_bytes(self) -> int:
        return 0

    @abstractmethod
    def append(self, readings: list[Reading], arrived: float) -> None: ...

    @abstractmethod
    def take(self, limit: int, until: int | None = None) -> Batch | None:
        """The next readings (about `limit` of them), in order; None when there are none.

        `until`: take no append numbered past it (the live lane's gates, see `Buffer`)."""

    @abstractmethod
    def ack(self, batch: Batch) -> None: ...

    @abstractmethod
    def rewind(self) -> None:
        """Taken and unacknowledged batches will be taken again, in order."""

    def drain(self) -> list[Reading]:
        """Everything not yet acknowledged, oldest first, and empty the lane."""
        self.rewind()
        out: list[Reading] = []
        while (batch := self.take(RECORD_READINGS)) is not None:
            out.extend(batch.readings)
            batch.acked = True
        self._drop_all()
        self.taken_through = self.appended
        return out

    @abstractmethod
    def _drop_all(self) -> None: ...

    def close(self) -> None:
        """Release files (a memory lane has none)."""
        return None


class MemoryLane(Lane):
    """The live lane of `outage` durability."""

    def __init__(self, name: str, historical: bool) -> None:
        super().__init__(name, historical)
        self._items: deque[_Item] = deque()
        self._taken: deque[_Item] = deque()  # taken, not yet acknowledged, in order
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    def append(self, readings: list[Reading], arrived: float) -> None:
        self.appended += 1
        self._items.append(_Item(self.appended, readings, arrived))
        self._pending += len(readings)

    def take(self, limit: int, until: int | None = None) -> Batch | None:
        if not self._items or (until is not None and self._items[0].seq > until):
            return None
        first = self._items.popleft()
        readings = list(first.readings)
        self._taken.append(first)
        last = first
        while (
            self._items and len(readings) + len(self._items[0].readings) <= limit
            and (until is None or self._items[0].seq <= until)
        ):
            last = self._items.popleft()
            self._taken.append(last)
            readings.extend(last.readings)
        self.taken_through = max(self.taken_through, last.seq)
        batch = Batch(readings, self.historical, self, last.seq, first.arrived)
        self.inflight.append(batch)
        return batch

    def ack(self, batch: Batch) -> None:
        batch.acked = True
        while self.inflight and self.inflight[0].acked:
            done = self.inflight.popleft()
            assert isinstance(done.end, int)
            while self._taken and self._taken[0].seq <= done.end:
                self._pending -= len(self._taken.popleft().readings)

    def rewind(self) -> None:
        self._items.extendleft(reversed(self._taken))
        self._taken.clear()
        self.inflight.clear()

    def _drop_all(self) -> None:
        self._items.clear()
        self._taken.clear()
        self.inflight.clear()
        self._pending = 0


@dataclass(slots=True)
class _Segment:
    id: int
    size: int = 0
    readings: int = 0


@dataclass(slots=True)
class _Cached:
    number: int
    start: Position
    end: Position
    readings: list[Reading]
    arrived: float


class DiskLane(Lane):
    """A lane of segment files; survives restarts (what is past the commit offset is replayed)."""

    def __init__(
        self, name: str, historical: bool, directory: Path, segment_bytes: int, cache: bool,
        quarantine: Quarantine | None = None,
    ) -> None:
        super().__init__(name, historical)
        self.dir = directory
        private_dir(self.dir)
        self._quarantine = quarantine
        self._quarantined: set[int] = set()  # segments copied to the quarantine by this run
        self._segment_bytes = segment_bytes
        self._cache_enabled = cache
        self._cache: deque[_Cached] = deque()
        self._segments: deque[_Segment] = deque()
        self._commit: Position = (0, 0)
        self._commit_written: Position = (-1, -1)
        self._cursor: Position = (0, 0)
        self._fd: int | None = None
        self._read: tuple[int, object] | None = None  # (segment id, open file)
        self._unsynced = False
        self._torn = False  # a failed append left bytes past the last record that could not be cut
        self._pending = 0  # readings past the commit offset
        self._recover()

    # -- start-up

    def _path(self, segment: int) -> Path:
        return self.dir / f"{segment:020d}.seg"

    def _recover(self) -> None:
        ids = sorted(int(p.stem) for p in self.dir.glob("*.seg") if p.stem.isdigit())
        try:
            commit = orjson.loads((self.dir / "commit").read_bytes())
            self._commit = (int(commit["segment"]), int(commit["offset"]))
        except (FileNotFoundError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self._commit = (ids[0], 0) if ids else (0, 0)
        for segment_id in ids:
            if segment_id < self._commit[0]:
                self._path(segment_id).unlink(missing_ok=True)  # fully sent before the last run ended
                continue
            _private_file(self._path(segment_id))
            segment = self._scan(segment_id)
            self._segments.append(segment)
        if not self._segments:
            self._segments.append(_Segment(self._commit[0] if ids else 0))
            self._commit = (self._segments[0].id, 0)
        elif self._commit[0] < self._segments[0].id:
            self._commit = (self._segments[0].id, 0)
        else:
            self._commit = (self._commit[0], self._boundary(*self._commit))
        self._pending = sum(s.readings for s in self._segments) - self._readings_before(self._commit)
        self._cursor = self._commit
        self._commit_written = self._commit
        if self._pending:
            log.info("buffer %s: %d readings from a previous run to send", self.name, self._pending)

    def _scan(self, segment_id: int) -> _Segment:
        """Count a segment's readings from the record headers; cut a torn record off its end."""
        path = self._path(segment_id)
        segment = _Segment(segment_id)
        with path.open("rb") as file:
            data_size = os.fstat(file.fileno()).st_size
            offset = 0
            while offset + _RECORD.size <= data_size:
                file.seek(offset)
                length, count = _RECORD.unpack(file.read(_RECORD.size))
                if offset + _RECORD.size + length > data_size:
                    break
                offset += _RECORD.size + length
                segment.readings += count
        if offset != data_size:
            log.warning(
                "buffer %s: cutting a torn record off %s (%d bytes)", self.name, path.name, data_size - offset
            )
            if self._quarantine is not None and data_size - offset > _RECORD.size:  # more than a torn header
                self._quarantine.keep_segment(path, self.name, f"{path.name} ends in {data_size - offset} bytes "
                                              "that are no whole record", tail_from=offset)
            os.truncate(path, offset)
        segment.size = offset
        return segment

    def _boundary(self, segment_id: int, offset: int) -> int:
        """The last record boundary at or before `offset` in a segment (a commit file pointing
        past the end or into a record, damaged or from another version, is moved back to one)."""
        segment = next((s for s in self._segments if s.id == segment_id), None)
        if segment is None or offset <= 0:
            return 0
        boundary = 0
        with self._path(segment_id).open("rb") as file:
            while boundary < segment.size:
                file.seek(boundary)
                length, _ = _RECORD.unpack(file.read(_RECORD.size))
                following = boundary + _RECORD.size + length
                if following > offset:
                    break
                boundary = following
        if boundary != offset:
            log.warning("buffer %s: commit offset %d of segment %d is not a record boundary: from %d",
                        self.name, offset, segment_id, boundary)
        return boundary

    def _readings_before(self, position: Position) -> int:
        """Readings in the records before `position` (only the commit segment is partly read)."""
        segment_id, offset = position
        count = 0
        for segment in self._segments:
            if segment.id < segment_id:
                count += segment.readings
            elif segment.id == segment_id and offset:
                for _, _, n in self._records(segment_id, 0, offset):
                    count += n
        return count

    def _records(self, segment_id: int, start: int, end: int) -> Iterable[tuple[int, bytes, int]]:
        with self._path(segment_id).open("rb") as file:
            file.seek(start)
            offset = start
            while offset < end:
                length, count = _RECORD.unpack(file.read(_RECORD.size))
                body = file.read(length)
                offset += _RECORD.size + length
                yield offset, body, count

    # -- state

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def disk_bytes(self) -> int:
        return sum(s.size for s in self._segments) - (self._commit[1] if self._segments else 0)

    @property
    def end(self) -> Position:
        """Where the next record goes: every position of a record written so far is at or before it."""
        last = self._segments[-1]
        return (last.id, last.size)

    @property
    def taken_to(self) -> Position:
        """The end of what was taken (published or being published); rewound to `acked_to` on a loss."""
        return self._cursor

    @property
    def acked_to(self) -> Position:
        """The end of what the broker acknowledged (the commit offset)."""
        return self._commit

    # -- writing

    def append(self, readings: list[Reading], arrived: float) -> None:
        """Write one record. On OSError (disk full, I/O error) nothing of it stays in the file."""
        try:
            body = _rows(readings)
        except TypeError:  # orjson.JSONEncodeError: a value JSON cannot hold (an integer past 64 bits)
            readings = self._storable(readings)
            body = _rows(readings)
        segment = self._segments[-1]
        if self._torn or (segment.size and segment.size + _RECORD.size + len(body) > self._segment_bytes):
            segment = self._rotate()
        if self._fd is None:
            self._fd = os.open(self._path(segment.id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        start = (segment.id, segment.size)
        record = _RECORD.pack(len(body), len(readings)) + body
        try:
            written = os.write(self._fd, record)
            if written != len(record):  # a full disk can take part of a write: the rest would fail
                raise OSError(errno.ENOSPC, f"No space left on device (wrote {written} of {len(record)} bytes)")
        except OSError:
            try:
                os.ftruncate(self._fd, segment.size)  # no torn record for the next append to follow
            except OSError:
                self._torn = True  # the next append starts a new segment; start-up cuts the torn end
            raise
        segment.size += _RECORD.size + len(body)
        segment.readings += len(readings)
        self._pending += len(readings)
        self._unsynced = True
        self.appended += 1
        if self._cache_enabled:
            self._cache.append(_Cached(self.appended, start, (segment.id, segment.size), readings, arrived))

    def _storable(self, readings: list[Reading]) -> list[Reading]:
        """The readings a record can hold; the others go to the quarantine (they could not be published either)."""
        kept: list[Reading] = []
        dropped: list[tuple[Reading, str]] = []
        for reading in readings:
            try:
                orjson.dumps(tuple(reading))
            except TypeError as exc:
                dropped.append((reading, f"cannot be stored: {exc}"))
            else:
                kept.append(reading)
        if self._quarantine is not None:
            self._quarantine.drop(dropped, self.name)
        return kept

    def _rotate(self) -> _Segment:
        self._torn = False
        self._close_fd()
        segment = _Segment(self._segments[-1].id + 1)
        self._segments.append(segment)
        return segment

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self._unsynced:
                    self._unsynced = False
                    os.fsync(fd)  # a full segment is flushed once
            finally:
                os.close(fd)

    def sync_handle(self) -> int | None:
        """A duplicate of the written segment's descriptor, to fsync away from the event loop."""
        if self._fd is None or not self._unsynced:
            return None
        self._unsynced = False
        return os.dup(self._fd)  # the original may be closed by a rotation meanwhile

    # -- reading

    def take(self, limit: int, until: int | None = None) -> Batch | None:
        cache = self._cache
        while cache and cache[0].start < self._cursor:
            self.taken_through = max(self.taken_through, cache.popleft().number)  # read from disk already
        if cache and cache[0].start == self._cursor:
            if until is not None and cache[0].number > until:
                return None
            first = cache.popleft()
            readings, end, last = list(first.readings), first.end, first.number
            while (
                cache and cache[0].start == end and len(readings) + len(cache[0].readings) <= limit
                and (until is None or cache[0].number <= until)
            ):
                item = cache.popleft()
                readings.extend(item.readings)
                end, last = item.end, item.number
            self.taken_through = max(self.taken_through, last)
            batch = Batch(readings, self.historical, self, end, first.arrived)
        else:
            # Not in the cache: the backlog, or a live lane rewound (it is then spilled whole,
            # and its gates with it), so `until` has nothing to hold back here.
            found = self._read_from_disk(limit)
            if found is None:
                return None
            readings, end, skipped = found
            batch = Batch(readings, self.historical, self, end, skipped=skipped)
        self._cursor = end
        self.inflight.append(batch)
        return batch

    def _read_from_disk(self, limit: int) -> tuple[list[Reading], Position, int] | None:
        """(readings, where they end, readings of undecodable records skipped on the way)."""
        segment_id, offset = self._cursor
        for segment in self._segments:
            if segment.id < segment_id:
                continue
            if segment.id > segment_id:
                segment_id, offset = segment.id, 0
            if offset >= segment.size:
                continue
            readings: list[Reading] = []
            skipped = 0
            with self._path(segment.id).open("rb") as file:
                file.seek(offset)
                while offset < segment.size and (not readings or len(readings) < limit):
                    length, count = _RECORD.unpack(file.read(_RECORD.size))
                    body = file.read(length)
                    try:
                        readings.extend(_decode(body))
                    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
                        skipped += count
                        self._undecodable(segment.id, offset, shorten(str(exc), 200))
                    offset += _RECORD.size + length
            return readings, (segment.id, offset), skipped
        return None

    def _undecodable(self, segment_id: int, offset: int, why: str) -> None:
        """A record that cannot be read: its segment goes to the quarantine (once), the record is skipped."""
        if segment_id in self._quarantined:
            return
        self._quarantined.add(segment_id)
        path = self._path(segment_id)
        what = f"record at offset {offset} of {path.name} cannot be decoded ({why}); it is skipped"
        if self._quarantine is not None:
            self._quarantine.keep_segment(path, self.name, what)
        else:
            log.error("buffer %s: %s", self.name, what)

    def ack(self, batch: Batch) -> None:
        batch.acked = True
        moved = False
        while self.inflight and self.inflight[0].acked:
            done = self.inflight.popleft()
            assert isinstance(done.end, tuple)
            if done.end > self._commit:
                self._pending -= len(done.readings) + done.skipped
                self._commit = done.end
                moved = True
        if moved:
            self._release()

    def _release(self) -> None:
        """Delete segments the commit offset has left behind."""
        while len(self._segments) > 1 and self._commit[0] > self._segments[0].id:
            self._path(self._segments.popleft().id).unlink(missing_ok=True)
        only = self._segments[0]
        all_sent = len(self._segments) == 1 and self._commit == (only.id, only.size)
        if all_sent and only.size >= self._segment_bytes // 2:
            self._rotate()  # all of it is sent: start a fresh segment so this one can go
            self._commit = self._cursor = (self._segments[-1].id, 0)
            self._path(self._segments.popleft().id).unlink(missing_ok=True)

    def write_commit(self) -> None:
        """Persist the commit offset (cheap; the forwarder calls it a few times a second)."""
        if self._commit == self._commit_written:
            return
        tmp = self.dir / "commit.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, orjson.dumps({"segment": self._commit[0], "offset": self._commit[1]}))
            finally:
                os.close(fd)
            tmp.replace(self.dir / "commit")
        except OSError:  # a full disk: tried again next time; meanwhile a crash only resends more
            return
        self._commit_written = self._commit

    def rewind(self) -> None:
        self.inflight.clear()
        self._cursor = self._commit

    def drop_oldest(self) -> int:
        """Delete the oldest segment (rotating first when it is the one being written); readings lost."""
        if self._pending == 0:
            return 0
        if len(self._segments) == 1:
            self._rotate()
        oldest = self._segments.popleft()
        lost = oldest.readings - (self._readings_before(self._commit) if self._commit[0] == oldest.id else 0)
        self._path(oldest.id).unlink(missing_ok=True)
        self._pending -= lost
        self._commit = (self._segments[0].id, 0)
        if self._cursor < self._commit:
            self._cursor = self._commit
        self.inflight = deque(b for b in self.inflight if isinstance(b.end, tuple) and b.end > self._commit)
        while self._cache and self._cache[0].start < self._commit:
            self._cache.popleft()
        return lost

    def _drop_all(self) -> None:
        self._close_fd()
        for segment in self._segments:
            self._path(segment.id).unlink(missing_ok=True)
        next_id = self._segments[-1].id + 1
        self._segments = deque([_Segment(next_id)])
        self._commit = self._cursor = (next_id, 0)
        self._cache.clear()
        self.inflight.clear()
        self._pending = 0
        self.write_commit()

    def close(self) -> None:
        self.write_commit()
        self._close_fd()


@dataclass(slots=True)
class BufferStats:
    dropped: int = 0
    spilled: int = 0
    dropping: bool = False
    write_errors: int = 0  # disk writes of the backlog that failed (each retry counts)


NOWHERE: Position = (-1, -1)
_tag_key: Callable[[Reading], tuple[str, str]] = itemgetter(0, 1)  # (device, tag)


class Buffer:
    """The lanes, the spill rules, the per-tag order and the `max_bytes` bound (module docstring)."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        durability: Literal["outage", "always"],
        spill_readings: int = 100_000,
        keep_tag_order: bool = True,
        quarantine: Quarantine | None = None,
    ) -> None:
        self.dir = directory
        private_dir(directory)
        self.quarantine = quarantine or Quarantine(directory)
        self.max_bytes = max_bytes
        self.durability = durability
        self.spill_readings = spill_readings
        self.keep_tag_order = keep_tag_order
        segment_bytes = max(4096, min(MAX_SEGMENT, max_bytes // 16))
        self.backlog = DiskLane("backlog", True, directory / "backlog", segment_bytes, cache=False,
                                quarantine=self.quarantine)
        self.live: MemoryLane | DiskLane
        if durability == "always":
            self.live = DiskLane("live", False, directory / "live", segment_bytes, cache=True,
                                 quarantine=self.quarantine)
        else:
            self.live = MemoryLane("live", False)
        # The backlog's tail while the disk refuses writes (full, failing): readings that were
        # acknowledged already (a spill) wait here, in memory, and are retried; see _to_backlog.
        self.unwritten = MemoryLane("unwritten", True)
        self.write_error: str | None = None  # why the last write to the backlog failed, until one succeeds
        self._write_failure: OSError | None = None
        self.online = False  # the forwarder sets it: session up and the format ready
        self.stats = BufferStats()
        self._states: deque[tuple[int, DeviceState]] = deque()  # (live appends before it, state)
        # Per-tag order (keep_tag_order): where each tag's newest backlog reading ends on disk,
        # the live appends that wait for backlog acknowledgements, and where the backlog a
        # previous run left ends (which tags it holds is not known: every tag waits behind it).
        self._newest: dict[tuple[str, str], Position] = {}
        self._gates: deque[tuple[int, Position]] = deque()  # (live append number, backlog position)
        self._hold_all: Position = NOWHERE
        self._turn_backlog = False
        self.data = asyncio.Event()
        if self.live.pending:  # the previous run's live lane (always): it is history now
            self._move(self.live.drain())
        if self.backlog.pending:
            self._hold_all = self.backlog.end

    # -- in

    def put(self, readings: list[Reading], arrived: float = 0.0) -> None:
        """Take readings from the hand-off: durable as the durability promises once this returns.

        Raises OSError when the readings could not be stored (nothing of them is kept then:
        the hand-off is not acknowledged, so the collector keeps them)."""
        if not readings:
            return
        if self.online and self.live.pending + len(readings) <= self.spill_readings:
            if self.keep_tag_order and (self.backlog.pending or self.unwritten.pending):
                self._put_in_order(readings, arrived)
            else:
                if self._newest:
                    self._newest.clear()
                self._to_live(readings, arrived)
        else:
            if self.live.pending:
                self.spill()
            self._to_backlog(readings)
        self.data.set()

    def _to_live(self, readings: list[Reading], arrived: float) -> None:
        self._make_room(self.live, len(readings) * 48)
        self.live.append(readings, arrived)

    def _put_in_order(self, readings: list[Reading], arrived: float) -> None:
        """Online with a backlog: a tag with readings not yet taken from the backlog queues behind
        them (at the backlog's tail); the others go live at once. A live reading of a tag whose
        last backlog readings are taken but not yet acknowledged waits (a gate) until they are:
        were the connection lost first, they would be sent again, after the live one."""
        backlog = self.backlog
        taken, acked = backlog.taken_to, backlog.acked_to
        floor = self._hold_all
        if floor <= acked:
            floor = self._hold_all = NOWHERE
        behind: list[Reading]
        live: list[Reading] = []
        gate = acked
        if self.unwritten.pending or floor > taken:
            behind = readings  # the tail is in memory, or a previous run's backlog is not all taken
        else:
            behind = []
            newest, key = self._newest, _tag_key
            for reading in readings:
                at = newest.get(key(reading), floor)
                if at < floor:
                    at = floor
                if at > taken:
                    behind.append(reading)
                else:
                    live.append(reading)
                    if at > gate:
                        gate = at
        if live:
            self._to_live(live, arrived)
            if gate > acked:
                self._gates.append((self.live.appended, gate))
        if behind:
            self._to_backlog(behind)

    def put_state(self, state: DeviceState) -> DeviceState | None:
        """Order a device state after the live readings before it; returns it when it is due now."""
        if not self.online or self.live.taken_through >= self.live.appended:
            return state
        self._states.append((self.live.appended, state))
        self.data.set()
        return None

    def _to_backlog(self, readings: list[Reading], keep: bool = False) -> None:
        """Append to the backlog's tail: on disk, or in memory (`unwritten`) while the disk refuses.

        `keep`: the readings were acknowledged to a collector already (a spill, a resend), so a
        refusal keeps them in memory. Otherwise (straight from the hand-off) a refusal before
        any of them was kept raises OSError: the collector keeps them and sends them again.
        In memory there are at most about `spill_readings` (one live lane) plus what `keep`
        brings, which is bounded by the live lane and the resend window as well."""
        lane = self.unwritten
        if lane.pending and not self._flush_unwritten():
            failure = self._write_failure
            if keep or (failure is None and lane.pending + len(readings) <= self.spill_readings):
                lane.append(readings, 0.0)  # behind the readings already waiting there
                return
            if failure is None:
                raise OSError(errno.ENOBUFS, f"{lane.pending} readings in memory wait to be published")
            raise OSError(failure.errno, f"{failure.strerror} ({lane.pending} readings wait in memory)")
        if self._write(readings):
            return
        if not keep and lane.pending == len(readings):  # none of them written: hand them back
            lane.drain()
            assert self._write_failure is not None
            raise self._write_failure

    def _write(self, readings: list[Reading]) -> bool:
        """Write to the disk backlog; what the disk refuses goes to `unwritten` (False then)."""
        for start in range(0, len(readings), RECORD_READINGS):
            chunk = readings[start : start + RECORD_READINGS]
            try:
                self._make_room(self.backlog, len(chunk) * 48)
                self.backlog.append(chunk, 0.0)
            except OSError as exc:
                self._write_failed(exc)
                self.unwritten.append(readings[start:], 0.0)
                return False
            if self.keep_tag_order:
                self._newest.update(dict.fromkeys(map(_tag_key, chunk), self.backlog.end))
        if self.write_error is not None:
            log.info("buffer: %s takes writes again", self.backlog.dir)
            self.write_error = self._write_failure = None
        return True

    def _write_failed(self, exc: OSError) -> None:
        self.stats.write_errors += 1
        if self.write_error is None:
            log.error(
                "buffer: cannot write to %s: %s; readings already acknowledged wait in memory (retried, "
                "counted in fieldgate_forwarder_buffer_write_errors_total), new ones stay with the "
                "collectors", self.backlog.dir, exc,
            )
        self.write_error = str(exc)
        self._write_failure = exc

    def _flush_unwritten(self) -> bool:
        """Move the readings waiting in memory to the disk backlog; True when none wait any more.

        Not while some of them are being published: sent again after a loss, they would then
        follow newer ones written behind them."""
        lane = self.unwritten
        if not lane.pending:
            return True
        if lane.inflight:
            return False
        readings = lane.drain()
        if self._write(readings):
            log.info("buffer: %d readings that waited in memory written to the disk backlog", len(readings))
            return True
        return False

    def retry(self) -> None:
        """Try the disk again for readings waiting in memory (the forwarder calls it 4 times a second)."""
        if self.unwritten.pending:
            self._flush_unwritten()
            self.data.set()

    def _move(self, readings: list[Reading]) -> None:
        self.stats.spilled += len(readings)
        self._to_backlog(readings, keep=True)

    def spill(self) -> list[DeviceState]:
        """Move the live lane into the backlog (session lost, live lane too long, shutdown)."""
        readings = self.live.drain()
        self._gates.clear()
        self._move(readings)
        states = [state for _, state in self._states]
        self._states.clear()
        if readings:
            log.info("buffer: %d live readings moved to the disk backlog", len(readings))
        return states

    def _make_room(self, lane: Lane, incoming: int) -> None:
        if not isinstance(lane, DiskLane):
            return
        while self.disk_bytes + incoming > self.max_bytes:
            victim = self.backlog if self.backlog.pending else self.live
            if not isinstance(victim, DiskLane) or not victim.pending:
                break
            lost = victim.drop_oldest()
            if lost == 0 and victim is lane:
                break
            self.stats.dropped += lost
            if not self.stats.dropping:
                self.stats.dropping = True
                log.warning(
                    "buffer full (max_bytes %d): dropping the oldest readings; counting them in "
                    "fieldgate_forwarder_dropped_readings_total", self.max_bytes,
                )

    # -- out

    def take(self, limit: int) -> Batch | DeviceState | None:
        """The next batch to publish (alternating live and backlog), or a device state now due."""
        if self._states and self.live.taken_through >= self._states[0][0]:
            return self._states.popleft()[1]
        lanes = (self.backlog, self.live) if self._turn_backlog else (self.live, self.backlog)
        self._turn_backlog = not self._turn_backlog
        gated = False
        for lane in lanes:
            batch: Batch | None
            if lane is self.live:
                until = self._live_until() if self._gates else None
                gated = until is not None
                batch = lane.take(limit, until)
            else:
                batch = lane.take(limit)
                if batch is None:  # the disk backlog is all taken: its tail in memory, if any
                    batch = self.unwritten.take(limit)
            if batch is not None:
                return batch
        if self._states and not gated:  # readings before it were all taken
            return self._states.popleft()[1]
        self.data.clear()
        if self.stats.dropping and not self.backlog.pending:
            self.stats.dropping = False
        return None

    def _live_until(self) -> int | None:
        """The last live append that may be taken now (None: all); see _put_in_order."""
        gates, taken, acked = self._gates, self.live.taken_through, self.backlog.acked_to
        while gates:
            number, at = gates[0]
            if number > taken and at > acked:
                return number - 1
            gates.popleft()
        return None

    def ack(self, batch: Batch) -> None:
        batch.lane.ack(batch)

    def connection_lost(self) -> list[DeviceState]:
        """The session is gone: undelivered batches go back; the live lane goes to disk."""
        self.online = False
        self.backlog.rewind()
        self.unwritten.rewind()
        self.live.rewind()
        return self.spill()

    def requeue(self, readings: list[Reading]) -> None:
        """Readings to send again as historical (the format's resend window)."""
        if readings:
            self._move(readings)
            self.data.set()

    # -- housekeeping

    @property
    def pending(self) -> int:
        return self.live.pending + self.backlog.pending + self.unwritten.pending

    @property
    def disk_bytes(self) -> int:
        return self.backlog.disk_bytes + self.live.disk_bytes

    def write_commits(self) -> None:
        """Persist how far each disk lane was delivered (no fsync: a lost update only resends)."""
        for lane in (self.backlog, self.live):
            if isinstance(lane, DiskLane):
                lane.write_commit()

    def sync_handles(self) -> list[int]:
        """Persist commit offsets; descriptors to pass to `fsync` (the forwarder does, every second)."""
        self.write_commits()
        lanes = [lane for lane in (self.backlog, self.live) if isinstance(lane, DiskLane)]
        return [fd for lane in lanes if (fd := lane.sync_handle()) is not None]

    @staticmethod
    def fsync(handles: list[int]) -> None:
        """Flush to the device (blocking: the forwarder runs it in a worker thread); every handle
        is closed, the first error raised."""
        error: OSError | None = None
        for fd in handles:
            try:
                os.fsync(fd)
            except OSError as exc:
                error = error or exc
            finally:
                os.close(fd)
        if error is not None:
            raise error

    def sync(self) -> None:
        self.fsync(self.sync_handles())

    def close(self) -> None:
        """Shutdown: the live lane goes to disk, offsets are written, files flushed."""
        self.live.rewind()
        self.backlog.rewind()
        self.unwritten.rewind()
        if self.durability == "outage":
            self.spill()
        if not self._flush_unwritten():
            log.error(
                "buffer: %d readings could not be written to %s (%s) and are lost with this shutdown",
                self.unwritten.pending, self.backlog.dir, self.write_error,
            )
        with suppress(OSError):
            self.sync()
        for lane in (self.backlog, self.live):
            with suppress(OSError):
                lane.close()
