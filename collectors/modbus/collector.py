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
        self._reconnect_max = reconnect_max
        self.links = {key: Link(devices, reconnect_max=reconnect_max)
                      for key, devices in _by_link(config.devices).items()}
        self.pollers = [self._poller(device) for device in config.devices]
        self.writer = Writer(self.pollers)
        self._poll_tasks: dict[str, asyncio.Task[None]] = {}
        self._set_poll_grace()
        self._register_metrics()

    def _poller(self, device: ModbusDevice) -> DevicePoller:
        return DevicePoller(device, self.links[device.connection.link_key], self.report,
                            self.handoff.publish, self.handoff.device_state)

    def _set_poll_grace(self) -> None:
        # a collector none of whose devices answered for this long is not doing its job
        slowest = max((pc.interval for p in self.pollers for pc in p.classes), default=1.0)
        self._poll_grace = max(60.0, 5 * slowest)

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
            self._start(group, poller)

    def _start(self, group: asyncio.TaskGroup, poller: DevicePoller) -> None:
        name = poller.device.name
        self._poll_tasks[name] = group.create_task(poller.run(), name=f"device-{name}")

    # ------------------------------------------------------------------ a new slice in place

    live_reload = True

    async def _apply(self, config: ModbusCollectorConfig) -> None:
        """Touch only the devices whose config changed: a removed or edited device's polling
        stops, an added or edited one starts on its link (its first poll at once); the others'
        pollers, links and connections are not touched, so they do not miss a poll. A link whose
        connection settings changed (serial baud rate, parity...) is opened again, with the
        pollers of every device on it. Settings that are not a device's (the hand-off, metrics,
        log level) need a restart: the supervisor plans one when they change."""
        assert self._group is not None, "run() applies reloads"
        old = {p.device.name: p for p in self.pollers}
        new = {d.name: d for d in config.devices}
        new_links = _by_link(config.devices)
        reopened = {key for key, link in self.links.items()
                    if key in new_links and new_links[key][0].connection != link.connection}
        stop = [p for name, p in old.items()
                if new.get(name) != p.device or p.device.connection.link_key in reopened]
        await self._stop(stop)
        stopped = {p.device.name for p in stop}
        for key in [k for k in self.links if k not in new_links or k in reopened]:
            await self.links.pop(key).__aexit__(None, None, None)
        for key, devices in new_links.items():
            link = self.links.get(key)
            if link is None:
                link = self.links[key] = Link(devices, reconnect_max=self._reconnect_max)
                await link.__aenter__()
                self._stack.push_async_callback(_close_link, self, key, link)
            else:
                link.devices = list(devices)
                link.frame_delay = max(device.frame_delay for device in devices)
                link.connect_timeout = max(device.timeout for device in devices)
        kept = [p for p in self.pollers if p.device.name not in stopped]
        started = [self._poller(d) for d in config.devices if d.name not in old or d.name in stopped]
        order = {d.name: i for i, d in enumerate(config.devices)}
        self.pollers[:] = sorted(kept + started, key=lambda p: order[p.device.name])
        self.writer.replace(self.pollers)
        self._set_poll_grace()
        for poller in started:
            self._start(self._group, poller)
        log.info("modbus collector: new config applied in place (%d devices started, %d stopped, "
                 "%d untouched)", len(started), len(stop), len(kept))

    async def _stop(self, pollers: list[DevicePoller]) -> None:
        tasks = [self._poll_tasks.pop(p.device.name) for p in pollers if p.device.name in self._poll_tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # never raises: our own cancellation still reaches us

    async def _quiesce(self, imminent: float) -> None:
        for poller in self.pollers:
            poller.stop_polling(imminent)
        await asyncio.gather(*(poller.idle() for poller in self.pollers))

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
        if not self.pollers or not self.active:  # a standby polls nothing yet
            return None
        now = time.monotonic()
        last = max((p.stats.last_success or 0.0 for p in self.pollers), default=0.0)
        quiet = now - (last or self._started)
        if quiet < self._poll_grace:
            return None
        return f"no device answered for {quiet:.0f}s"


def _by_link(devices: list[ModbusDevice]) -> dict[str, list[ModbusDevice]]:
    by_link: dict[str, list[ModbusDevice]] = {}
    for device in devices:
        by_link.setdefault(device.connection.link_key, []).append(device)
    return by_link


async def _close_link(collector: ModbusCollector, key: str, link: Link) -> None:
    """A link opened by a reload, closed on shutdown unless a later reload closed it."""
    if collector.links.get(key) is link:
        await link.__aexit__(None, None, None)


async def serve(config: ModbusCollectorConfig) -> None:
    """Run the collector until cancelled (SIGTERM via run_service)."""
    await shell_serve(ModbusCollector(config))
