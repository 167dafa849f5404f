"""The hand-off between collectors and the forwarder, on one machine, over a Unix socket.

Readings go up in acknowledged batches, writes come down, write results go up. Frames::

    +-----------------+-------------------------------------------+
    | length (u32 BE) | JSON object (orjson); key `t` is the type |
    +-----------------+-------------------------------------------+

    collector -> forwarder
      hello   {"t": "hello", "collector": "modbus", "epoch": "<random per process>"}
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
from collectors.core.model import DeviceState, DeviceTypes, Reading, WriteRequest, WriteResult

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
MAX_IN_FLIGHT = 8  # frames sent and not yet acknowledged: backpressure when the forwarder is slow


class HandoffError(FieldgateError):
    """A peer broke the hand-off protocol."""


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    header = await reader.readexactly(_HEADER.size)
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise HandoffError(f"frame of {length} bytes is over the {MAX_FRAME} limit")
    message = orjson.loads(await reader.readexactly(length))
    if not isinstance(message, dict) or "t" not in message:
        raise HandoffError("frame is not a typed object")
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


class HandoffClient:
    """A collector's end of the hand-off: an async context manager.

    `publish()` never blocks: readings queue (bounded by `queue_max`, oldest dropped and
    counted) and a sender task batches them towards the forwarder, reconnecting with
    capped backoff while it is away. Writes from the forwarder are served by `on_write`.
    """

    def __init__(self, settings: HandoffConfig, collector: str, on_write: WriteHandler) -> None:
        self._settings = settings
        self._collector = collector
        self._on_write = on_write
        self._epoch = uuid.uuid4().hex
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
        before = len(self._queue)
        self._queue.extend(readings)
        added = len(self._queue) - before
        self.stats.queued += added
        self._trim()
        if added:
            self._wakeup.set()

    def device_state(self, state: DeviceState) -> None:
        """Queue a device's online/offline change, in order with its readings."""
        self._queue.append(state)
        self._wakeup.set()

    def device_types(self, types: DeviceTypes) -> None:
        """Queue the datatypes of a device's tags, in order with its readings (before the first)."""
        self._queue.append(types)
        self._wakeup.set()

    @property
    def pending(self) -> int:
        """Readings not yet acknowledged by the forwarder (queued or in flight)."""
        return len(self._queue) + sum(n for _, n in self._unacked.values())

    async def drain(self, timeout: float) -> bool:
        """Wait until the forwarder has acknowledged everything queued; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._queue or self._unacked:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def _trim(self) -> None:
        excess = len(self._queue) - self._settings.queue_max
        if excess <= 0:
            self._dropping = False
            return
        for _ in range(excess):
            self._queue.popleft()
        self.stats.dropped += excess
        if not self._dropping:
            self._dropping = True
            log.error(
                "forwarder unreachable and %d readings queued: dropping the oldest (queue_max)",
                self._settings.queue_max,
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
            delay = 0.05
            first_failure = True
            try:
                await self._session(reader, writer)
            except (OSError, asyncio.IncompleteReadError, HandoffError) as exc:
                log.warning("hand-off to the forwarder lost: %s; reconnecting", exc)
            finally:
                self._writer = None
                self.stats.connected = False
                writer.close()
                with suppress(OSError):
                    await writer.wait_closed()
            self.stats.reconnects += 1

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode_frame({"t": "hello", "collector": self._collector, "epoch": self._epoch}))
        for frame, _ in self._unacked.values():  # sent before the loss: send again, in order
            writer.write(frame)
        await writer.drain()
        self._writer = writer
        self.stats.connected = True
        log.info("hand-off to the forwarder connected (%d frames resent)", len(self._unacked))
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
        self._seq += 1
        if isinstance(queue[0], DeviceState):
            state = queue.popleft()
            assert isinstance(state, DeviceState)
            message: dict[str, Any] = {
                "t": "state", "seq": self._seq, "device": state.device,
                "online": state.online, "reason": state.reason,
            }
            count = 0
        elif isinstance(queue[0], DeviceTypes):
            types = queue.popleft()
            assert isinstance(types, DeviceTypes)
            message = {"t": "types", "seq": self._seq, "device": types.device, "types": types.types}
            count = 0
        else:
            rows: list[tuple[Any, ...]] = []
            limit = self._settings.batch_max
            while queue and len(rows) < limit and not isinstance(queue[0], DeviceState | DeviceTypes):
                rows.append(tuple(queue.popleft()))  # type: ignore[arg-type]
            message = {"t": "batch", "seq": self._seq, "r": rows}
            count = len(rows)
        frame = encode_frame(message)
        self._unacked[self._seq] = (frame, count)
        return frame, count

    async def _receive_loop(self, reader: asyncio.StreamReader) -> None:
        while True:
            message = await read_frame(reader)
            kind = message["t"]
            if kind == "ack":
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


class HandoffServer:
    """The forwarder's end: accepts collectors, acknowledges what the sink took, routes writes."""

    def __init__(self, socket_path: Path, sink: HandoffSink) -> None:
        self._path = socket_path
        self._sink = sink
        self._server: asyncio.Server | None = None
        self._peers: dict[str, _Peer] = {}
        self._last_seq: dict[tuple[str, str], int] = {}
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.readings_in = 0
        self.last_frame_at = 0.0

    @property
    def collectors(self) -> list[str]:
        return sorted(self._peers)

    @property
    def serving(self) -> bool:
        """True while the socket accepts collectors (for the forwarder's /healthz)."""
        return self._server is not None and self._server.is_serving()

    async def __aenter__(self) -> HandoffServer:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with suppress(FileNotFoundError):
            self._path.unlink()
        self._server = await asyncio.start_unix_server(self._accept, path=str(self._path))
        # Who may connect is decided by who can reach the directory (a private volume).
        os.chmod(self._path, 0o666)
        log.info("hand-off listening on %s", self._path)
        return self

    async def __aexit__(self, *exc: object) -> None:
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
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._writers.add(writer)
        peer: _Peer | None = None
        try:
            hello = await read_frame(reader)
            if hello["t"] != "hello":
                raise HandoffError(f"expected hello, got {hello['t']!r}")
            peer = _Peer(str(hello["collector"]), str(hello.get("epoch", "")), writer)
            self._peers[peer.collector] = peer
            log.info("collector %s connected to the hand-off", peer.collector)
            await self._serve(peer, reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except HandoffError as exc:
            log.error("hand-off peer dropped: %s", exc)
        except OSError as exc:  # the sink could not store a batch (the forwarder's disk): it logged that
            log.debug("hand-off batch from %s refused, connection closed so it is sent again: %s",
                      peer.collector if peer else "?", exc)
        finally:
            self._connections.discard(task)
            self._writers.discard(writer)
            if peer is not None and self._peers.get(peer.collector) is peer:
                del self._peers[peer.collector]
                log.info("collector %s left the hand-off", peer.collector)
            writer.close()

    async def _serve(self, peer: _Peer, reader: asyncio.StreamReader) -> None:
        key = (peer.collector, peer.epoch)
        loop = asyncio.get_running_loop()
        while True:
            message = await read_frame(reader)
            self.last_frame_at = loop.time()
            kind = message["t"]
            if kind == "result":
                self._sink.write_result(
                    peer.collector,
                    WriteResult(str(message["id"]), str(message["device"]), str(message["tag"]),
                                bool(message["ok"]), message.get("error")),
                )
                continue
            seq = int(message["seq"])
            if seq > self._last_seq.get(key, 0):  # a resend after a reconnect is taken once
                if kind == "batch":
                    readings = [Reading(*row) for row in message["r"]]
                    await self._sink.readings(peer.collector, readings)
                    self.readings_in += len(readings)
                elif kind == "state":
                    await self._sink.device_state(
                        peer.collector, DeviceState(str(message["device"]), bool(message["online"]),
                                                    message.get("reason"))
                    )
                elif kind == "types":
                    await self._datatypes(peer.collector, message)
                else:
                    raise HandoffError(f"unknown frame type {kind!r}")
                self._last_seq[key] = seq
            peer.writer.write(encode_frame({"t": "ack", "seq": seq}))

    async def _datatypes(self, collector: str, message: dict[str, Any]) -> None:
        types = message.get("types")
        if not isinstance(types, dict) or not all(isinstance(v, str) for v in types.values()):
            raise HandoffError("a types frame maps tag names to type names")
        declare = getattr(self._sink, "datatypes", None)
        if declare is not None:
            await declare(collector, DeviceTypes(str(message["device"]), {str(k): v for k, v in types.items()}))
