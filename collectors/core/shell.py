"""What every collector process does around its devices: the hand-off to the forwarder (writes
come back through it), draining it on shutdown, the watcher, the hand-off metrics and health,
serving /metrics, the entry point, and taking a new slice in place on SIGHUP.

A protocol's collector subclasses `CollectorShell` and fills in its devices: `_enter` (links to
open before the hand-off), `_device_tasks` (one task per device), `_observe` (once a second, for
its health) and, when it can take a new slice live (`live_reload`), `_apply`. The only place a
collector builds its `HandoffClient` is `CollectorShell.__init__`.

A start-first update under the docker runtime starts the new instance beside the running one
with `FIELDGATE_STANDBY_PORT` set (`start_as_standby`): it loads its slice, serves /metrics and
/healthz on that port (the running one holds the slice's), connects to the hand-off as the
standby and polls nothing. It turns healthy once the forwarder admitted it; when the old one
has left, the forwarder makes it active: its devices start at once, and it binds the slice's
metrics port as well as soon as the old one has released it (the standby port stays open: the
container's health check asks there). Slices that arrive on SIGHUP meanwhile wait until then.

Why SIGHUP rather than watching the slice file: the supervisor already knows when a slice
changed (it rewrote it) and decides in plan.py whether the change can be applied live; a signal
after the file is complete means the collector never reads a half-written file, needs no poller
of its own, and the supervisor's log says when the change was handed over.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Generic, TypeVar

from collectors.core.config import CollectorSettings
from collectors.core.entry import load_slice
from collectors.core.errors import ConfigErrors
from collectors.core.handoff import HandoffClient
from collectors.core.metrics import Metrics
from collectors.core.model import WriteRequest, WriteResult
from collectors.core.report import ReportFilter
from collectors.core.service import run_service, setup_logging

log = logging.getLogger(__name__)

STANDBY_PORT_ENV = "FIELDGATE_STANDBY_PORT"
# On SIGTERM, polls under way get this long to land before everything is cancelled: an answer
# (milliseconds) is kept; a poll waiting out a silent device's timeout is cut.
QUIESCE_TIMEOUT = 0.25
# On SIGTERM, a poll due within this still runs: a handover's new collector polls the moment
# this one has left (after this one's drain and exit, and the hand-off's word to the new one:
# tens of ms), so its first poll follows this one's last by at most about one poll period
# rather than up to a period plus that time.
HANDOVER_LEAD = 0.06
METRICS_PORT_RETRY = 0.1  # seconds between tries to bind the slice's port the old instance held

C = TypeVar("C", bound=CollectorSettings)


class CollectorShell(Generic[C]):
    """Runs one collector config until cancelled; `async with` it, then `await run()`."""

    live_reload = False  # True: `_apply` takes a new slice without a restart

    def __init__(
        self,
        config: C,
        *,
        on_write: Callable[[WriteRequest], Awaitable[WriteResult]],
        handoff_grace: float,
        drain_timeout: float,
    ) -> None:
        self.config = config
        self.report = ReportFilter()
        self.handoff = HandoffClient(config.handoff, config.name, on_write=on_write)
        self.metrics = Metrics()
        self.metrics_port: int | None = None
        self._handoff_grace = handoff_grace
        self._drain_timeout = drain_timeout
        self._started = time.monotonic()
        self._handoff_down_since: float | None = self._started
        self._stack = AsyncExitStack()
        self._group: asyncio.TaskGroup | None = None
        self._reloads: asyncio.Queue[C] = asyncio.Queue()
        self.reloaded = 0  # slices applied in place
        self.standby_port: int | None = None  # set by start_as_standby

    # ------------------------------------------------------------------ hooks for a protocol

    async def _enter(self, stack: AsyncExitStack) -> None:
        """Open what the devices need before the hand-off opens (links)."""

    def _device_tasks(self, group: asyncio.TaskGroup) -> None:
        """Start one task per device in `group`."""

    def _observe(self, now: float) -> None:
        """Called by the watcher once a second."""

    async def _quiesce(self, imminent: float) -> None:
        """On SIGTERM: start no poll due later than `imminent` seconds from now, and return once
        those under way (and those due sooner) have landed."""

    def _started_line(self) -> str:
        return f"{self.config.name}: started"

    async def _apply(self, config: C) -> None:
        """Take a new slice in place; `self.config` is still the old one while this runs. Each
        collector overrides it; one that cannot refuses, and the supervisor recreates it."""
        raise TypeError(f"{type(self).__name__} cannot take a new config in place")

    # ------------------------------------------------------------------ lifecycle

    def start_as_standby(self, port: int) -> None:
        """Before `async with`: start beside a running instance of this collector, serving
        /metrics and /healthz on `port` and polling nothing until the hand-off makes it active."""
        self.standby_port = port
        self.handoff.make_standby()

    @property
    def active(self) -> bool:
        """False while a standby waits for the hand-off; its devices are not polled then."""
        return self.handoff.active

    async def __aenter__(self) -> CollectorShell[C]:
        await self._stack.__aenter__()
        try:
            await self._enter(self._stack)
            await self._stack.enter_async_context(self.handoff)
            self._stack.push_async_callback(self._drain)
            port = self.config.metrics_port
            if port is not None and self.standby_port is not None:
                port = self.standby_port  # none when the slice has none (metrics.port null)
            if port is not None:
                server = await self.metrics.serve(port, self.config.metrics_host)
                self.metrics_port = server.sockets[0].getsockname()[1]
                self._stack.push_async_callback(_close_server, server)
        except BaseException:
            await self._stack.aclose()
            raise
        log.info("%s%s", self._started_line(),
                 f"; a standby (metrics on port {self.metrics_port}) until the hand-off makes it active"
                 if not self.active else "")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def run(self) -> None:
        """Run every device until cancelled."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            group.create_task(self._watch(), name="collector-watch")
            if self.active:
                self._device_tasks(group)
            else:
                group.create_task(self._take_over(group), name="collector-standby")
            if self.live_reload:
                group.create_task(self._take_reloads(), name="collector-reload")

    async def _take_over(self, group: asyncio.TaskGroup) -> None:
        """A standby: start the devices the moment the hand-off makes this instance active,
        then take the slice's metrics port once the old instance has released it."""
        await self.handoff.wait_active()
        self._started = time.monotonic()  # health's grace for a first answer counts from here
        self._device_tasks(group)
        log.info("%s: active: polling", self.config.name)
        port = self.config.metrics_port
        if port is None or port == self.metrics_port:
            return
        waited = False
        while True:
            try:
                server = await self.metrics.serve(port, self.config.metrics_host)
            except OSError as exc:  # the old instance still holds it (it drains, then exits)
                if not waited:
                    log.info("metrics port %d still held (%s): retrying until the previous instance has "
                             "released it", port, exc.strerror or exc)
                    waited = True
                await asyncio.sleep(METRICS_PORT_RETRY)
                continue
            self._stack.push_async_callback(_close_server, server)
            log.info("metrics and health on port %d as well (the standby port %s stays open)", port,
                     self.metrics_port)
            return

    async def quiesce(self, timeout: float = QUIESCE_TIMEOUT, imminent: float = HANDOVER_LEAD) -> None:
        """Stop polling and let what is under way (or due within `imminent`) land, for at most
        `timeout` seconds; the shutdown that follows drains it to the forwarder."""
        try:
            await asyncio.wait_for(self._quiesce(imminent), timeout)
        except TimeoutError:
            log.debug("%s: polls still under way after %gs: cut", self.config.name, timeout)

    def reload(self, config: C) -> None:
        """Queue a new slice; `run` applies them one at a time, in order."""
        self._reloads.put_nowait(config)

    async def _take_reloads(self) -> None:
        await self.handoff.wait_active()  # a standby applies what arrived meanwhile once active
        while True:
            config = await self._reloads.get()
            await self._apply(config)
            self.config = config
            self.reloaded += 1

    async def _drain(self) -> None:
        """On shutdown, give the forwarder a moment to take what is queued."""
        if self.handoff.pending and not await self.handoff.drain(self._drain_timeout):
            log.warning("stopping with %d readings the forwarder has not acknowledged", self.handoff.pending)

    async def _watch(self) -> None:
        while True:
            now = time.monotonic()
            if self.handoff.stats.connected:
                self._handoff_down_since = None
            elif self._handoff_down_since is None:
                self._handoff_down_since = now
            self._observe(now)
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ metrics and health

    def _register_handoff_metrics(self) -> None:
        m = self.metrics
        m.gauge("handoff_queue", "readings not yet acknowledged by the forwarder",
                lambda: self.handoff.pending)
        m.counter("handoff_dropped_total", "readings dropped while the forwarder was away",
                  lambda: self.handoff.stats.dropped)
        m.gauge("handoff_connected", "1 when connected to the forwarder",
                lambda: float(self.handoff.stats.connected))
        m.gauge("handoff_standby", "1 while this instance is a standby that the hand-off has not made active",
                lambda: float(not self.handoff.active))
        m.health_check(self._handoff_problem)
        m.health_check(self._standby_problem)

    def _standby_problem(self) -> str | None:
        """A standby is ready to take over only once the forwarder has admitted it as one."""
        if self.handoff.active or self.handoff.standby_admitted:
            return None
        return "standby not admitted by the hand-off yet"

    def _handoff_problem(self) -> str | None:
        since = self._handoff_down_since
        if since is None or self.handoff.stats.connected:
            return None
        down = time.monotonic() - since
        return None if down < self._handoff_grace else f"no hand-off to the forwarder for {down:.0f}s"


