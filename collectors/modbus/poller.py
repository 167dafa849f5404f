"""Polls one device: one task per poll class, on a monotonic clock, through the device's link.

Each tick reads the class's blocks, decodes them in one go, and reports what the
`ReportFilter` lets through (deadband, heartbeat, quality changes). A tick that overruns
the next one skips the missed ticks instead of bursting to catch up: a slow device must
not be asked twice as often because it was slow.

Failures, as a plant engineer wants to see them:
- the device does not answer (timeout, connection refused or lost, a gateway exception):
  it goes offline. Every tag gets one `bad` reading with its last value and the reason, and
  the forwarder a `DeviceState(online=False)`; while it stays silent nothing more is
  reported. Its first answer brings `DeviceState(online=True)` and `good` readings again.
- the device answers a block with an exception (illegal data address, ...): it is online,
  but that block's tags get one `bad` reading each until the block reads again.
- anything else going wrong in this device's work (an exception nobody expected, in the
  link, the decoding or the delivery): the device goes offline as above with the reason
  `unexpected error (<type>)`, and its polling waits (capped backoff) before trying again.
  The collector and every other device go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from collectors.core.errors import DeviceError
from collectors.core.model import DeviceState, Quality, Reading, Value, now_ms
from collectors.core.report import ReportFilter
from collectors.core.service import ErrorLatch
from collectors.modbus.codec import BlockDecoder
from collectors.modbus.config import ModbusDevice, ModbusTag
from collectors.modbus.link import Backoff, Link
from collectors.modbus.planner import Block, PollClass, plan_device

log = logging.getLogger(__name__)

Publish = Callable[[list[Reading]], None]
PublishState = Callable[[DeviceState], None]

# Answers that say the device itself is unreachable, though something answered:
# a gateway in front of it (Modbus application protocol, exceptions 10 and 11).
_UNREACHABLE_EXCEPTIONS = ("exception 10:", "exception 11:")


def device_unreachable(reason: str) -> bool:
    """True when `reason` means the device did not answer at all (vs. refused one request)."""
    if reason.startswith(_UNREACHABLE_EXCEPTIONS):
        return True
    return not (reason.startswith("exception ") or reason in ("short answer", "long answer"))


@dataclass(slots=True)
class DeviceStats:
    polls_ok: int = 0
    polls_failed: int = 0
    readings: int = 0
    last_success: float | None = None  # monotonic seconds
    online: bool | None = None


class _PlannedBlock:
    """A block with what its tick needs precompiled: the decoder and each tag's report rules."""

    __slots__ = ("block", "decoder", "latch", "rules")

    def __init__(self, block: Block, device: ModbusDevice) -> None:
        self.block = block
        self.decoder = BlockDecoder(block.table, block.count, block.tags, device)
        # (tag name, deadband, max_silence) in block order
        self.rules = [
            (member.tag.name, member.tag.deadband, member.tag.max_silence or device.max_silence)
            for member in block.tags
        ]
        self.latch = ErrorLatch(log, f"{device.name}: {block.table.value} {block.start}..{block.end}")


