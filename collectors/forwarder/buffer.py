"""Store-and-forward: readings wait here until the broker has them.

Two lanes, each first-in first-out, so every tag keeps its order within a lane::

    live     readings that arrived while the session was up and ready
             outage durability: in memory;  always durability: on disk (live/), with an
             in-memory copy of the tail so publishing never reads the disk back
    backlog  readings that arrived while the broker was away or the format not ready, what
             the live lane held when the session was lost or when it grew past
             `spill_readings`, and what a previous run left behind: always on disk (backlog/)

Everything in the backlog is older than everything in the live lane (the live lane is
spilled whole into the backlog, never partly), so a consumer sees each tag's replayed
readings in order, and its live readings in order. `take()` alternates between the lanes:
live readings wait for at most one replay batch, and replay runs at the publisher's full
speed, well above the live rate. Backlog batches are `historical`.

On disk a lane is a directory of append-only segment files and a `commit` file::

    00000000000000000007.seg:  [u32 BE length][u32 BE readings][orjson rows] [...] ...
    commit:                    {"segment": 7, "offset": 81920}   (written by rename)

A row is `[device, tag, value, ts_ms, quality, reason]`, as on the hand-off. A batch leaves
a lane (its commit offset moves past it) only when `ack()` says the broker has it, so after
a crash or a kill -9 everything past the commit offset is sent again: at-least-once.
Records are written with one `os.write` each, so a kill -9 of the forwarder loses nothing
written; `sync()` fsyncs what was written since the last call (the forwarder calls it once
a second): an fsync per hand-off batch would cost the flash of small IPCs a flush for
every few readings, and only a power loss, not a crash of the forwarder, can lose the
last second. A torn record at the end of a segment (power loss mid-write) is cut off at
start-up.

Past `max_bytes` on disk the oldest segments are deleted (backlog first), the readings in
them counted in `dropped`, and one warning is logged per episode (until the buffer empties).
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

from collectors.core.model import DeviceState, Reading

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


@dataclass(slots=True)
class _Item:
    seq: int
    readings: list[Reading]
    arrived: float


def _rows(readings: Iterable[Reading]) -> bytes:
    return orjson.dumps([tuple(r) for r in readings])


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
    def take(self, limit: int) -> Batch | None:
        """The next readings (about `limit` of them), in order; None when there are none."""

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

    def take(self, limit: int) -> Batch | None:
        if not self._items:
            return None
        first = self._items.popleft()
        readings = list(first.readings)
        self._taken.append(first)
        last = first
        while self._items and len(readings) + len(self._items[0].readings) <= limit:
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

    def __init__(self, name: str, historical: bool, directory: Path, segment_bytes: int, cache: bool) -> None:
        super().__init__(name, historical)
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
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
            segment = self._scan(segment_id)
            self._segments.append(segment)
        if not self._segments:
            self._segments.append(_Segment(self._commit[0] if ids else 0))
            self._commit = (self._segments[0].id, 0)
        elif self._commit[0] < self._segments[0].id:
            self._commit = (self._segments[0].id, 0)
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
            os.truncate(path, offset)
        segment.size = offset
        return segment

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

    # -- writing

    def append(self, readings: list[Reading], arrived: float) -> None:
        body = _rows(readings)
        segment = self._segments[-1]
        if segment.size and segment.size + _RECORD.size + len(body) > self._segment_bytes:
            segment = self._rotate()
        if self._fd is None:
            self._fd = os.open(self._path(segment.id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        start = (segment.id, segment.size)
        os.write(self._fd, _RECORD.pack(len(body), len(readings)) + body)
        segment.size += _RECORD.size + len(body)
        segment.readings += len(readings)
        self._pending += len(readings)
        self._unsynced = True
        self.appended += 1
        if self._cache_enabled:
            self._cache.append(_Cached(self.appended, start, (segment.id, segment.size), readings, arrived))

    def _rotate(self) -> _Segment:
        self._close_fd()
        segment = _Segment(self._segments[-1].id + 1)
        self._segments.append(segment)
        return segment

    def _close_fd(self) -> None:
        if self._fd is not None:
            if self._unsynced:
                os.fsync(self._fd)  # a full segment is flushed once
                self._unsynced = False
            os.close(self._fd)
            self._fd = None

    def sync_handle(self) -> int | None:
        """A duplicate of the written segment's descriptor, to fsync away from the event loop."""
        if self._fd is None or not self._unsynced:
            return None
        self._unsynced = False
        return os.dup(self._fd)  # the original may be closed by a rotation meanwhile

    # -- reading

    def take(self, limit: int) -> Batch | None:
        cache = self._cache
        while cache and cache[0].start < self._cursor:
            self.taken_through = max(self.taken_through, cache.popleft().number)  # read from disk already
        if cache and cache[0].start == self._cursor:
            first = cache.popleft()
            readings, end, last = list(first.readings), first.end, first.number
            while cache and cache[0].start == end and len(readings) + len(cache[0].readings) <= limit:
                item = cache.popleft()
                readings.extend(item.readings)
                end, last = item.end, item.number
            self.taken_through = max(self.taken_through, last)
            batch = Batch(readings, self.historical, self, end, first.arrived)
        else:
            found = self._read_from_disk(limit)
            if found is None:
                return None
            readings, end = found
            batch = Batch(readings, self.historical, self, end)
        self._cursor = end
        self.inflight.append(batch)
        return batch

    def _read_from_disk(self, limit: int) -> tuple[list[Reading], Position] | None:
        segment_id, offset = self._cursor
        for segment in self._segments:
            if segment.id < segment_id:
                continue
            if segment.id > segment_id:
                segment_id, offset = segment.id, 0
            if offset >= segment.size:
                continue
            readings: list[Reading] = []
            with self._path(segment.id).open("rb") as file:
                file.seek(offset)
                while offset < segment.size and (not readings or len(readings) < limit):
                    length, _ = _RECORD.unpack(file.read(_RECORD.size))
                    readings.extend(Reading(*row) for row in orjson.loads(file.read(length)))
                    offset += _RECORD.size + length
            return readings, (segment.id, offset)
        return None

    def ack(self, batch: Batch) -> None:
        batch.acked = True
        moved = False
        while self.inflight and self.inflight[0].acked:
            done = self.inflight.popleft()
            assert isinstance(done.end, tuple)
            if done.end > self._commit:
                self._pending -= len(done.readings)
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
        tmp.write_bytes(orjson.dumps({"segment": self._commit[0], "offset": self._commit[1]}))
        tmp.replace(self.dir / "commit")
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


