"""The hand-off between collectors and the forwarder, on one machine, over a Unix socket.

Readings go up in acknowledged batches, writes come down, write results go up. Frames::

    +-----------------+-------------------------------------------+
    | length (u32 BE) | JSON object (orjson); key `t` is the type |
    +-----------------+-------------------------------------------+

    collector -> forwarder
      hello   {"t": "hello", "collector": "modbus", "epoch": "<random per process>"}
              with `"standby": true` from a new instance that starts beside the running one
              (a start-first update): it sends nothing more until it is made active
      batch   {"t": "batch", "seq": 7, "r": [[device, tag, value, ts_ms, quality, reason], ...]}
      state   {"t": "state", "seq": 8, "device": "press-1", "online": false, "reason": "timeout"}
      types   {"t": "types", "seq": 9, "device": "oven", "types": {"temperature": "double", "mode": "int16"}}
              optional: datatypes read from the device (OPC UA), sent before its readings;
              a forwarder without use for them acknowledges and ignores them
      result  {"t": "result", "id": "abc", "device": "press-1", "tag": "run", "ok": true, "error": null}
    forwarder -> collector
      ack     {"t": "ack", "seq": 8}     cumulative: every frame up to seq 8 is the forwarder's now
      write   {"t": "write", "id": "abc", "device": "press-1", "tag": "run", "value": 1,
               "deadline_ms": 1795927524614}
              `deadline_ms` (ms since the epoch, UTC) is optional: a collector does not start
              the write after it and answers "expired"; a frame without it never expires, and
              a collector that does not know the key ignores it.
      error   {"t": "error", "error": "collector modbus is already connected"}   then the forwarder closes
      standby {"t": "standby"}   the standby is admitted: it waits, polling nothing
      active  {"t": "active"}    the standby is the collector now (the active one left): it polls

A frame is at most MAX_FRAME bytes; a collector splits its batches to fit.

Who may talk to the forwarder (see the hand-off section of docs/runtime.md): the socket is 0660
in a 0700 directory of the forwarder's user, and each connection's peer credentials
(SO_PEERCRED) must name that same uid (every component runs as one user: the supervisor's in
the process runtime, 10001 in the containers), or root when the gateway sandboxes a collector
under gVisor (its gofer, a root process on the host, opens the connection for the sandbox, so
the kernel names uid 0; gVisor itself keeps the 0700 directory shut to other users inside the
sandbox); one active connection per collector name, and beside it at most one standby of the
same name; each reading is checked against that collector's catalog (handoff_check.py). A peer
that breaks the protocol gets an `error` frame and is closed, logged once per kind at ERROR.

A start-first update without a gap (docs/runtime.md, "the handover"): the new instance says
hello as a standby and is admitted beside the active one; it sends nothing and gets no writes.
When the active connection closes (the old instance drained what it had and exited on
SIGTERM, or died), the standby is made active at once and starts polling. A standby that
arrives while no collector of its name is connected is made active after STANDBY_CLAIM
seconds unless an active one reconnects first (the forwarder restarted mid-handover: the
old instance gets its name back, and the new one keeps waiting).

A collector keeps every frame until it is acknowledged and sends the unacknowledged ones
again after a reconnect, so a reading the forwarder acknowledged is never lost and one it
did not is sent again. The forwarder remembers the last seq of each (collector, epoch) and
drops repeats, so a reconnect does not duplicate readings either.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import socket
import stat
import struct
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from collectors.core.config import HandoffConfig
from collectors.core.errors import FieldgateError
from collectors.core.handoff_check import LogOnce, ReadingCheck, good_name
from collectors.core.model import DeviceState, DeviceTypes, Reading, WriteRequest, WriteResult

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
# 2 MiB: a batch of 5,000 readings (batch_max) takes ~0.5 MB, so a frame this size is a batch of
# long strings. The forwarder holds one being read per connection and parses one at a time: 4
# clients sending full frames of small rows took its RSS from 38 to 78 MB (110 MB with 4 MiB
# frames, 1.67 GB with the former 64 MiB; bench/bench_handoff.py).
MAX_FRAME = 2 * 1024 * 1024
MAX_IN_FLIGHT = 8  # frames sent and not yet acknowledged: backpressure when the forwarder is slow
MAX_CONNECTIONS = 8  # a modbus and an opcua collector, and room for a handover's overlap
STANDBY_CLAIM = 1.0  # a standby with no active collector of its name becomes active after this
HELLO_TIMEOUT = 5.0  # a connection must say who it is within this
FRAME_TIMEOUT = 30.0  # once a frame's length has arrived, its body must follow within this
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid (socket(7))


class HandoffError(FieldgateError):
    """A peer broke the hand-off protocol."""


class HandoffRefused(HandoffError):
    """The forwarder refused this collector (an `error` frame): reconnecting at once will not help."""


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    header = await reader.readexactly(_HEADER.size)
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise HandoffError(f"frame of {length} bytes is over the {MAX_FRAME} limit")
    body = await asyncio.wait_for(reader.readexactly(length), FRAME_TIMEOUT)
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HandoffError(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise HandoffError("frame is not an object with a text `t`")
    return message


def encode_frame(message: dict[str, Any]) -> bytes:
    body = orjson.dumps(message)
    return _HEADER.pack(len(body)) + body


# --------------------------------------------------------------------------- collector side

WriteHandler = Callable[[WriteRequest], Awaitable[WriteResult]]


@dataclass(slots=True)
class ClientStats:
    queued: int = 0
    sent: int = 0
    acked: int = 0
    dropped: int = 0
    connected: bool = False
    reconnects: int = 0
    queued_bytes: int = 0  # estimated memory of the queue (see READING_BYTES)


# What a queued Reading costs in memory: the 6-tuple, its float or int value and its timestamp
# int, and the deque slot (tracemalloc: 164 bytes with the device/tag/quality strings shared, as
# collectors make them). Strings and arrays add their length; a DeviceState counts as one reading.
READING_BYTES = 176


def _extra_bytes(value: object) -> int:
    """Memory of a string or array value beyond READING_BYTES (rough, cheap)."""
    return len(value) * (1 if value.__class__ is str else 32)  # type: ignore[arg-type]


class HandoffClient:
    """A collector's end of the hand-off: an async context manager.

    `publish()` never blocks: readings queue (bounded by `queue_max` readings and
    `queue_max_bytes`, oldest dropped and counted) and a sender task batches them towards the
    forwarder in frames of at most MAX_FRAME bytes, reconnecting with capped backoff while it is
    away. Writes from the forwarder are served by `on_write`.
    """

    def __init__(self, settings: HandoffConfig, collector: str, on_write: WriteHandler) -> None:
        self._settings = settings
        self._collector = collector
        self._on_write = on_write
        self._epoch = uuid.uuid4().hex
        # Active: it may send. A standby (a new instance beside the running one) sends nothing
        # until the forwarder makes it active (`make_standby`); `standby_admitted` once the
        # forwarder took it as one.
        self._active = asyncio.Event()
        self._active.set()
        self.standby_admitted = False
        self._queue: deque[Reading | DeviceState | DeviceTypes] = deque()
        self._unacked: OrderedDict[int, tuple[bytes, int]] = OrderedDict()  # seq -> (frame, readings)
        self._seq = 0
        self._wakeup = asyncio.Event()
        self._acked = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._main: asyncio.Task[None] | None = None
        self._write_tasks: set[asyncio.Task[None]] = set()
        self._dropping = False
        self._refused = LogOnce(log)
        self._quiet = False  # the last session was refused: its retries log at DEBUG
        self.stats = ClientStats()

    async def __aenter__(self) -> HandoffClient:
        self._main = asyncio.create_task(self._run(), name=f"handoff-client-{self._collector}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._main is not None:
            self._main.cancel()
            with suppress(asyncio.CancelledError):
                await self._main
        for task in list(self._write_tasks):
            task.cancel()
        if self._write_tasks:
            await asyncio.gather(*self._write_tasks, return_exceptions=True)

    # -- producer API

    def publish(self, readings: Iterable[Reading]) -> None:
        """Queue readings for the forwarder; never blocks."""
        queue, added, extra = self._queue, 0, 0
        for reading in readings:
            queue.append(reading)
            added += 1
            value = reading[2]
            if value.__class__ is str or value.__class__ is list:
                extra += _extra_bytes(value)
        self.stats.queued += added
        self.stats.queued_bytes += added * READING_BYTES + extra
        self._trim()
        if added:
            self._wakeup.set()

    def device_state(self, state: DeviceState) -> None:
        """Queue a device's online/offline change, in order with its readings."""
        self._queue.append(state)
        self.stats.queued_bytes += READING_BYTES
        self._wakeup.set()

    def _popleft(self) -> Reading | DeviceState | DeviceTypes:
        item = self._queue.popleft()
        size = READING_BYTES
        if isinstance(item, tuple):  # a Reading (or a row put back by _batch_frame), not an event
            value = item[2]
            if value.__class__ is str or value.__class__ is list:
                size += _extra_bytes(value)
        self.stats.queued_bytes -= size
        return item

    def device_types(self, types: DeviceTypes) -> None:
        """Queue the datatypes of a device's tags, in order with its readings (before the first)."""
        self._queue.append(types)
        self.stats.queued_bytes += READING_BYTES
        self._wakeup.set()

    def make_standby(self) -> None:
        """Before `async with`: say hello as a standby and send nothing until made active."""
        assert self._main is None, "a client becomes a standby before it connects"
        self._active.clear()

    @property
    def active(self) -> bool:
        """False while this is a standby the forwarder has not made active."""
        return self._active.is_set()

    async def wait_active(self) -> None:
        await self._active.wait()

    @property
    def pending(self) -> int:
        """Readings not yet acknowledged by the forwarder (queued or in flight)."""
        return len(self._queue) + sum(n for _, n in self._unacked.values())

    async def drain(self, timeout: float) -> bool:
        """Wait until the forwarder has acknowledged everything queued; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._queue or self._unacked:
            left = deadline - loop.time()
            if left <= 0:
                return False
            # Woken by the ack (a handover waits on this drain); the bound covers a missed wake.
            self._acked.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), min(left, 0.02))
        return True

    def _trim(self) -> None:
        settings, stats, queue = self._settings, self.stats, self._queue
        if len(queue) <= settings.queue_max and stats.queued_bytes <= settings.queue_max_bytes:
            self._dropping = False
            return
        excess = 0
        while queue and (len(queue) > settings.queue_max or stats.queued_bytes > settings.queue_max_bytes):
            self._popleft()
            excess += 1
        stats.dropped += excess
        if not self._dropping:
            self._dropping = True
            log.error(
                "forwarder unreachable and %d readings (about %d MiB) queued: dropping the oldest "
                "(queue_max %d, queue_max_bytes %d MiB)", len(queue), stats.queued_bytes >> 20,
                settings.queue_max, settings.queue_max_bytes >> 20,
            )

    # -- connection

    async def _run(self) -> None:
        delay = 0.05
        first_failure = True
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self._settings.socket))
            except OSError as exc:
                if first_failure:
                    log.warning("forwarder not reachable at %s: %s; retrying", self._settings.socket, exc)
                    first_failure = False
                else:
                    log.debug("forwarder still not reachable: %s", exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
                continue
            first_failure = True
            refused = False
            began = asyncio.get_running_loop().time()
            try:
                await self._session(reader, writer)
            except HandoffRefused as exc:  # another instance holds our name, say: back off, log once
                refused = True
                self._refused(str(exc), logging.ERROR, "the forwarder refused this collector: %s; retrying", exc)
            except (OSError, asyncio.IncompleteReadError, HandoffError) as exc:
                log.warning("hand-off to the forwarder lost: %s; reconnecting", exc)
            finally:
                self._writer = None
                self.stats.connected = False
                writer.close()
                with suppress(OSError):
                    await writer.wait_closed()
            self.stats.reconnects += 1
            self._quiet = refused
            # A refusal, or a session closed at once (the refusal may show as a broken pipe when
            # we were still sending): back off as for an unreachable forwarder.
            if refused or asyncio.get_running_loop().time() - began < 1.0:
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
            else:
                delay = 0.05

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello: dict[str, Any] = {"t": "hello", "collector": self._collector, "epoch": self._epoch}
        if not self._active.is_set():
            hello["standby"] = True
            self.standby_admitted = False
        writer.write(encode_frame(hello))
        for frame, _ in self._unacked.values():  # sent before the loss: send again, in order
            writer.write(frame)
        await writer.drain()
        self._writer = writer
        self.stats.connected = True
        log.log(logging.DEBUG if self._quiet else logging.INFO,  # not every retry after a refusal
                "hand-off to the forwarder connected (%d frames resent)", len(self._unacked))
        tasks = {
            asyncio.create_task(self._send_loop(writer), name="handoff-send"),
            asyncio.create_task(self._receive_loop(reader), name="handoff-receive"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # raises what ended the session

    async def _send_loop(self, writer: asyncio.StreamWriter) -> None:
        settings = self._settings
        await self._active.wait()  # a standby sends nothing (the forwarder would close it)
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if len(self._unacked) >= MAX_IN_FLIGHT:
                self._acked.clear()
                await self._acked.wait()
                continue
            if settings.linger and len(self._queue) < settings.batch_max:
                await asyncio.sleep(settings.linger)
            frame, count = self._next_frame()
            if frame is None:
                continue
            writer.write(frame)
            self.stats.sent += count
            await writer.drain()

    def _next_frame(self) -> tuple[bytes | None, int]:
        queue = self._queue
        if not queue:
            return None, 0
        if isinstance(queue[0], DeviceState):
            state = self._popleft()
            assert isinstance(state, DeviceState)
            message: dict[str, Any] = {
                "t": "state", "seq": self._seq + 1, "device": state.device,
                "online": state.online, "reason": state.reason,
            }
            frame: bytes | None = encode_frame(message)
            count = 0
        elif isinstance(queue[0], DeviceTypes):
            types = self._popleft()
            assert isinstance(types, DeviceTypes)
            message = {"t": "types", "seq": self._seq + 1, "device": types.device, "types": types.types}
            frame = encode_frame(message)
            count = 0
        else:
            rows: list[tuple[Any, ...]] = []
            limit = self._settings.batch_max
            while queue and len(rows) < limit and not isinstance(queue[0], DeviceState | DeviceTypes):
                rows.append(tuple(self._popleft()))  # type: ignore[arg-type]
            frame, count = self._batch_frame(rows)
        if frame is None:
            return None, 0
        self._seq += 1
        self._unacked[self._seq] = (frame, count)
        return frame, count

    def _batch_frame(self, rows: list[tuple[Any, ...]]) -> tuple[bytes | None, int]:
        """A batch frame of the first of `rows` that fit in MAX_FRAME; the rest go back to the queue.

        Halving is rare (5,000 readings take ~0.5 MB); a single reading over the cap (a string of
        megabytes) is dropped, counted and logged, as the forwarder would refuse its frame."""
        while True:
            try:
                frame = encode_frame({"t": "batch", "seq": self._seq + 1, "r": rows})
            except TypeError:  # a value JSON cannot carry (bytes, an int past 64 bits): drop those readings
                rows[:] = [row for row in rows if self._encodable(row)]
                if not rows:
                    return None, 0
                continue
            if len(frame) <= MAX_FRAME:
                return frame, len(rows)
            if len(rows) == 1:
                device, tag = rows[0][0], rows[0][1]
                self.stats.dropped += 1
                self._refused(
                    ("too big", device, tag), logging.ERROR,
                    "reading %s/%s dropped: it takes %d bytes, over the hand-off's %d byte frame limit",
                    device, tag, len(frame), MAX_FRAME,
                )
                return None, 0
            half = len(rows) // 2
            back = rows[half:]
            del rows[half:]
            self._queue.extendleft(reversed(back))  # type: ignore[arg-type]
            self.stats.queued_bytes += sum(
                READING_BYTES + (_extra_bytes(r[2]) if r[2].__class__ in (str, list) else 0) for r in back
            )

    def _encodable(self, row: tuple[Any, ...]) -> bool:
        try:
            orjson.dumps(row)
        except TypeError as exc:
            self.stats.dropped += 1
            self._refused(("unencodable", row[0], row[1]), logging.ERROR,
                          "reading %s/%s dropped: its value cannot be handed off: %s", row[0], row[1], exc)
            return False
        return True

    async def _receive_loop(self, reader: asyncio.StreamReader) -> None:
        while True:
            message = await read_frame(reader)
            kind = message["t"]
            if kind == "error":
                raise HandoffRefused(str(message.get("error"))[:500])
            if kind == "standby":
                self.standby_admitted = True
                log.info("admitted by the forwarder as the standby of the running %s collector: waiting, "
                         "polling nothing", self._collector)
            elif kind == "active":
                if not self._active.is_set():
                    log.info("made active by the forwarder: the previous %s collector left", self._collector)
                self._active.set()
            elif kind == "ack":
                seq = int(message["seq"])
                while self._unacked and next(iter(self._unacked)) <= seq:
                    _, (_, count) = self._unacked.popitem(last=False)
                    self.stats.acked += count
                self._acked.set()
            elif kind == "write":
                deadline = message.get("deadline_ms")
                request = WriteRequest(
                    str(message.get("id", "")), str(message["device"]), str(message["tag"]), message.get("value"),
                    deadline if isinstance(deadline, int) and not isinstance(deadline, bool) else None,
                )
                task = asyncio.create_task(self._serve_write(request), name=f"write-{request.device}")
                self._write_tasks.add(task)
                task.add_done_callback(self._write_tasks.discard)
            else:
                log.debug("ignoring hand-off frame of type %r", kind)

    async def _serve_write(self, request: WriteRequest) -> None:
        try:
            result = await self._on_write(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a collector bug must still answer the writer, not hang it
            log.exception("write of %s/%s failed", request.device, request.tag)
            result = WriteResult(request.id, request.device, request.tag, False, f"internal error: {exc}")
        writer = self._writer
        if writer is None:
            log.warning("write result for %s/%s lost: forwarder away", request.device, request.tag)
            return
        writer.write(
            encode_frame(
                {"t": "result", "id": result.id, "device": result.device, "tag": result.tag,
                 "ok": result.ok, "error": result.error}
            )
        )


# --------------------------------------------------------------------------- forwarder side


class HandoffSink(Protocol):
    """What the forwarder does with what collectors hand it."""

    async def readings(self, collector: str, readings: list[Reading]) -> None:
        """Take readings; return once they are as durable as the buffer policy promises.

        OSError: they could not be stored; the batch is not acknowledged and the connection is
        closed, so the collector keeps it and sends it again when it reconnects."""

    async def device_state(self, collector: str, state: DeviceState) -> None: ...

    # Optional (looked up with getattr, so older sinks need not have it):
    # `async def datatypes(self, collector: str, types: DeviceTypes) -> None`

    def write_result(self, collector: str, result: WriteResult) -> None: ...


@dataclass(slots=True)
class _Peer:
    collector: str
    epoch: str
    writer: asyncio.StreamWriter
    pid: int
    standby: bool = False  # admitted beside the active one; sends nothing, gets no writes


def peer_credentials(writer: asyncio.StreamWriter) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket, as the kernel saw it at connect."""
    sock: socket.socket = writer.get_extra_info("socket")
    return _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))