async def _close_server(server: asyncio.Server) -> None:
    server.close()
    with suppress(Exception):
        await server.wait_closed()


# ---------------------------------------------------------------------- the entry point


def collector_main(
    argv: list[str] | None,
    *,
    prog: str,
    doc: str | None,
    model: type[C],
    log_name: str,
    make: Callable[[C], CollectorShell[C]],
    check: Callable[[C], None] | None = None,
    quiet: Callable[[], None] | None = None,
) -> int:
    """`python -m collectors.<kind> --config FILE`: load and check the slice (exit 2 with one
    `file:line:column: message` per problem, nothing started), then run the collector until
    SIGTERM. A collector with `live_reload` reads FILE again on SIGHUP (`reload_from`).

    `check` raises `ConfigError` for what only the protocol can tell (printed as `FILE: message`);
    `quiet` turns down a chatty library's logger once logging is set up."""
    from collectors.core.errors import ConfigError

    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--config", type=Path, required=True,
                        help="the collector's rendered config (YAML or JSON)")
    args = parser.parse_args(argv)
    try:
        config = load_slice(args.config, model)
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        return 2
    if check is not None:
        try:
            check(config)
        except ConfigError as exc:
            print(f"{args.config}: {exc}", file=sys.stderr)
            return 2
    standby = os.environ.get(STANDBY_PORT_ENV, "")
    if standby and not (standby.isdigit() and int(standby) < 65536):
        print(f"{STANDBY_PORT_ENV}={standby[:20]!r}: a TCP port (1-65535; 0: any) expected", file=sys.stderr)
        return 2
    setup_logging(config.log_level, log_name)
    if quiet is not None:
        quiet()
    collector = make(config)
    if standby:
        collector.start_as_standby(int(standby))
    return run_service(serve(collector, args.config if collector.live_reload else None, model, check))


