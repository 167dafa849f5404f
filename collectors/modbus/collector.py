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
from contextlib import AsyncExitStack
from typing import Any

from collectors.core.metrics import Sample
from collectors.core.model import WriteRequest, WriteResult
from collectors.core.shell import CollectorShell
from collectors.core.shell import serve as shell_serve
from collectors.modbus.config import ModbusCollectorConfig, ModbusDevice
from collectors.modbus.link import Link
from collectors.modbus.poller import DevicePoller
from collectors.modbus.writer import Writer

log = logging.getLogger(__name__)


class ModbusCollector(CollectorShell[ModbusCollectorConfig]):
    """Runs one collector config until cancelled; `async with` it, then `await run()`."""

    def __init__(
        self,
        config: ModbusCollectorConfig,
        *,
        reconnect_max: float = 30.0,
        handoff_grace: float = 30.0,
        drain_timeout: float = 2.0,
    ) -> None:
        super().__init__(config, on_write=self._on_write, handoff_grace=handoff_grace,
                         drain_timeout=drain_timeout)
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
        # a collector none of whose devices answered for this long is not doing its job
        slowest = max((pc.interval for p in self.pollers for pc in p.classes), default=1.0)
        self._poll_grace = max(60.0, 5 * slowest)
        self._register_metrics()

    async def _enter(self, stack: AsyncExitStack) -> None:
        for link in self.links.values():
            await stack.enter_async_context(link)

    def _started_line(self) -> str:
        return (
            f"modbus collector: {len(self.pollers)} devices on {len(self.links)} links, "
            f"{sum(len(pc.blocks) for p in self.pollers for pc in p.classes)} requests per cycle"
        )

    def _device_tasks(self, group: asyncio.TaskGroup) -> None:
        for poller in self.pollers:
            group.create_task(poller.run(), name=f"device-{poller.device.name}")

    async def _on_write(self, request: WriteRequest) -> WriteResult:
        return await self.writer(request)

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
        self._register_handoff_metrics()
        m.health_check(self._poll_problem)

    def _poll_problem(self) -> str | None:
        if not self.pollers:
            return None
        now = time.monotonic()
        last = max((p.stats.last_success or 0.0 for p in self.pollers), default=0.0)
        quiet = now - (last or self._started)
        if quiet < self._poll_grace:
            return None
        return f"no device answered for {quiet:.0f}s"


async def serve(config: ModbusCollectorConfig) -> None:
    """Run the collector until cancelled (SIGTERM via run_service)."""
    await shell_serve(ModbusCollector(config))
