"""Reading one device over one connected Session: the subscription, the poll classes, the heartbeat.

Notifications are taken with asyncua's iterator API (one queue, no task per change); its
queue is sized by `subscriptions.queue_maxsize`, and an overflow is logged (asyncua's WARN
policy), never silently dropped. The notifications of one publish response reach the
hand-off as one batch. A node that cannot be resolved, read or monitored makes only its
own tag `bad` (with the StatusCode name as the reason); the others go on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from asyncua import ua

from collectors.core.errors import DeviceError
from collectors.core.model import Quality, Reading, now_ms
from collectors.core.report import ReportFilter
from collectors.opcua.codec import handoff_type, reading_of, status_name
from collectors.opcua.config import OpcuaDevice, OpcuaTag
from collectors.opcua.session import SESSION_LOST_CODES, MonitorSpec, Session
from collectors.opcua.subscriptions import poll_classes, queue_maxsize, subscribed_tags

log = logging.getLogger(__name__)

HEARTBEAT_TICK_MAX = 5.0

Publish = Callable[[list[Reading]], None]
Declare = Callable[[dict[str, str]], None]  # tag -> datatype name (codec.handoff_type)


@dataclass(slots=True)
class _Tag:
    config: OpcuaTag
    deadband: float  # deadband on the collector's side, in engineering units (0: every change)
    max_silence: float


class DeviceReader:
    """Reads one device until its session is lost; then `run()` raises DeviceError with the reason."""

    def __init__(
        self,
        device: OpcuaDevice,
        session: Session,
        report: ReportFilter,
        publish: Publish,
        declare: Declare | None = None,
    ) -> None:
        self.device = device
        self.session = session
        self._report = report
        self._publish = publish
        self._declare = declare
        self._tags = {
            t.name: _Tag(
                t, t.deadband if t.deadband_type == "absolute" else 0.0, t.max_silence or device.max_silence
            )
            for t in device.tags
        }
        self._last: dict[str, Reading] = {}  # last reading seen per tag, reported or not
        self._pending: list[Reading] = []
        self._flush_scheduled = False
        self._failure: Exception | None = None  # raised by a loop callback (_flush): ends the session
        self.nodes: dict[str, ua.NodeId] = {}  # tag -> NodeId resolved on this connection, for writes

    # ------------------------------------------------------------------ reporting

    def offer(self, readings: list[Reading]) -> None:
        """Readings through the report filter (deadband, heartbeat, quality change), then to the forwarder."""
        now = time.monotonic()
        accepted = []
        for reading in readings:
            tag = self._tags[reading.tag]
            last = self._last.get(reading.tag)
            if reading.value is None and reading.quality == Quality.BAD:
                # Part 4, 7.7.1: a Bad DataValue carries no value; ours carries the last one (SPEC)
                reading = reading._replace(value=self._report.last_value(self.device.name, reading.tag))
            # The initial Read and the subscription's first notification carry the same sample.
            if (
                last is not None
                and last.ts_ms == reading.ts_ms
                and last.value == reading.value
                and last.quality == reading.quality
            ):
                continue
            self._last[reading.tag] = reading
            if self._report.accept(reading, tag.deadband, tag.max_silence, now):
                accepted.append(reading)
        if accepted:
            self._publish(accepted)

    def _offer_soon(self, reading: Reading) -> None:
        self._pending.append(reading)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        try:
            self.offer(pending)
        except Exception as exc:  # in a loop callback it would reach only asyncio's handler: end the session
            if self._failure is None:
                self._failure = exc
            self.session.lost.set()

    def _bad(self, tag: str, reason: str) -> Reading:
        last = self._report.last_value(self.device.name, tag)
        return Reading(self.device.name, tag, last, now_ms(), Quality.BAD, reason)

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        session = self.session
        resolved = self._resolve()
        if resolved and self._declare is not None:
            await self._read_datatypes(resolved)
        # Current values first, after every (re)connect, in one Read call.
        if resolved:
            self.offer(await session.read_readings(self.device.name, list(resolved.items())))
        subscription = await self._subscribe(resolved)
        tasks = [asyncio.create_task(self._heartbeat(), name=f"opcua-{self.device.name}-heartbeat")]
        if subscription is not None:
            sub, by_handle = subscription
            tasks.append(
                asyncio.create_task(self._consume(sub, by_handle), name=f"opcua-{self.device.name}-sub")
            )
        for interval, tags in poll_classes(self.device).items():
            polled = [(t.name, resolved[t.name]) for t in tags if t.name in resolved]
            if polled:
                tasks.append(
                    asyncio.create_task(self._poll(interval, polled), name=f"opcua-{self.device.name}-poll")
                )
        lost = asyncio.create_task(session.lost.wait(), name=f"opcua-{self.device.name}-watch")
        try:
            done, _ = await asyncio.wait([*tasks, lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*tasks, lost):
                task.cancel()
            await asyncio.gather(*tasks, lost, return_exceptions=True)
        for task in done:
            if task is not lost and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if self._failure is not None:
            raise self._failure
        raise DeviceError(self.device.name, session.lost_reason)

    async def _read_datatypes(self, resolved: dict[str, ua.NodeId]) -> None:
        """Each node's DataType and ValueRank, declared to the forwarder before the first readings
        (a Sparkplug birth then carries the node's own type: Int16, not the Int64 an int suggests)."""
        assert self._declare is not None
        try:
            found = await self.session.datatypes(list(resolved.values()))
        except ua.UaStatusCodeError as exc:
            if exc.code in SESSION_LOST_CODES:
                raise
            # the values still tell their datatypes; nothing else depends on this
            log.warning("%s: the server refused to tell the DataTypes: %s", self.device.name, status_name(exc.code))
            return
        types = {}
        for name, known in zip(resolved, found, strict=True):
            declared = handoff_type(*known) if known is not None else None
            if declared is not None:
                types[name] = declared
        if types:
            self._declare(types)

    def _resolve(self) -> dict[str, ua.NodeId]:
        """NodeIds for this connection (`nsu=` against the server's current namespace array)."""
        resolved: dict[str, ua.NodeId] = {}
        bad: list[Reading] = []
        for name, tag in self._tags.items():
            try:
                resolved[name] = self.session.resolve(tag.config.node)
            except DeviceError as exc:
                bad.append(self._bad(name, exc.reason))
                log.warning("%s/%s: %s", self.device.name, name, exc)
            except (ValueError, ua.UaError) as exc:
                bad.append(self._bad(name, "BadNodeIdInvalid"))
                log.warning("%s/%s: node %r: %s", self.device.name, name, tag.config.node, exc)
        self.nodes = resolved
        if bad:
            self.offer(bad)
        return resolved

    async def _subscribe(self, resolved: dict[str, ua.NodeId]) -> tuple[object, dict[int, str]] | None:
        device, session = self.device, self.session
        names = [t.name for t in subscribed_tags(device) if t.name in resolved]
        if not names:
            return None
        specs = []
        server_filters = session.deadband_filter_usable
        if not server_filters and any(self._tags[n].config.deadband > 0 for n in names):
            log.info(
                "%s: the server (%s) applies a deadband against the previous sample, not the last value "
                "reported, and would never report a slow ramp: the collector applies the deadbands itself",
                device.name,
                session.product_uri,
            )
        for name in names:
            tag = self._tags[name].config
            deadband = tag.deadband
            if tag.deadband_type == "percent" and deadband > 0:
                rng = await session.eu_range(resolved[name])
                if rng is None:
                    log.warning(
                        "%s/%s: a percent deadband needs an EURange, which this node has not: "
                        "reporting every change",
                        device.name,
                        name,
                    )
                    deadband = 0.0
                else:  # filter on our side too: a server may accept Percent and not apply it
                    self._tags[name].deadband = abs(rng[1] - rng[0]) * deadband / 100
            specs.append(
                MonitorSpec(
                    resolved[name],
                    device.subscription.sampling_interval,
                    device.subscription.queue_size,
                    deadband if server_filters else 0.0,
                    tag.deadband_type,
                )
            )
        sub, results = await session.subscribe(
            device.subscription.publishing_interval, specs, queue_maxsize(device)
        )
        by_handle: dict[int, str] = {}
        refused: list[Reading] = []
        for name, result in zip(names, results, strict=True):
            if isinstance(result, ua.StatusCode):
                reason = status_name(result)
                last = self._last.get(name)
                if last is None or last.reason != reason:  # the initial Read may have said so already
                    refused.append(self._bad(name, reason))
                log.warning(
                    "%s/%s: the server refused to monitor %s: %s",
                    device.name,
                    name,
                    self._tags[name].config.node,
                    reason,
                )
            elif result < 0:  # created without its deadband filter: the collector applies the deadband
                by_handle[-result] = name
                log.info(
                    "%s/%s: the server refused the deadband filter; the collector applies it",
                    device.name,
                    name,
                )
            else:
                by_handle[result] = name
        if refused:
            self.offer(refused)
        return sub, by_handle

    async def _consume(self, sub: object, by_handle: dict[int, str]) -> None:
        device = self.device.name
        offer_soon = self._offer_soon

        def on_change(handle: int, data_value: ua.DataValue) -> None:
            name = by_handle.get(handle)
            if name is not None:
                offer_soon(reading_of(device, name, data_value))

        await self.session.consume(sub, on_change)  # type: ignore[arg-type]
        self.session.lost.set()  # the subscription ended: the session is no use any more

    async def _poll(self, interval: float, tags: list[tuple[str, ua.NodeId]]) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if next_at < loop.time() - interval:  # fell behind a slow server: skip cycles, do not burst
                next_at = loop.time()
            try:
                self.offer(await self.session.read_readings(self.device.name, tags))
            except ua.UaStatusCodeError as exc:
                if exc.code in SESSION_LOST_CODES:
                    raise
                # this Read refused as a whole: these tags bad, the rest go on
                self.offer([self._bad(name, status_name(exc.code)) for name, _ in tags])

    async def _heartbeat(self) -> None:
        tick = min(HEARTBEAT_TICK_MAX, max(0.05, min(t.max_silence for t in self._tags.values()) / 4))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            stamp = now_ms()
            due = []
            for name, last in self._last.items():
                tag = self._tags[name]
                beat = last._replace(ts_ms=stamp)
                # an infinite deadband: only the silence can make the filter report it
                if self._report.accept(beat, math.inf, tag.max_silence, now):
                    due.append(beat)
            if due:
                self._publish(due)