async def serve(
    collector: CollectorShell[C],
    path: Path | None = None,
    model: type[C] | None = None,
    check: Callable[[C], None] | None = None,
) -> None:
    """Run the collector until cancelled; with `path`, SIGHUP reloads it from that file.

    SIGTERM (`docker stop`, the supervisor) first lets the polls under way land (`quiesce`),
    then cancels: a handover's standby starts polling when this one's hand-off closes, so
    every reading this one read is drained to the forwarder before. A second SIGTERM cancels
    at once."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    stopping: set[asyncio.Task[None]] = set()

    def on_term() -> None:
        assert main is not None
        loop.add_signal_handler(signal.SIGTERM, main.cancel)
        task = loop.create_task(collector.quiesce(), name="collector-quiesce")
        stopping.add(task)
        task.add_done_callback(lambda _: main.cancel())

    async with collector:
        if path is not None and model is not None:
            loop.add_signal_handler(signal.SIGHUP, reload_from, collector, path, model, check)
        loop.add_signal_handler(signal.SIGTERM, on_term)
        try:
            await collector.run()
        finally:
            if main is not None:
                loop.add_signal_handler(signal.SIGTERM, main.cancel)
            if path is not None:
                loop.remove_signal_handler(signal.SIGHUP)


def reload_from(
    collector: CollectorShell[C], path: Path, model: type[C], check: Callable[[C], None] | None = None
) -> bool:
    """Read the slice at `path` again and hand it to `collector`. A file that does not load or
    check is refused whole (logged at ERROR); the collector keeps running its current config."""
    from collectors.core.errors import ConfigError

    try:
        config = load_slice(path, model, reload=True)
        if check is not None:
            check(config)
    except ConfigErrors as exc:
        log.error("new config refused, keeping the running one:\n%s", exc)
        return False
    except ConfigError as exc:
        log.error("new config refused, keeping the running one: %s: %s", path, exc)
        return False
    log.info("%s: new config read from %s, applying it in place", config.name, path)
    collector.reload(config)
    return True