class DevicePoller:
    """One device's polling: an async context manager whose `run()` polls until cancelled."""

    def __init__(
        self,
        device: ModbusDevice,
        link: Link,
        report: ReportFilter,
        publish: Publish,
        publish_state: PublishState,
        *,
        fault_backoff_first: float = 0.25,
        fault_backoff_max: float = 30.0,
    ) -> None:
        self.device = device
        self.link = link
        self.classes: list[PollClass] = plan_device(device)
        self.stats = DeviceStats()
        self._report = report
        self._publish = publish
        self._publish_state = publish_state
        self._blocks = [[_PlannedBlock(block, device) for block in pc.blocks] for pc in self.classes]
        self._tags: dict[str, ModbusTag] = {tag.name: tag for tag in device.tags}
        self._bad: set[str] = set()  # tags whose last report was `bad`
        self._latch = ErrorLatch(log, f"{device.name} ({link.key}, unit {device.unit})")
        self._fault_backoff = Backoff(fault_backoff_first, fault_backoff_max)
        self._stop_at: float | None = None  # stop_polling: no poll whose tick is later starts
        self._in_flight = 0  # polls under way (one per poll class at most)
        self._next: dict[int, float] = {}  # poll class -> its next tick (loop time)
        self._moved = asyncio.Event()  # a poll landed or a class chose its next tick

    def stop_polling(self, imminent: float = 0.0) -> None:
        """Start no poll whose tick is more than `imminent` seconds away; `idle()` returns once
        the polls under way and those due sooner have landed (their readings queued for the
        forwarder). A shutdown then cancels `run()` without cutting a request the device has
        already answered, so a value it counted is not lost; and a handover's new collector,
        which polls the moment this one has left, follows this one's last poll by less than
        a period when `imminent` covers the time the handover takes."""
        self._stop_at = asyncio.get_running_loop().time() + imminent
        self._moved.set()

    async def idle(self) -> None:
        while not self._stopped():
            self._moved.clear()
            await self._moved.wait()

    def _stopped(self) -> bool:
        stop_at = self._stop_at
        return (stop_at is not None and not self._in_flight
                and all(tick > stop_at for tick in self._next.values()))

    def _landed(self) -> None:
        self._in_flight -= 1
        self._moved.set()

    async def run(self) -> None:
        """Poll every class on its own schedule until cancelled."""
        async with asyncio.TaskGroup() as group:
            for index, (poll_class, blocks) in enumerate(zip(self.classes, self._blocks, strict=True)):
                group.create_task(
                    self._run_class(index, poll_class.interval, blocks),
                    name=f"poll-{self.device.name}-{poll_class.interval:g}s",
                )

    async def _run_class(self, index: int, interval: float, blocks: list[_PlannedBlock]) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        next_tick = loop.time()
        while True:
            if self._stop_at is not None and next_tick > self._stop_at:
                self._next[index] = next_tick
                self._moved.set()
                await asyncio.Future()  # polls no more; the shutdown's cancel ends it
            self._in_flight += 1
            try:
                await self.poll_once(blocks)
            except Exception as exc:
                self._fault(exc)
                self._landed()
                next_tick = loop.time() + self._fault_backoff.next_delay()
                self._next[index] = next_tick
                await asyncio.sleep(next_tick - loop.time())
                continue
            except BaseException:
                self._landed()
                raise
            self._landed()
            self._fault_backoff.reset()
            if task is not None and task.cancelling():
                # Python 3.11's wait_for (inside pymodbus) returns an answer that arrived with
                # a cancel and drops the cancel (cpython gh-86296): honour it, or shutdown hangs.
                raise asyncio.CancelledError
            next_tick += interval
            now = loop.time()
            if next_tick <= now:  # overran: skip the ticks we missed, keep the grid
                next_tick += ((now - next_tick) // interval + 1) * interval
            self._next[index] = next_tick
            self._moved.set()
            await asyncio.sleep(next_tick - now)

    async def poll_once(self, blocks: list[_PlannedBlock]) -> None:
        """One tick of one poll class: read each block, report what changed."""
        device = self.device
        for planned in blocks:
            block = planned.block
            try:
                words = await self.link.read(device, block.table, block.start, block.count)
                ts_ms = now_ms()  # the time of the poll response (docs/config.md, docs/mqtt.md)
                values = planned.decoder.decode(words)
            except DeviceError as exc:
                self.stats.polls_failed += 1
                if device_unreachable(exc.reason):
                    self._offline(exc)
                    return  # the rest of this tick would only wait for the same silence
                self._block_failed(planned, exc)
                continue
            self.stats.polls_ok += 1
            self.stats.last_success = time.monotonic()
            if self.stats.online is not True:
                self._online()
            if planned.latch.failing:
                planned.latch.success()
            self._deliver(planned.rules, values, ts_ms)

    def deliver_value(self, tag: ModbusTag, value: Value, ts_ms: int) -> None:
        """Report one tag's value now, whatever the filter says (a write's read-back)."""
        self._bad.discard(tag.name)
        reading = Reading(self.device.name, tag.name, value, ts_ms, Quality.GOOD)
        self._report.accept(reading, 0.0, 0.0, time.monotonic())
        self.stats.readings += 1
        self._publish([reading])

    def _deliver(self, rules: list[tuple[str, float, float]], values: list[Value], ts_ms: int) -> None:
        name = self.device.name
        accept = self._report.accept
        bad = self._bad
        now = time.monotonic()
        new, good = tuple.__new__, Quality.GOOD
        out = []
        for (tag, deadband, max_silence), value in zip(rules, values, strict=True):
            # tuple.__new__ skips NamedTuple's argument handling: the hot path builds ~10^5 a second
            reading = new(Reading, (name, tag, value, ts_ms, good, None))
            if accept(reading, deadband, max_silence, now):
                out.append(reading)
            if bad:
                bad.discard(tag)
        if out:
            self.stats.readings += len(out)
            self._publish(out)

    def _bad_readings(self, tags: list[str], reason: str) -> None:
        fresh = [tag for tag in tags if tag not in self._bad]
        if not fresh:
            return
        ts_ms, now = now_ms(), time.monotonic()
        last = self._report.last_value
        readings = [Reading(self.device.name, tag, last(self.device.name, tag), ts_ms, Quality.BAD, reason)
                    for tag in fresh]
        for reading in readings:  # the filter must know: a later good reading is a change
            self._report.accept(reading, 0.0, 0.0, now)
        self._bad.update(fresh)
        self.stats.readings += len(readings)
        self._publish(readings)

    def _offline(self, exc: DeviceError) -> None:
        self._latch.failure(exc.reason if not exc.detail else f"{exc.reason} ({exc.detail})")
        if self.stats.online is False:
            return
        self.stats.online = False
        self._bad_readings(list(self._tags), exc.reason)
        self._publish_state(DeviceState(self.device.name, False, exc.reason))

    def _online(self) -> None:
        self._latch.success()
        if self.stats.online is None:
            log.info("%s: online (%s, unit %d)", self.device.name, self.link.key, self.device.unit)
        self.stats.online = True
        self._publish_state(DeviceState(self.device.name, True))

    def _fault(self, exc: Exception) -> None:
        """An exception nobody expected in this device's work: the device goes bad, said once."""
        log.debug("%s: unexpected error", self.device.name, exc_info=exc)
        self.stats.polls_failed += 1
        error = DeviceError(self.device.name, f"unexpected error ({type(exc).__name__})", str(exc) or None)
        try:
            self._offline(error)
        except Exception as again:
            log.debug("%s: cannot report the device bad: %r", self.device.name, again)

    def _block_failed(self, planned: _PlannedBlock, exc: DeviceError) -> None:
        planned.latch.failure(exc.reason if not exc.detail else f"{exc.reason} ({exc.detail})")
        self._bad_readings([member.tag.name for member in planned.block.tags], exc.reason)