class Buffer:
    """The two lanes, the spill rules and the `max_bytes` bound (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        durability: Literal["outage", "always"],
        spill_readings: int = 100_000,
    ) -> None:
        self.max_bytes = max_bytes
        self.durability = durability
        self.spill_readings = spill_readings
        segment_bytes = max(4096, min(MAX_SEGMENT, max_bytes // 16))
        self.backlog = DiskLane("backlog", True, directory / "backlog", segment_bytes, cache=False)
        self.live: MemoryLane | DiskLane
        if durability == "always":
            self.live = DiskLane("live", False, directory / "live", segment_bytes, cache=True)
        else:
            self.live = MemoryLane("live", False)
        self.online = False  # the forwarder sets it: session up and the format ready
        self.stats = BufferStats()
        self._states: deque[tuple[int, DeviceState]] = deque()  # (live appends before it, state)
        self._turn_backlog = False
        self.data = asyncio.Event()
        if self.live.pending:  # the previous run's live lane (always): it is history now
            self._move(self.live.drain())

    # -- in

    def put(self, readings: list[Reading], arrived: float = 0.0) -> None:
        """Take readings from the hand-off: durable as the durability promises once this returns."""
        if not readings:
            return
        if self.online and self.live.pending + len(readings) <= self.spill_readings:
            self._make_room(self.live, len(readings) * 48)
            self.live.append(readings, arrived)
        else:
            if self.live.pending:
                self.spill()
            self._to_backlog(readings)
        self.data.set()

    def put_state(self, state: DeviceState) -> DeviceState | None:
        """Order a device state after the live readings before it; returns it when it is due now."""
        if not self.online or self.live.taken_through >= self.live.appended:
            return state
        self._states.append((self.live.appended, state))
        self.data.set()
        return None

    def _to_backlog(self, readings: list[Reading]) -> None:
        for start in range(0, len(readings), RECORD_READINGS):
            chunk = readings[start : start + RECORD_READINGS]
            self._make_room(self.backlog, len(chunk) * 48)
            self.backlog.append(chunk, 0.0)

    def _move(self, readings: list[Reading]) -> None:
        self.stats.spilled += len(readings)
        self._to_backlog(readings)

    def spill(self) -> list[DeviceState]:
        """Move the live lane into the backlog (session lost, live lane too long, shutdown)."""
        readings = self.live.drain()
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
        for lane in lanes:
            batch = lane.take(limit)
            if batch is not None:
                return batch
        if self._states:  # readings before it were all taken
            return self._states.popleft()[1]
        self.data.clear()
        if self.stats.dropping and not self.backlog.pending:
            self.stats.dropping = False
        return None

    def ack(self, batch: Batch) -> None:
        batch.lane.ack(batch)

    def connection_lost(self) -> list[DeviceState]:
        """The session is gone: undelivered batches go back; the live lane goes to disk."""
        self.online = False
        self.backlog.rewind()
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
        return self.live.pending + self.backlog.pending

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
        """Flush to the device (blocking: the forwarder runs it in a worker thread)."""
        for fd in handles:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def sync(self) -> None:
        self.fsync(self.sync_handles())

    def close(self) -> None:
        """Shutdown: the live lane goes to disk, offsets are written, files flushed."""
        self.live.rewind()
        self.backlog.rewind()
        if self.durability == "outage":
            self.spill()
        with suppress(OSError):
            self.sync()
        for lane in (self.backlog, self.live):
            lane.close()
