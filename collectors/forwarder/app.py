"""The forwarder: hand-off in, buffer, payload format, broker session out; writes routed back.

    collectors --hand-off--> Forwarder (HandoffSink) --put--> Buffer --take--> format.encode
                                                                 ^                  |
                                                                 └------ack---- BrokerSession (paho)
    broker /set, DCMD --> format.handle_incoming --> catalog checks --> HandoffServer.send_write
    collector's WriteResult --> format.write_result --> broker

A new catalog (`devices:`) is taken in place (`Forwarder.reload`, on SIGHUP: __main__.py): the
session, the hand-off connections and the buffer go on; the format tells the broker about the
changed devices only (formats.PayloadFormat.reload).

The hand-off is acknowledged once `Buffer.put` returns: in memory for `outage` durability;
for `always`, written to disk and flushed to the device (fsync), so a power cut loses nothing
acknowledged. The flush is a group commit (`GroupSync`): the batches that arrive while one
fsync runs share the next one, so the cost is one fsync per round, not per batch. A batch
leaves the buffer when every message the format made of it is delivered (see formats.py for
the seam and buffer.py for the lanes).

Health (`/healthz`, which the supervisor restarts on): unhealthy only when a restart can help,
that is when something of ours is stuck: the hand-off not listening or the buffer unable to
store readings (nothing is acknowledged to the collectors), the publisher or the reconnect
loop gone, or a session that is connected while its publishes stay unacknowledged. A broker
that cannot be reached is an outage a restart cannot cure: the forwarder buffers, retries and
answers 200 with a `degraded:` line (and the broker gauges in /metrics).

One bad reading never stops publishing (quarantine.py): each batch is screened before it is
encoded, what the format or paho still refuses is dropped alone, the rest of the batch goes
out, and what was dropped is counted and kept under `{buffer.dir}/quarantine/`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, replace
from typing import Any

from collectors.core.errors import FieldgateError
from collectors.core.handoff import HandoffServer
from collectors.core.handoff_check import ReadingCheck
from collectors.core.metrics import Metrics
from collectors.core.model import DeviceState, DeviceTypes, Reading, WriteRequest, WriteResult, now_ms
from collectors.core.service import ErrorLatch
from collectors.forwarder.buffer import Batch, Buffer
from collectors.forwarder.config import CatalogDevice, ForwarderConfig
from collectors.forwarder.formats import ERROR_ECHO, CatalogChange, OutMessage, PayloadFormat, create_format
from collectors.forwarder.mqtt import BACKOFF_MAX, BrokerSession
from collectors.forwarder.quarantine import Screen, shorten

log = logging.getLogger(__name__)

SYNC_INTERVAL = 1.0  # fsync of the disk buffer under `outage` (`always` flushes before each ack: GroupSync)
COMMIT_INTERVAL = 0.25  # how often delivered offsets are persisted (a crash resends at most this much)
WRITE_TIMEOUT = 10.0
# A write's deadline comes this much before the forwarder's own "no answer" (but at most half the
# timeout): a collector answers "expired" for a write it could not start in time, and that
# answer, not the forwarder's guess, reaches the requester.
WRITE_ANSWER_MARGIN = 2.0
RESEND_MAX = 100_000  # most readings kept for the format's resend window (newest kept)
# A connected session whose publishes wait this many keep-alives for an acknowledgement is stuck.
# A dead link is not: paho's keep-alive drops it within 3 x keepalive of the last byte received
# (a PINGREQ after one keep-alive of silence, the connection closed after another without the
# PINGRESP, the last byte at most one keep-alive before the wait began), and it becomes an outage.
STUCK_KEEPALIVES = 4
PUBLISH_ERROR_PAUSE = 1.0  # after an unexpected error in the publisher, before it tries again


class ReloadRefused(FieldgateError):
    """A new config that changes more than the catalog: it needs a restart of the forwarder."""


class GroupSync:
    """fsync of the buffer's written segments, shared by every batch that waits for one: a batch
    that arrives while a flush runs waits for the next, which covers all of them."""

    def __init__(self, buffer: Buffer) -> None:
        self._buffer = buffer
        self._waiting: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    async def flushed(self) -> None:
        """Return once what the buffer wrote before this call is on the device; OSError if the
        flush failed (the caller does not acknowledge then)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="buffer-fsync")
        await future

    async def _run(self) -> None:
        while self._waiting:
            waiting, self._waiting = self._waiting, []
            error: OSError | None = None
            handles = self._buffer.sync_handles()
            if handles:
                try:
                    await asyncio.to_thread(Buffer.fsync, handles)  # blocks: away from the loop
                except OSError as exc:
                    error = exc
            for future in waiting:
                if not future.done():
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)


