"""The OPC UA collector: one self-healing link per device, readings to the forwarder, writes back.

Each device runs a loop: connect a Session, read it with a DeviceReader until the session is
lost, report every tag `bad` (with its last value) and the device offline, wait with capped
exponential backoff and jitter, connect again - re-creating session and subscriptions and
re-reading current values. Nothing but cancellation ends the loop: a server restart, a network
cut, refused credentials or a bad node never need a restart of the collector.
"""

from __future__ import annotations

import asyncio
import logging
import random
from contextlib import suppress

from asyncua import ua

from collectors.core.config import read_secret
from collectors.core.errors import DeviceError, WriteError
from collectors.core.handoff import HandoffClient
from collectors.core.metrics import Metrics
from collectors.core.model import DeviceState, Reading, WriteRequest, WriteResult, now_ms
from collectors.core.report import ReportFilter, bad_readings
from collectors.core.service import ErrorLatch
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


class DeviceLink:
    """One device's connection loop (see the module docstring)."""

    def __init__(self, device: OpcuaDevice, collector: OpcuaCollector) -> None:
        self.device = device
        self._collector = collector
        self.reader: DeviceReader | None = None
        self.online = False
        self.reason: str | None = "not connected yet"
        self._offline_reported = False
        self._latch = ErrorLatch(log, f"opcua device {device.name} ({device.endpoint})")
        self.tags = {t.name: t for t in device.tags}

    async def run(self) -> None:
        delay = RECONNECT_MIN
        while True:
            cap = RECONNECT_MAX
            try:
                password = read_secret(self.device.security.password, self.device.security.password_file)
                async with Session(self.device, self._collector.settings.state_dir, password) as session:
                    self.reader = DeviceReader(
                        self.device, session, self._collector.report, self._collector.publish
                    )
                    self._online()
                    delay = RECONNECT_MIN
                    await self.reader.run()
            except SecurityError as exc:
                cap = RECONNECT_MAX_SECURITY
                self._offline(exc.reason, str(exc))
            except DeviceError as exc:
                self._offline(exc.reason, str(exc))
            except (OSError, TimeoutError, ConnectionError, ua.UaError) as exc:
                self._offline(describe_error(exc), f"{type(exc).__name__}: {describe_error(exc)}")
            except Exception as exc:  # a bug must not end the device's loop: log it fully and retry
                log.exception("%s: unexpected error", self.device.name)
                self._offline("internal error", repr(exc))
            finally:
                self.reader = None
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, cap)

    def _online(self) -> None:
        self._latch.success()
        if not self.online:
            log.info("%s: connected to %s", self.device.name, self.device.endpoint)
        self.online, self.reason, self._offline_reported = True, None, False
        self._collector.state(DeviceState(self.device.name, True))

    def _offline(self, reason: str, detail: str) -> None:
        self._latch.failure(detail)
        was_online = self.online
        self.online, self.reason = False, reason
        if was_online or not self._offline_reported:
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
            variant_type, array = await asyncio.wait_for(session.variant_type(node), self.device.timeout)
            variant = to_variant(request.value, variant_type, array)
            status = await asyncio.wait_for(session.write(node, variant), self.device.timeout)
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


class OpcuaCollector:
    """The collector as an async context manager: enter starts every device link, exit stops them."""

    def __init__(self, config: OpcuaCollectorConfig) -> None:
        self.config = config
        self.settings = config
        self.report = ReportFilter()
        self.links = {d.name: DeviceLink(d, self) for d in config.devices}
        self.readings_out = 0
        self._handoff: HandoffClient | None = None
        self._main: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    async def __aenter__(self) -> OpcuaCollector:
        self._main = asyncio.create_task(self.run(), name="opcua-collector")
        started = asyncio.create_task(self._started.wait())
        await asyncio.wait([self._main, started], return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if self._main.done():
            self._main.result()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._main is not None:
            self._main.cancel()
            with suppress(asyncio.CancelledError):
                await self._main

    async def run(self) -> None:
        """Run until cancelled."""
        metrics_server: asyncio.Server | None = None
        async with HandoffClient(self.config.handoff, self.config.name, self.write) as handoff:
            self._handoff = handoff
            if self.config.metrics_port is not None:
                metrics_server = await self._metrics(handoff).serve(self.config.metrics_port)
            try:
                async with asyncio.TaskGroup() as tasks:
                    for link in self.links.values():
                        tasks.create_task(link.run(), name=f"opcua-device-{link.device.name}")
                    self._started.set()
            finally:
                if metrics_server is not None:
                    metrics_server.close()
                with suppress(asyncio.CancelledError):
                    await handoff.drain(1.0)

    def _metrics(self, handoff: HandoffClient) -> Metrics:
        metrics = Metrics()
        metrics.counter("readings_total", "readings handed to the forwarder", lambda: self.readings_out)
        metrics.gauge(
            "device_online",
            "1 while the device's session is up",
            lambda: [({"device": n}, float(link.online)) for n, link in self.links.items()],
        )
        metrics.gauge(
            "handoff_pending",
            "readings not yet acknowledged by the forwarder",
            lambda: float(handoff.pending),
        )
        metrics.counter(
            "handoff_dropped_total",
            "readings dropped while the forwarder was away",
            lambda: float(handoff.stats.dropped),
        )
        return metrics

    # ------------------------------------------------------------------ to the forwarder

    def publish(self, readings: list[Reading]) -> None:
        """Readings that passed the report filter."""
        self.readings_out += len(readings)
        if self._handoff is not None:
            self._handoff.publish(readings)

    def publish_unfiltered(self, readings: list[Reading]) -> None:
        """Readings reported whatever the filter says (bad on device loss), remembered by it."""
        now = asyncio.get_running_loop().time()
        for reading in readings:
            self.report.accept(reading, 0.0, 0.0, now)
        self.publish(readings)

    def state(self, state: DeviceState) -> None:
        if self._handoff is not None:
            self._handoff.device_state(state)

    async def write(self, request: WriteRequest) -> WriteResult:
        link = self.links.get(request.device)
        if link is None:
            return WriteResult(
                request.id,
                request.device,
                request.tag,
                False,
                f"device {request.device} is not served by the opcua collector",
            )
        return await link.write(request)
