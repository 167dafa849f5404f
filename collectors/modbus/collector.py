"""The Modbus collector as one async context manager: links, pollers, writer, hand-off, metrics.

Devices are grouped by physical link (`connection.link_key`): devices on one serial port, or
units behind one TCP gateway, share one `Link` and so one request in flight. Every device
gets its own `DevicePoller`; links poll concurrently, so a silent device holds up only the
devices on its own line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack, suppress
from typing import Any

from collectors.core.handoff import HandoffClient
from collectors.core.metrics import Metrics, Sample
from collectors.core.model import WriteRequest, WriteResult
from collectors.core.report import ReportFilter
from collectors.modbus.config import ModbusCollectorConfig, ModbusDevice
from collectors.modbus.link import Link
from collectors.modbus.poller import DevicePoller
from collectors.modbus.writer import Writer

log = logging.getLogger(__name__)


class ModbusCollector:
    """Runs one collector config until cancelled; `async with` it, then `await run()`."""

    def __init__(
        self,
        config: ModbusCollectorConfig,
        *,
        reconnect_max: float = 30.0,
        handoff_grace: float = 30.0,
        drain_timeout: float = 2.0,
    ) -> None:
        self.config = config
        self.report = ReportFilter()
        self.handoff = HandoffClient(config.handoff, config.name, on_write=self._on_write)
        by_link: dict[str, list[ModbusDevice]] = {}
        for device in config.devices:
            by_link.setdefault(device.connection.link_key, []).append(device)
        self.links = {key: Link(devices, reconnect_max=reconnect_max) for key, devices in by_link.items()}
        self.pollers = [
            DevicePoller(device, self.links[device.connection.link_key], self.report,
                         self.handoff.publish, self.handoff.device_state)
            for device in config.devices
        ]
        self.writer = Writer(self.pollers)
        self.metrics = Metrics()
        self._handoff_grace = handoff_grace
        # a collector none of whose devices answered for this long is not doing its job
        slowest = max((pc.interval for p in self.pollers for pc in p.classes), default=1.0)
        self._poll_grace = max(60.0, 5 * slowest)
        self._drain_timeout = drain_timeout
        self._started = time.monotonic()
        self._handoff_down_since: float | None = self._started
        self._stack = AsyncExitStack()
        self.metrics_port: int | None = None
        self._register_metrics()

    async def __aenter__(self) -> ModbusCollector:
        await self._stack.__aenter__()
        try:
            for link in self.links.values():
                await self._stack.enter_async_context(link)
            await self._stack.enter_async_context(self.handoff)
            self._stack.push_async_callback(self._drain)
            if self.config.metrics_port is not None:
                server = await self.metrics.serve(self.config.metrics_port, self.config.metrics_host)
                self.metrics_port = server.sockets[0].getsockname()[1]
                self._stack.push_async_callback(_close_server, server)
        except BaseException:
            await self._stack.aclose()
            raise
        log.info(
            "modbus collector: %d devices on %d links, %d requests per cycle",
            len(self.pollers), len(self.links),
            sum(len(pc.blocks) for p in self.pollers for pc in p.classes),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def run(self) -> None:
        """Poll every device until cancelled."""
        async with asyncio.TaskGroup() as group:
            for poller in self.pollers:
                group.create_task(poller.run(), name=f"device-{poller.device.name}")
            group.create_task(self._watch_handoff(), name="handoff-watch")

    async def _on_write(self, request: WriteRequest) -> WriteResult:
        return await self.writer(request)

    async def _drain(self) -> None:
        """On shutdown, give the forwarder a moment to take what is queued."""
        if self.handoff.pending and not await self.handoff.drain(self._drain_timeout):
            log.warning("stopping with %d readings the forwarder has not acknowledged", self.handoff.pending)

    async def _watch_handoff(self) -> None:
        while True:
            if self.handoff.stats.connected:
                self._handoff_down_since = None
            elif self._handoff_down_since is None:
                self._handoff_down_since = time.monotonic()
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ metrics and health

    def _register_metrics(self) -> None:
        m = self.metrics
        pollers = self.pollers

        def per_device(read: Any) -> Any:
            return lambda: [({"device": p.device.name}, float(read(p))) for p in pollers]

        def polls() -> list[Sample]:
            samples: list[Sample] = []
            for p in pollers:
                samples.append(({"device": p.device.name, "result": "ok"}, float(p.stats.polls_ok)))
                samples.append(({"device": p.device.name, "result": "failed"}, float(p.stats.polls_failed)))
            return samples

        def age(p: DevicePoller) -> float:
            last = p.stats.last_success
            return -1.0 if last is None else time.monotonic() - last

        m.counter("modbus_polls_total", "block reads per device, by result", polls)
        m.counter("modbus_readings_total", "readings reported per device",
                  per_device(lambda p: p.stats.readings))
        m.gauge("modbus_device_online", "1 when the device answers",
                per_device(lambda p: p.stats.online is True))
        m.gauge("modbus_last_success_age_seconds", "since the device last answered a poll (-1: never)",
                per_device(age))
        m.counter("modbus_writes_total", "writes served, by result (busy: too many pending; expired: too late)",
                  lambda: [({"result": "ok"}, float(self.writer.ok)),
                           ({"result": "failed"}, float(self.writer.failed)),
                           ({"result": "busy"}, float(self.writer.busy)),
                           ({"result": "expired"}, float(self.writer.expired))])
        m.gauge("handoff_queue", "readings not yet acknowledged by the forwarder",
                lambda: self.handoff.pending)
        m.counter("handoff_dropped_total", "readings dropped while the forwarder was away",
                  lambda: self.handoff.stats.dropped)
        m.gauge("handoff_connected", "1 when connected to the forwarder",
                lambda: float(self.handoff.stats.connected))
        m.health_check(self._handoff_problem)
        m.health_check(self._poll_problem)

    def _handoff_problem(self) -> str | None:
        since = self._handoff_down_since
        if since is None or self.handoff.stats.connected:
            return None
        down = time.monotonic() - since
        if down < self._handoff_grace:
            return None
        return f"no hand-off to the forwarder for {down:.0f}s"

    def _poll_problem(self) -> str | None:
        if not self.pollers:
            return None
        now = time.monotonic()
        last = max((p.stats.last_success or 0.0 for p in self.pollers), default=0.0)
        quiet = now - (last or self._started)
        if quiet < self._poll_grace:
            return None
        return f"no device answered for {quiet:.0f}s"


async def _close_server(server: asyncio.Server) -> None:
    server.close()
    with suppress(Exception):
        await server.wait_closed()


async def serve(config: ModbusCollectorConfig) -> None:
    """Run the collector until cancelled (SIGTERM via run_service)."""
    async with ModbusCollector(config) as collector:
        await collector.run()