@dataclass(slots=True)
class ForwarderStats:
    readings_out: int = 0
    latency_sum: float = 0.0
    latency_count: int = 0
    writes: int = 0
    writes_refused: int = 0
    publisher_errors: int = 0


class Forwarder:
    """An async context manager running the whole forwarder; `run()` serves until cancelled."""

    def __init__(
        self,
        config: ForwarderConfig,
        payload_format: PayloadFormat | None = None,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        self.config = config
        self.format = payload_format or create_format(config)
        # json keeps each tag's order across the replay (a live reading waits behind its tag's
        # backlog); Sparkplug sends the backlog as is_historical and the newest value live at once.
        self.buffer = Buffer(
            config.buffer.dir, config.buffer.max_bytes, config.buffer.durability,
            keep_tag_order=config.mqtt.format == "json",
        )
        self.session = BrokerSession(config, self, self.format.will, self.format.clean_session)
        self.handoff = HandoffServer(config.handoff.socket, self, ReadingCheck.from_catalog(config.devices),
                                     root_peers=bool(config.handoff.root_peers))
        self.metrics = Metrics()
        self.stats = ForwarderStats()
        self.quarantine = self.buffer.quarantine
        self._sync = GroupSync(self.buffer) if config.buffer.durability == "always" else None
        self._screen = Screen()
        self._publisher_latch = ErrorLatch(log, "forwarder publisher")
        self._catalog: dict[str, CatalogDevice] = {device.name: device for device in config.devices}
        # Tags a reload removed -> their collector: what the buffer still holds of them is dropped.
        self._removed_tags: dict[tuple[str, str], str] = {}
        self.reloads = 0  # catalogs taken in place
        self._write_timeout = write_timeout
        self._pending_writes: dict[tuple[str, str, str], asyncio.TimerHandle] = {}
        self._wake = asyncio.Event()
        self._generation = 0  # bumped when the session goes away: late deliveries of old batches are ignored
        self._recent: deque[tuple[float, list[Reading]]] = deque()  # the format's resend window
        self._recent_count = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._stack = AsyncExitStack()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._down_since = 0.0
        self._up_since = 0.0
        self._busy_since = 0.0  # when the session last went from nothing outstanding to something
        self._put_error: str | None = None
        qos = 0 if config.mqtt.format == "sparkplug" else config.mqtt.qos
        self._window = 2000 if qos == 0 else 400  # messages handed to paho and not yet delivered
        self._take = 5000 if config.mqtt.layout == "device" or config.mqtt.format == "sparkplug" else 500
        # A format may want to see readings as they arrive, before they are published (Sparkplug:
        # while no session is born, they are the current values its next DBIRTHs carry).
        self._observe: Callable[[list[Reading]], None] | None = getattr(self.format, "observe", None)
        # A format may have messages of its own clock (Sparkplug: births held for first values).
        self._tick: Callable[[], list[OutMessage]] | None = getattr(self.format, "tick", None)
        self._register_metrics()

    # -- life cycle

    async def __aenter__(self) -> Forwarder:
        self._loop = asyncio.get_running_loop()
        self._down_since = self._loop.time()
        try:
            if self.config.metrics.port is not None:
                server = await self.metrics.serve(self.config.metrics.port, self.config.metrics.host)
                self._stack.push_async_callback(self._close_server, server)
            self._stack.callback(self.buffer.close)
            await self._stack.enter_async_context(self.session)
            self._stack.push_async_callback(self._say_goodbye)
            self._spawn(self._publish_loop(), "forwarder-publish")
            self._spawn(self._housekeeping(), "forwarder-housekeeping")
            self._stack.push_async_callback(self._stop_tasks)
            await self._stack.enter_async_context(self.handoff)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def run(self) -> None:
        async with self:
            await asyncio.Event().wait()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("forwarder task %s failed", task.get_name(), exc_info=task.exception())

    async def _stop_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for timer in self._pending_writes.values():
            timer.cancel()

    async def _say_goodbye(self) -> None:
        """Shutdown: let in-flight batches be acknowledged (bounded), publish the goodbye, disconnect."""
        if not self.session.connected:
            return
        assert self._loop is not None
        deadline = self._loop.time() + 2.0
        while self.session.outstanding and self._loop.time() < deadline:
            self._wake.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)
        await self.session.disconnect(self.format.disconnecting())

    @staticmethod
    async def _close_server(server: asyncio.Server) -> None:
        server.close()
        await server.wait_closed()

    # -- HandoffSink: what collectors hand us

    async def readings(self, collector: str, readings: list[Reading]) -> None:
        assert self._loop is not None
        try:
            self.buffer.put(readings, self._loop.time())
            if self._sync is not None:
                await self._sync.flushed()  # `always`: on the device before the collector's ack
        except OSError as exc:  # disk full or gone: not acknowledged, so the collector keeps them
            if self._put_error is None:
                log.error("buffer cannot store readings in %s: %s", self.config.buffer.dir, exc)
            self._put_error = str(exc)
            raise
        self._put_error = None
        if self._observe is not None:
            self._observe(readings)
        self._format_tick()
        self._wake.set()

    async def device_state(self, collector: str, state: DeviceState) -> None:
        due = self.buffer.put_state(state)
        if due is not None:
            self._publish_all(self.format.device_state(due))
        self._wake.set()

    async def datatypes(self, collector: str, types: DeviceTypes) -> None:
        """A device's datatypes, read by its collector: to the format that declares them (Sparkplug)."""
        declare: Callable[[DeviceTypes], list[OutMessage]] | None = getattr(self.format, "datatypes", None)
        if declare is not None:
            self._publish_all(declare(types))
            self._format_tick()

    def write_result(self, collector: str, result: WriteResult) -> None:
        timer = self._pending_writes.pop((result.device, result.tag, result.id), None)
        if timer is None:
            log.info("write %s to %s/%s answered after its timeout", shorten(repr(result.id)), result.device,
                     result.tag)
            return
        timer.cancel()
        if not result.ok:
            self.stats.writes_refused += 1
        self._publish_all(self.format.write_result(result))

    # -- a new catalog, in place

    def reload(self, config: ForwarderConfig) -> None:
        """Take a new catalog (`devices:`) in place: the broker session, the hand-off connections
        and the buffer go on. From now on the hand-off checks readings against the new catalog
        (a removed tag's are refused, a new tag's taken), writes are routed by it, and the
        format tells the broker about the changed devices only (formats.PayloadFormat.reload).
        What the buffer still holds of a removed tag is dropped when its turn comes, counted
        like a refusal at the hand-off. Any other setting needs a new process: ReloadRefused."""
        if config.settings() != self.config.settings():
            raise ReloadRefused(
                "only `devices` (the catalog) can change in place; the other settings (mqtt, buffer, "
                "gateway, handoff, metrics, log_level) take effect when the forwarder is restarted"
            )
        change = CatalogChange.between(self.config.devices, config.devices)
        for device in self.config.devices:
            for tag in device.tags:
                if (device.name, tag.name) in change.removed_tags:
                    self._removed_tags[device.name, tag.name] = device.collector
        for device in config.devices:
            for tag in device.tags:
                self._removed_tags.pop((device.name, tag.name), None)
        self.config = config
        self._catalog = {device.name: device for device in config.devices}
        self.handoff.check.use_catalog(config.devices)
        messages = self.format.reload(change)
        if messages and self.session.connected:
            self._publish_all(messages)
        self.reloads += 1
        log.info("new catalog applied in place: %d devices (%d added or changed, %d removed, %d untouched); "
                 "the broker session goes on", len(config.devices), len(change.changed), len(change.removed),
                 len(config.devices) - len(change.changed))
        self._wake.set()

    def _drop_removed(self, readings: list[Reading]) -> list[Reading]:
        """The readings of tags still in the catalog; the others counted as the hand-off counts them."""
        removed = self._removed_tags
        kept: list[Reading] = []
        for reading in readings:
            collector = removed.get((reading[0], reading[1]))
            if collector is None:
                kept.append(reading)
                continue
            reason = "unknown_tag" if reading[0] in self._catalog else "unknown_device"
            self.handoff.check.rejected.add(
                collector, reason, f"{shorten(reading[0])}/{shorten(reading[1])}: buffered before a reload "
                "removed it from the catalog")
        return kept

    # -- SessionHandler: what the broker session tells us

    def session_up(self) -> None:
        assert self._loop is not None
        self._up_since = self._loop.time()
        self.session.subscribe(self.format.subscriptions())
        self._publish_all(self.format.connected())
        self._update_online()

    def session_down(self, graceful: bool) -> None:
        assert self._loop is not None
        self._down_since = self._loop.time()
        self._go_offline()
        if not graceful and self.format.resend_window > 0:
            cutoff = self._loop.time() - self.format.resend_window
            again = [r for at, batch in self._recent if at >= cutoff for r in batch]
            if again:
                log.info("resending %d readings published just before the connection was lost", len(again))
            self.buffer.requeue(again)
        self._recent.clear()
        self._recent_count = 0
        self.format.connection_lost(graceful)

    def message(self, topic: str, payload: bytes) -> None:
        incoming = self.format.handle_incoming(topic, payload)
        if incoming.reconnect:
            self._go_offline()
            task = asyncio.create_task(self.session.reconnect(incoming.messages), name="forwarder-reconnect")
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
        else:
            self._publish_all(incoming.messages)
        for request in incoming.writes:
            self._route_write(request)
        self._update_online()

    # -- online / offline

    def _update_online(self) -> None:
        online = self.session.connected and self.format.ready
        if online and not self.buffer.online:
            self.buffer.online = True
            self._wake.set()
        elif not online and self.buffer.online:
            self._go_offline()

    def _go_offline(self) -> None:
        """Undelivered batches go back to the buffer, the live lane to disk; states reach the format."""
        self._generation += 1
        for state in self.buffer.connection_lost():
            self.format.device_state(state)  # not ready: the format only takes note

    # -- publishing

    def _publish_all(self, messages: list[OutMessage]) -> None:
        self._note_busy()
        for message in messages:
            self.session.publish(message)

    def _note_busy(self) -> None:
        """Start the clock of the stuck-session check when publishes begin to wait."""
        if not self.session.outstanding:
            assert self._loop is not None
            self._busy_since = self._loop.time()

    async def _publish_loop(self) -> None:
        buffer, session, wake = self.buffer, self.session, self._wake
        while True:
            wake.clear()
            if not buffer.online or not session.connected or session.outstanding >= self._window:
                await wake.wait()
                continue
            try:
                item = buffer.take(self._take)
                if item is None:
                    await wake.wait()
                    continue
                if isinstance(item, DeviceState):
                    self._publish_all(self.format.device_state(item))
                    continue
                self._send(item)
                self._publisher_latch.success()
            except Exception as exc:  # a bug must not end publishing for good: log, pause, go on
                self.stats.publisher_errors += 1
                self._publisher_latch.failure(f"{type(exc).__name__}: {exc}")
                log.debug("publisher error", exc_info=True)
                await asyncio.sleep(PUBLISH_ERROR_PAUSE)
                continue
            await asyncio.sleep(0)  # let the hand-off and the socket run between batches

    def _encode(self, batch: Batch) -> tuple[list[Reading], list[OutMessage]]:
        """The batch's publishable readings and their messages; what cannot be published is
        dropped alone (screened first; what the format still refuses, found one by one)."""
        where = batch.lane.name
        readings, dropped = self._screen.split(batch.readings)
        self.quarantine.drop(dropped, where)
        if self._removed_tags:
            readings = self._drop_removed(readings)
        try:
            return readings, self.format.encode(readings, batch.historical)
        except Exception as exc:
            log.debug("encoding a batch of %d readings failed (%s): one by one", len(readings), exc)
        kept: list[Reading] = []
        messages: list[OutMessage] = []
        for reading in readings:
            try:
                messages += self.format.encode([reading], batch.historical)
            except Exception as exc:
                self.quarantine.drop([(reading, f"the payload format refused it: {type(exc).__name__}: {exc}")],
                                     where)
            else:
                kept.append(reading)
        return kept, messages

    def _send(self, batch: Batch) -> None:
        readings, messages = self._encode(batch)
        if len(readings) == len(batch.readings):
            self.quarantine.published()
        if not messages:
            self._delivered(batch, self._generation, readings)
            return
        remaining = len(messages)
        generation = self._generation
        self._note_busy()

        def one_delivered() -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                self._delivered(batch, generation, readings)

        publish = self.session.publish
        for message in messages:
            if not publish(message, one_delivered):
                return  # the session just went away: the batch is rewound with the rest

    def _delivered(self, batch: Batch, generation: int, readings: list[Reading]) -> None:
        """The batch is delivered: `readings`, its publishable ones, reached the broker."""
        if generation != self._generation:
            return  # the session was lost meanwhile and the batch rewound: it goes out again
        self.buffer.ack(batch)
        self.stats.readings_out += len(readings)
        assert self._loop is not None
        now = self._loop.time()
        if batch.arrived:
            self.stats.latency_sum += now - batch.arrived
            self.stats.latency_count += 1
        if self.format.resend_window > 0:
            recent = self._recent
            recent.append((now, readings))
            self._recent_count += len(readings)
            cutoff = now - self.format.resend_window
            # Bounded in readings too: at 100k readings/s a minute's window would not fit the memory.
            while recent and (recent[0][0] < cutoff or self._recent_count > RESEND_MAX):
                self._recent_count -= len(recent.popleft()[1])
        if self.session.outstanding < self._window:
            self._wake.set()

    def _format_tick(self) -> None:
        """Publish what the format has to say on its own clock (see formats.py), and go online after."""
        if self._tick is None or not self.session.connected:
            return
        messages = self._tick()
        if messages:
            self._publish_all(messages)
            self._update_online()

    async def _housekeeping(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(COMMIT_INTERVAL)
            self._format_tick()
            self.buffer.retry()  # readings a failed spill left in memory, to the disk when it takes them
            ticks += 1
            fsync = ticks % round(SYNC_INTERVAL / COMMIT_INTERVAL) == 0
            if fsync:
                handles = self.buffer.sync_handles()
                if handles:
                    try:
                        await asyncio.to_thread(Buffer.fsync, handles)  # fsync blocks: keep the loop free
                    except OSError as exc:  # the data stays written; only a power loss could take it
                        log.warning("buffer: flushing %s to the device failed: %s", self.config.buffer.dir, exc)
            else:
                self.buffer.write_commits()
            if self.session.outstanding < self._window:
                self._wake.set()

    # -- writes

    def _route_write(self, request: WriteRequest) -> None:
        self.stats.writes += 1
        device = self._catalog.get(request.device)
        if device is None:
            self._refuse(request, f"unknown device {request.device!r}")
            return
        tag = next((t for t in device.tags if t.name == request.tag), None)
        if tag is None:
            self._refuse(request, f"device {request.device!r} has no tag {request.tag!r}")
            return
        if not tag.writable:
            self._refuse(request, f"tag {request.tag!r} of {request.device!r} is not writable")
            return
        key = (request.device, request.tag, request.id)
        if key in self._pending_writes:
            self._refuse(request, f"a write with id {request.id!r} to this tag is still pending")
            return
        margin = min(WRITE_ANSWER_MARGIN, self._write_timeout / 2)
        request = replace(request, deadline_ms=now_ms() + round((self._write_timeout - margin) * 1000))
        if not self.handoff.send_write(device.collector, request):
            self._refuse(request, f"collector {device.collector!r} is not connected")
            return
        assert self._loop is not None
        self._pending_writes[key] = self._loop.call_later(self._write_timeout, self._write_timed_out, request)

    def _write_timed_out(self, request: WriteRequest) -> None:
        if self._pending_writes.pop((request.device, request.tag, request.id), None) is not None:
            self._refuse(request, f"no answer from the collector within {self._write_timeout:g}s")

    def _refuse(self, request: WriteRequest, error: str) -> None:
        self.stats.writes_refused += 1
        log.info("write %s to %s/%s refused: %s", shorten(repr(request.id)), shorten(request.device),
                 shorten(request.tag), shorten(error, ERROR_ECHO))
        self._publish_all(
            self.format.write_result(WriteResult(request.id, request.device, request.tag, False, error))
        )

    # -- metrics and health

    def _register_metrics(self) -> None:
        m, buffer, stats, session, handoff = self.metrics, self.buffer, self.stats, self.session, self.handoff
        counters: list[tuple[str, str, Callable[[], float]]] = [
            ("forwarder_readings_in_total", "readings taken from collectors", lambda: handoff.readings_in),
            ("forwarder_readings_out_total", "readings delivered to the broker", lambda: stats.readings_out),
            ("forwarder_dropped_readings_total", "oldest readings dropped past buffer.max_bytes",
             lambda: buffer.stats.dropped),
            ("forwarder_buffer_write_errors_total", "writes to the disk buffer that failed (retries included)",
             lambda: buffer.stats.write_errors),
            ("forwarder_publish_latency_seconds_sum", "hand-off to broker acknowledgement, live batches",
             lambda: stats.latency_sum),
            ("forwarder_publish_latency_seconds_count", "live batches measured", lambda: stats.latency_count),
            ("forwarder_reconnects_total", "sessions after the first", lambda: max(0, session.connects - 1)),
            ("forwarder_catalog_reloads_total", "new catalogs taken in place (SIGHUP), the session kept",
             lambda: self.reloads),
            ("forwarder_writes_total", "writes asked from the broker", lambda: stats.writes),
            ("forwarder_writes_refused_total", "writes answered with an error", lambda: stats.writes_refused),
            ("forwarder_unpublishable_readings_total", "readings dropped as unpublishable (bad name, timestamp, "
             "quality or value; undecodable buffer records not included), kept in the quarantine",
             lambda: self.quarantine.readings),
            ("forwarder_messages_refused_total", "messages the MQTT client refused (bad topic, too large): dropped",
             lambda: session.refused),
            ("forwarder_publisher_errors_total", "unexpected errors in the publisher (it pauses and goes on)",
             lambda: stats.publisher_errors),
        ]
        for name, help_text, read in counters:
            m.counter(name, help_text, read)
        m.counter("forwarder_handoff_rejected_total", "readings dropped at the hand-off, per collector and reason "
                  "(not in that collector's catalog, bad name, timestamp, quality or value)",
                  handoff.check.rejected.samples)
        m.counter("forwarder_handoff_refused_connections_total", "hand-off connections refused or dropped "
                  "(another uid, too many, a protocol error, a collector name already connected)",
                  lambda: handoff.refused)
        m.gauge(
            "forwarder_buffered_readings", "readings waiting for the broker, per lane",
            lambda: [
                ({"lane": "live"}, buffer.live.pending), ({"lane": "backlog"}, buffer.backlog.pending),
                ({"lane": "unwritten"}, buffer.unwritten.pending),
            ],
        )
        m.gauge("forwarder_buffered_bytes", "bytes of the disk buffer", lambda: buffer.disk_bytes)
        m.gauge("forwarder_quarantined_segments",
                "buffer segments with undecodable records in {buffer.dir}/quarantine (never replayed)",
                lambda: self.quarantine.segments)
        m.gauge("forwarder_broker_connected", "1 while connected", lambda: int(session.connected))
        m.gauge("forwarder_broker_disconnected_seconds", "how long the broker session has been down (0 while up)",
                self._disconnected_for)
        m.gauge("forwarder_broker_unacked_seconds",
                "how long publishes have waited for the broker without any acknowledgement (0: none waiting)",
                self._unacked_for)
        m.counter("forwarder_broker_connect_attempts_total", "connection attempts (reconnects included)",
                  lambda: session.attempts)
        m.health_check(self._broker_health)
        m.health_check(self._handoff_health)
        m.degraded_check(self._degraded)
        m.degraded_check(self.quarantine.note)
        register = getattr(self.format, "register_metrics", None)
        if register is not None:  # a format's own counters (Sparkplug: births, refused commands)
            register(m)

    @property
    def stuck_after(self) -> float:
        """Seconds a connected session may leave publishes unacknowledged before it counts as stuck."""
        return max(2.0, STUCK_KEEPALIVES * self.config.mqtt.keepalive)

    @property
    def retry_stall_after(self) -> float:
        """Seconds without a connection attempt ending, while down, before retrying counts as stalled.

        One attempt lasts at most the TCP connect (paho: 5 s), a name lookup, and one keep-alive
        waiting for CONNACK; then the backoff waits at most BACKOFF_MAX."""
        return self.config.mqtt.keepalive + 2 * BACKOFF_MAX + 30.0

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _disconnected_for(self) -> float:
        return 0.0 if self.session.connected else round(self._now() - self._down_since, 3)

    def _unacked_for(self) -> float:
        session = self.session
        if not session.connected or not session.outstanding:
            return 0.0
        return round(self._now() - max(session.last_delivery, self._busy_since, self._up_since), 3)

    def _broker_health(self) -> str | None:
        session = self.session
        if not session.retrying:
            return "broker session stopped: the broker is no longer tried"
        if not session.connected:
            waited = self._now() - max(session.last_attempt, self._down_since)
            if waited > self.retry_stall_after:
                return f"broker reconnects stalled: no connection attempt has ended for {waited:.0f}s"
            return None  # an outage: see _degraded
        waited = self._unacked_for()
        if waited > self.stuck_after:
            return (
                f"broker session stuck: connected, but {session.outstanding} messages unacknowledged "
                f"for {waited:.0f}s (limit {self.stuck_after:g}s, {STUCK_KEEPALIVES} x mqtt.keepalive)"
            )
        return None

    def _degraded(self) -> str | None:
        """The broker is out of reach (or Sparkplug's primary host offline): readings wait in the buffer."""
        mqtt, session = self.config.mqtt, self.session
        buffered = f"{self.buffer.pending} readings buffered"
        if not session.connected:
            reason = session.last_error or "connection lost"
            return (
                f"broker {mqtt.host}:{mqtt.port} not connected for {self._disconnected_for():.0f}s "
                f"({reason}); {buffered}; reconnecting (attempt {session.attempts})"
            )
        if not self.format.ready:
            return f"connected, waiting for the format to be ready (Sparkplug: the primary host's STATE); {buffered}"
        return None

    def _handoff_health(self) -> str | None:
        if self._put_error is not None:
            return f"hand-off stuck: the buffer cannot store readings: {self._put_error}"
        if self.buffer.write_error is not None and self.buffer.unwritten.pending:
            return (
                f"buffer cannot be written: {self.buffer.write_error}; "
                f"{self.buffer.unwritten.pending} readings wait in memory"
            )
        if not self.handoff.serving:
            return "hand-off stuck: not listening"
        if not any(t.get_name() == "forwarder-publish" for t in self._tasks):
            return "publisher stopped"
        return None
