"""The OPC UA collector: one self-healing session per device, readings to the forwarder, writes back.

Each device runs a loop: connect a Session, read it with a DeviceReader until the session is
lost, report every tag `bad` (with its last value) and the device offline, wait with capped
exponential backoff and jitter, connect again - re-creating session and subscriptions and
re-reading current values. Nothing but cancellation ends the loop: a server restart, a network
cut, refused credentials or a bad node never need a restart of the collector.

Devices are isolated: any exception in one device's work (session, subscription, poll, decode,
reporting), of whatever type, ends only that device's session. Its tags go `bad` with the reason
(`internal error: TypeError` for one nobody expected), the failure is logged once at ERROR (with
the traceback when unexpected) and at DEBUG while it repeats, and the device backs off before it
tries again; the other devices go on. Only a session that stayed up `Backoff.stable` seconds
resets the backoff and ends the episode ("recovered" at INFO), so a device that fails right after
every connect does not flood the log or its server.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from asyncua import ua

from collectors.core.config import read_secret
from collectors.core.errors import DeviceError, WriteError
from collectors.core.metrics import Sample
from collectors.core.model import DeviceState, DeviceTypes, Reading, WriteRequest, WriteResult, now_ms
from collectors.core.report import bad_readings
from collectors.core.service import ErrorLatch
from collectors.core.shell import CollectorShell
from collectors.core.shell import serve as shell_serve
from collectors.core.writes import Busy, Expired, PendingWrites, check_deadline, check_limits
from collectors.opcua.codec import status_name, to_variant
from collectors.opcua.config import OpcuaCollectorConfig, OpcuaDevice
from collectors.opcua.reader import DeviceReader
from collectors.opcua.security import SecurityError
from collectors.opcua.session import Session, describe_error

log = logging.getLogger(__name__)

RECONNECT_MIN = 0.25
# Unreachable servers cost one refused TCP connect per attempt; a short cap keeps recovery
# after a server restart within ~2 s.
RECONNECT_MAX = 2.0
# Refused credentials or an untrusted certificate will not heal by themselves quickly.
RECONNECT_MAX_SECURITY = 30.0
# An unexpected error (a bug, or a server answer nobody foresaw) will not heal in milliseconds,
# but may with the next session: retried at most this far apart, logged once.
RECONNECT_MAX_INTERNAL = 10.0
# A session that stayed up this long was a success: the backoff starts again from the minimum.
STABLE_AFTER = 10.0
# A collector none of whose devices has had a session for this long is unhealthy (/healthz).
DEVICE_GRACE = 60.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """How one device reconnects (seconds): doubling from `min` (with jitter) up to the cap of
    what ended the last session; `stable`: a session up this long resets it."""

    min: float = RECONNECT_MIN
    max: float = RECONNECT_MAX
    max_refused: float = RECONNECT_MAX_SECURITY
    max_internal: float = RECONNECT_MAX_INTERNAL
    stable: float = STABLE_AFTER


class DeviceSession:
    """One device's session, kept up: connect a Session, read, and after it ends connect again
    (see the module docstring)."""

    def __init__(self, device: OpcuaDevice, collector: OpcuaCollector, backoff: Backoff | None = None) -> None:
        self.device = device
        self._collector = collector
        self._backoff = backoff or Backoff()
        self.reader: DeviceReader | None = None
        self.online = False
        self.reason: str | None = "not connected yet"
        self._offline_reported = False
        self.failures = 0
        self._failing_for: str | None = None  # the reason of the current episode of failures
        self._latch = ErrorLatch(log, f"opcua device {device.name} ({device.endpoint})")
        self.tags = {t.name: t for t in device.tags}

    async def run(self) -> None:
        """Sessions until cancelled (cancellation is never caught here)."""
        backoff = self._backoff
        delay = backoff.min
        while True:
            try:
                cap, stable = await self._session()
            except Exception as exc:  # reporting the failure failed: still this device's alone
                cap, stable = backoff.max_internal, False
                self._latch.failure(_internal_detail(exc))
            if stable:
                delay = backoff.min
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, cap)

    async def _session(self) -> tuple[float, bool]:
        """One session, from connect until it ends; reports why it ended. Returns the backoff cap
        that fits the cause and whether the session stayed up `stable` seconds."""
        backoff = self._backoff
        loop = asyncio.get_running_loop()
        started: float | None = None
        stable_timer: asyncio.TimerHandle | None = None
        cap = backoff.max
        try:
            password = read_secret(self.device.security.password, self.device.security.password_file)
            async with Session(self.device, self._collector.settings.state_dir, password) as session:
                self.reader = DeviceReader(
                    self.device, session, self._collector.report, self._collector.publish, self._declare
                )
                self._online()
                started = loop.time()
                stable_timer = loop.call_later(backoff.stable, self._stable)
                await self.reader.run()
        except SecurityError as exc:
            cap = backoff.max_refused
            self._offline(exc.reason, str(exc), refused=True)
        except DeviceError as exc:
            self._offline(exc.reason, str(exc))
        except (OSError, TimeoutError, ConnectionError, ua.UaError) as exc:
            reason = describe_error(exc)
            self._offline(reason, reason)
        except Exception as exc:  # whatever its type, only this device's session ends
            cap = backoff.max_internal
            self._offline(f"internal error: {type(exc).__name__}", _internal_detail(exc), internal=True)
        finally:
            self.reader = None
            if stable_timer is not None:
                stable_timer.cancel()
        return cap, started is not None and loop.time() - started >= backoff.stable

    def _stable(self) -> None:
        """The session has stayed up: the episode of failures is over."""
        self._failing_for = None
        self._latch.success()

    def _declare(self, types: dict[str, str]) -> None:
        self._collector.handoff.device_types(DeviceTypes(self.device.name, types))

    def _online(self) -> None:
        # The error episode ends once the session has stayed up (Backoff.stable), not at connect:
        # a device that fails right after each connect logs its error once.
        if not self.online:
            log.info("%s: connected to %s", self.device.name, self.device.endpoint)
        self.online, self.reason, self._offline_reported = True, None, False
        self._collector.state(DeviceState(self.device.name, True))

    def _offline(self, reason: str, detail: str, refused: bool = False, internal: bool = False) -> None:
        """`refused`: the server refused our credentials or we refused its certificate; `internal`:
        an error nobody expected. Both need a person, so each is logged at ERROR and reported with
        its reason even when the device was already offline for another reason (a server restarted
        with a new key first drops the session, BadShutdown, then presents the new certificate)."""
        first = self._latch.failure(detail)
        newly_refused = (refused or internal) and reason != self._failing_for
        self._failing_for = reason
        if newly_refused and not first:
            log.error("opcua device %s (%s): %s", self.device.name, self.device.endpoint, detail)
        self.failures += 1
        was_online = self.online
        self.online, self.reason = False, reason
        if was_online or not self._offline_reported or newly_refused:
            # Each tag once `bad` with its last value (SPEC: "when a device stops answering")
            self._offline_reported = True
            readings = bad_readings(
                self.device.name, list(self.tags), self._collector.report, now_ms(), reason
            )
            self._collector.publish_unfiltered(readings)
            self._collector.state(DeviceState(self.device.name, False, reason))

    async def write(self, request: WriteRequest) -> WriteResult:
        def refused(error: str) -> WriteResult:
            return WriteResult(request.id, request.device, request.tag, False, error)

        tag = self.tags.get(request.tag)
        if tag is None:
            return refused(f"device {request.device} has no tag {request.tag!r}")
        if not tag.writable:
            return refused(f"tag {request.tag} of {request.device} is not writable")
        reader = self.reader
        node = reader.nodes.get(request.tag) if reader is not None else None
        if reader is None or node is None:
            return refused(
                f"device {request.device} is offline ({self.reason})"
                if reader is None
                else f"node {tag.node} is not on the server"
            )
        session = reader.session
        try:
            check_limits(tag.name, request.value, tag.write_min, tag.write_max)
            check_deadline(request)
            with self._collector.pending.admit(self.device.name, request.device, request.tag):
                variant_type, array = await asyncio.wait_for(session.variant_type(node), self.device.timeout)
                variant = to_variant(request.value, variant_type, array)
                check_deadline(request, self.device.timeout)  # answered before the requester gives up
                status = await asyncio.wait_for(session.write(node, variant), self.device.timeout)
        except (Busy, Expired) as exc:
            self._collector.writes["busy" if isinstance(exc, Busy) else "expired"] += 1
            return refused(str(exc))
        except WriteError as exc:
            return refused(str(exc))
        except ua.UaStatusCodeError as exc:
            return refused(status_name(exc.code))
        except (OSError, TimeoutError, ConnectionError, ua.UaError) as exc:
            return refused(f"write failed: {describe_error(exc)}")
        if not status.is_good():
            return refused(status_name(status))
        log.info("%s/%s: wrote %r", request.device, request.tag, request.value)
        return WriteResult(request.id, request.device, request.tag, True)


def _internal_detail(exc: BaseException) -> str:
    """An unexpected error as the one ERROR line of its episode: its repr and where it came from."""
    where = "".join(traceback.format_exception(exc)).rstrip()
    return f"internal error {exc!r}\n{where}"


class OpcuaCollector(CollectorShell[OpcuaCollectorConfig]):
    """Runs one collector config until cancelled; `async with` it, then `await run()`."""

    def __init__(
        self,
        config: OpcuaCollectorConfig,
        *,
        handoff_grace: float = 30.0,
        drain_timeout: float = 2.0,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(config, on_write=self.write, handoff_grace=handoff_grace, drain_timeout=drain_timeout)
        self.settings = config
        self._backoff = backoff
        self.sessions = {d.name: DeviceSession(d, self, backoff) for d in config.devices}
        self._session_tasks: dict[str, asyncio.Task[None]] = {}
        self.readings: dict[str, int] = {d.name: 0 for d in config.devices}
        self.writes = {"ok": 0, "failed": 0, "busy": 0, "expired": 0}  # failed: the other refusals
        self.pending = PendingWrites()  # per device (its session) and per tag
        self._last_online = self._started
        self._register_metrics()

    def _started_line(self) -> str:
        return f"opcua collector: {len(self.sessions)} devices, hand-off {self.config.handoff.socket}"

    def _device_tasks(self, group: asyncio.TaskGroup) -> None:
        for session in self.sessions.values():
            self._start(group, session)

    def _start(self, group: asyncio.TaskGroup, session: DeviceSession) -> None:
        name = session.device.name
        self._session_tasks[name] = group.create_task(session.run(), name=f"opcua-device-{name}")

    # ------------------------------------------------------------------ a new slice in place

    live_reload = True

    async def _apply(self, config: OpcuaCollectorConfig) -> None:
        """Touch only the devices whose config changed: a removed or edited device's session (and
        its subscription) ends, an added or edited one connects and subscribes anew; the other
        devices keep their sessions and subscriptions. Settings outside `devices` need a restart
        (the supervisor plans one)."""
        assert self._group is not None, "run() applies reloads"
        new = {d.name: d for d in config.devices}
        stop = [name for name, session in self.sessions.items() if new.get(name) != session.device]
        tasks = [self._session_tasks.pop(name) for name in stop if name in self._session_tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # never raises: our own cancellation still reaches us
        for name in stop:
            del self.sessions[name]
            if name not in new:
                del self.readings[name]
        started = [DeviceSession(d, self, self._backoff) for d in config.devices if d.name not in self.sessions]
        sessions = {**self.sessions, **{session.device.name: session for session in started}}
        self.sessions.clear()  # in place: the metrics read this dict
        self.sessions.update((d.name, sessions[d.name]) for d in config.devices)
        self.settings = config
        for session in started:
            self.readings.setdefault(session.device.name, 0)
            self._start(self._group, session)
        log.info("opcua collector: new config applied in place (%d devices started, %d stopped, %d untouched)",
                 len(started), len(stop), len(self.sessions) - len(started))

    def _observe(self, now: float) -> None:
        if any(session.online for session in self.sessions.values()):
            self._last_online = now

    # ------------------------------------------------------------------ to the forwarder

    def publish(self, readings: list[Reading]) -> None:
        """Readings that passed the report filter (each batch is one device's)."""
        if readings:
            self.readings[readings[0].device] += len(readings)
            self.handoff.publish(readings)

    def publish_unfiltered(self, readings: list[Reading]) -> None:
        """Readings reported whatever the filter says (bad on device loss), remembered by it."""
        now = time.monotonic()
        for reading in readings:
            self.report.accept(reading, 0.0, 0.0, now)
        self.publish(readings)

    def state(self, state: DeviceState) -> None:
        self.handoff.device_state(state)

    async def write(self, request: WriteRequest) -> WriteResult:
        session = self.sessions.get(request.device)
        if session is None:
            result = WriteResult(
                request.id,
                request.device,
                request.tag,
                False,
                f"device {request.device} is not served by the opcua collector",
            )
        else:
            result = await session.write(request)
        if result.ok:
            self.writes["ok"] += 1
        elif not result.error or not result.error.startswith(("busy:", "expired:")):  # counted by the session
            self.writes["failed"] += 1
        return result

    # ------------------------------------------------------------------ metrics and health

    def _register_metrics(self) -> None:
        m = self.metrics
        sessions = self.sessions

        def per_device(read: Callable[[DeviceSession], float]) -> Callable[[], list[Sample]]:
            return lambda: [({"device": name}, float(read(session))) for name, session in sessions.items()]

        m.counter(
            "opcua_readings_total",
            "readings reported per device",
            lambda: [({"device": n}, float(c)) for n, c in self.readings.items()],
        )
        m.gauge(
            "opcua_device_online", "1 while the device's session is up", per_device(lambda session: session.online)
        )
        m.counter(
            "opcua_reconnects_total",
            "sessions lost or refused per device",
            per_device(lambda session: session.failures),
        )
        m.counter(
            "opcua_writes_total",
            "writes served, by result",
            lambda: [({"result": k}, float(v)) for k, v in self.writes.items()],
        )
        self._register_handoff_metrics()
        m.health_check(self._device_problem)

    def _device_problem(self) -> str | None:
        if not self.active or any(session.online for session in self.sessions.values()):
            return None  # a standby opens no session yet
        quiet = time.monotonic() - max(self._last_online, self._started)
        if quiet < DEVICE_GRACE:
            return None
        reasons = "; ".join(f"{n}: {session.reason}" for n, session in self.sessions.items())
        return f"no OPC UA session for {quiet:.0f}s ({reasons})"


async def serve(config: OpcuaCollectorConfig) -> None:
    """Run the collector until cancelled (SIGTERM via run_service)."""
    await shell_serve(OpcuaCollector(config))