def private_directory(folder: Path) -> None:
    """Make the socket's directory reachable by this user only (0700), creating it if needed.

    A directory of another user (e.g. /tmp) is left as it is, with a warning: then the socket's
    0660 mode and the peer check are what keep other users out."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = folder.stat()
    if st.st_uid != os.geteuid():
        log.warning("hand-off directory %s belongs to uid %d, not to this user: other users may see the socket; "
                    "give the forwarder a directory of its own", folder, st.st_uid)
    elif stat.S_IMODE(st.st_mode) & 0o077:
        folder.chmod(0o700)
        log.info("hand-off directory %s made private (0700; was %04o)", folder, stat.S_IMODE(st.st_mode))


class HandoffServer:
    """The forwarder's end: accepts collectors, acknowledges what the sink took, routes writes.

    `check` (handoff_check.py) decides which readings the sink gets; by default every check
    but catalog membership. Only peers of this process's uid may connect, and root's too with
    `root_peers` (a collector sandboxed under gVisor: see the module docstring)."""

    def __init__(
        self, socket_path: Path, sink: HandoffSink, check: ReadingCheck | None = None, root_peers: bool = False
    ) -> None:
        self._path = socket_path
        self._sink = sink
        self.check = check or ReadingCheck(None)
        self._server: asyncio.Server | None = None
        self._peers: dict[str, _Peer] = {}  # the active connection of each collector name
        self._standby: dict[str, _Peer] = {}  # at most one standby per name (a start-first update)
        self._claims: dict[str, asyncio.TimerHandle] = {}  # standbys that arrived with no active peer
        self._last_seq: dict[tuple[str, str], int] = {}
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._uid = os.geteuid()
        self._uids = frozenset({self._uid, 0} if root_peers else {self._uid})
        self._log_once = LogOnce(log)
        self.readings_in = 0
        self.refused = 0  # connections refused: peer uid, connection cap, protocol errors, name taken
        self.last_frame_at = 0.0

    @property
    def collectors(self) -> list[str]:
        """The collectors connected and active (a standby is not one yet)."""
        return sorted(self._peers)

    @property
    def standbys(self) -> list[str]:
        """The collectors with a standby waiting beside the active one."""
        return sorted(self._standby)

    @property
    def serving(self) -> bool:
        """True while the socket accepts collectors (for the forwarder's /healthz)."""
        return self._server is not None and self._server.is_serving()

    async def __aenter__(self) -> HandoffServer:
        private_directory(self._path.parent)
        with suppress(FileNotFoundError):
            self._path.unlink()
        # 0660 before listen(): until then a connect is refused, so there is no moment where the
        # socket is reachable with the mode bind() gave it.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self._path))
            os.chmod(self._path, 0o660)
            sock.listen(MAX_CONNECTIONS)
            self._server = await asyncio.start_unix_server(self._accept, sock=sock)
        except BaseException:
            sock.close()
            raise
        log.info("hand-off listening on %s", self._path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for claim in self._claims.values():
            claim.cancel()
        self._claims.clear()
        if self._server is not None:
            self._server.close()
        # Close the connections and let their tasks end on the closed stream: a cancelled
        # client_connected_cb task makes Python 3.11's asyncio log a spurious CancelledError.
        for writer in list(self._writers):
            writer.close()
        if self._connections:
            _, stuck = await asyncio.wait(set(self._connections), timeout=2.0)
            for task in stuck:
                task.cancel()
            if stuck:
                await asyncio.gather(*stuck, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        with suppress(FileNotFoundError):
            self._path.unlink()

    def send_write(self, collector: str, request: WriteRequest) -> bool:
        """Route a write to the collector that owns the device; False when it is not connected."""
        peer = self._peers.get(collector)
        if peer is None:
            return False
        frame: dict[str, Any] = {"t": "write", "id": request.id, "device": request.device,
                                 "tag": request.tag, "value": request.value}
        if request.deadline_ms is not None:
            frame["deadline_ms"] = request.deadline_ms
        peer.writer.write(encode_frame(frame))
        return True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection, start to end: every error of the peer's making ends here, logged once per kind."""
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._writers.add(writer)
        peer: _Peer | None = None
        who = "?"
        try:
            pid, uid, _ = peer_credentials(writer)
            who = f"pid {pid}, uid {uid}"
            if uid not in self._uids:
                self.refused += 1
                also = " (and uid 0, gVisor's gofer for a sandboxed collector)" if self._uids != {self._uid} else ""
                self._log_once(("uid", uid), logging.ERROR,
                               "hand-off: refused a connection from uid %d (pid %d): only uid %d, the forwarder's "
                               "own%s, may connect", uid, pid, self._uid, also)
                return  # no error frame: a stranger learns nothing
            if len(self._connections) > MAX_CONNECTIONS:
                raise HandoffError(f"too many hand-off connections (at most {MAX_CONNECTIONS})")
            hello = await asyncio.wait_for(read_frame(reader), HELLO_TIMEOUT)
            peer = self._hello(hello, writer, pid)
            who = f"collector {peer.collector} ({who})"
            await self._serve(peer, reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except TimeoutError:
            self.refused += 1
            self._log_once("timeout", logging.ERROR, "hand-off peer dropped (%s): a frame did not arrive within "
                           "%gs (hello) or %gs (rest of a frame)", who, HELLO_TIMEOUT, FRAME_TIMEOUT)
        except HandoffError as exc:
            self.refused += 1
            kind = re.split(r"[:\d'\"]", str(exc), maxsplit=1)[0]  # "frame of 5242880 bytes..." -> "frame of "
            self._log_once(("protocol", kind), logging.ERROR, "hand-off peer dropped (%s): %s", who, exc)
            with suppress(ConnectionError, RuntimeError):
                writer.write(encode_frame({"t": "error", "error": str(exc)}))
        except OSError as exc:  # the sink could not store a batch (the forwarder's disk): it logged that
            log.debug("hand-off batch from %s refused, connection closed so it is sent again: %s", who, exc)
        except Exception as exc:  # a bug of ours on a peer's input: that connection ends, the forwarder goes on
            self.refused += 1
            self._log_once(("bug", type(exc).__name__), logging.ERROR,
                           "hand-off peer dropped (%s) on an unexpected error", who, exc_info=True)
        finally:
            self._connections.discard(task)
            self._writers.discard(writer)
            if peer is not None and self._peers.get(peer.collector) is peer:
                del self._peers[peer.collector]
                log.info("collector %s left the hand-off", peer.collector)
                self._promote(peer.collector)
            elif peer is not None and self._standby.get(peer.collector) is peer:
                del self._standby[peer.collector]
                log.info("the standby of collector %s left the hand-off", peer.collector)
            writer.close()

    def _hello(self, hello: dict[str, Any], writer: asyncio.StreamWriter, pid: int) -> _Peer:
        """Admit a collector: one active connection per collector name, and at most one standby.

        The connection that holds a name keeps it (and its writes) until it closes; another
        process saying the same name is refused, so neither a stray second instance nor a
        rogue can take the writes of the real one. The same process (same epoch) reconnecting
        before its old connection was seen closing takes over. A start-first update's new
        instance says `standby`: it is admitted beside the active one (the peer check of
        `_accept` already held: same uid), may send nothing and gets no writes, and is made
        active when the active connection closes (`_promote`). A second standby of a name is
        refused, so a rogue cannot queue up behind the real collector either."""
        if hello["t"] != "hello":
            raise HandoffError(f"expected hello, got {hello['t'][:40]!r}")
        name, epoch = hello.get("collector"), hello.get("epoch", "")
        if not good_name(name):
            raise HandoffError(f"hello: collector {str(name)[:80]!r} is not a collector name")
        if not isinstance(epoch, str) or len(epoch) > 64:
            raise HandoffError("hello: epoch is not a text of at most 64 characters")
        assert isinstance(name, str)
        current = self._peers.get(name)
        if hello.get("standby") is True:
            return self._admit_standby(name, epoch, writer, pid, current)
        peer = _Peer(name, epoch, writer, pid)
        if current is not None and current.epoch != epoch:
            raise HandoffError(
                f"collector {name} is already connected (pid {current.pid}): a second connection under that "
                "name is refused; writes stay with the first"
            )
        if current is not None:
            current.writer.close()
        self._peers[name] = peer
        log.info("collector %s connected to the hand-off (pid %d)", name, pid)
        return peer

    def _admit_standby(
        self, name: str, epoch: str, writer: asyncio.StreamWriter, pid: int, current: _Peer | None
    ) -> _Peer:
        waiting = self._standby.get(name)
        if waiting is not None and waiting.epoch != epoch:
            raise HandoffError(
                f"collector {name} already has a standby (pid {waiting.pid}): at most one standby per collector"
            )
        if current is not None and current.epoch == epoch:
            raise HandoffError(f"collector {name} is active on this connection's epoch: it cannot be a standby too")
        if waiting is not None:  # the same process reconnecting
            waiting.writer.close()
        peer = _Peer(name, epoch, writer, pid, standby=True)
        self._standby[name] = peer
        writer.write(encode_frame({"t": "standby"}))
        if current is None:
            # No active collector of this name: the old one may be reconnecting to a restarted
            # forwarder; if it does not within STANDBY_CLAIM, this one takes over.
            claim = self._claims.pop(name, None)
            if claim is not None:
                claim.cancel()
            self._claims[name] = asyncio.get_running_loop().call_later(STANDBY_CLAIM, self._promote, name)
            log.info("collector %s (pid %d) connected as a standby with no active instance: active in %gs "
                     "unless one reconnects", name, pid, STANDBY_CLAIM)
        else:
            log.info("collector %s (pid %d) admitted as the standby of pid %d: it takes over when that one leaves",
                     name, pid, current.pid)
        return peer

    def _promote(self, name: str) -> None:
        """The active connection of `name` left (or a standby's claim ran out): its standby, if
        any, is the collector now. Its first frame after this one is the first it may send."""
        claim = self._claims.pop(name, None)
        if claim is not None:
            claim.cancel()
        if name in self._peers:  # an active one came back first: the standby waits on
            return
        peer = self._standby.pop(name, None)
        if peer is None:
            return
        peer.standby = False
        self._peers[name] = peer
        with suppress(ConnectionError, RuntimeError):
            peer.writer.write(encode_frame({"t": "active"}))
        log.info("collector %s (pid %d) made active: it polls and publishes from now on", name, peer.pid)

    async def _serve(self, peer: _Peer, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        writer = peer.writer
        while True:
            seq = await self._take(peer, await read_frame(reader))
            self.last_frame_at = loop.time()
            if seq is not None:
                writer.write(encode_frame({"t": "ack", "seq": seq}))
                await writer.drain()  # a peer that sends and never reads stops being read, not buffered for

    async def _take(self, peer: _Peer, message: dict[str, Any]) -> int | None:
        """Hand one frame to the sink; the seq to acknowledge. A method of its own so that the parsed
        frame (tens of MB for a full frame of small rows) is freed before the next one is awaited."""
        kind = message["t"]
        if peer.standby:
            raise HandoffError(
                f"collector {peer.collector} is a standby: it may send {kind[:40]!r} frames once it is made active"
            )
        if kind == "result":
            self._sink.write_result(peer.collector, _write_result(message))
            return None
        if kind not in ("batch", "state", "types"):
            raise HandoffError(f"unknown frame type {kind[:40]!r}")
        seq = message.get("seq")
        if type(seq) is not int or seq < 1:
            raise HandoffError(f"{kind} frame: seq {str(seq)[:40]!r} is not a positive integer")
        key = (peer.collector, peer.epoch)
        if seq > self._last_seq.get(key, 0):  # a resend after a reconnect is taken once
            if kind == "batch":
                readings = self.check.readings(peer.collector, message.get("r"))
                del message  # the rows: only the readings that passed live on
                if readings:
                    await self._sink.readings(peer.collector, readings)
                self.readings_in += len(readings)
            elif kind == "state":
                state = _device_state(message)
                if self.check.device(peer.collector, state.device):
                    await self._sink.device_state(peer.collector, state)
            elif self.check.device(peer.collector, message.get("device")):  # types
                await self._datatypes(peer.collector, message)
            self._last_seq[key] = seq
        return seq

    async def _datatypes(self, collector: str, message: dict[str, Any]) -> None:
        types = message.get("types")
        if not isinstance(types, dict) or not all(isinstance(v, str) for v in types.values()):
            raise HandoffError("a types frame maps tag names to type names")
        declare = getattr(self._sink, "datatypes", None)
        if declare is not None:
            await declare(collector, DeviceTypes(str(message["device"]), {str(k): v for k, v in types.items()}))


def _write_result(message: dict[str, Any]) -> WriteResult:
    id_, device, tag, ok, error = (message.get(k) for k in ("id", "device", "tag", "ok", "error"))
    if not (isinstance(id_, str) and isinstance(device, str) and isinstance(tag, str) and isinstance(ok, bool)
            and (error is None or isinstance(error, str))):
        raise HandoffError("result frame: id, device, tag (text), ok (true/false) and error (text or null) expected")
    return WriteResult(id_, device, tag, ok, error[:1000] if error else error)


def _device_state(message: dict[str, Any]) -> DeviceState:
    device, online, reason = message.get("device"), message.get("online"), message.get("reason")
    if not (isinstance(device, str) and isinstance(online, bool) and (reason is None or isinstance(reason, str))):
        raise HandoffError("state frame: device (text), online (true/false) and reason (text or null) expected")
    return DeviceState(device, online, reason[:1000] if reason else reason)
