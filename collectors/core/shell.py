"""What every collector process does around its devices: the hand-off to the forwarder (writes
come back through it), draining it on shutdown, the watcher, the hand-off metrics and health,
serving /metrics and the entry point.

A protocol's collector subclasses `CollectorShell` and fills in its devices: `_enter` (links to
open before the hand-off), `_device_tasks` (one task per device), `_observe` (once a second, for
its health). The only place a collector builds its
`HandoffClient` is `CollectorShell.__init__`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Generic, TypeVar

from collectors.core.config import CollectorSettings
from collectors.core.handoff import HandoffClient
from collectors.core.metrics import Metrics
from collectors.core.model import WriteRequest, WriteResult
from collectors.core.report import ReportFilter
from collectors.core.service import run_service, setup_logging
from collectors.core.validation import ConfigErrors, load_slice

log = logging.getLogger(__name__)

C = TypeVar("C", bound=CollectorSettings)


class CollectorShell(Generic[C]):
    """Runs one collector config until cancelled; `async with` it, then `await run()`."""

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

    # ------------------------------------------------------------------ hooks for a protocol

    async def _enter(self, stack: AsyncExitStack) -> None:
        """Open what the devices need before the hand-off opens (links)."""

    def _device_tasks(self, group: asyncio.TaskGroup) -> None:
        """Start one task per device in `group`."""

    def _observe(self, now: float) -> None:
        """Called by the watcher once a second."""

    def _started_line(self) -> str:
        return f"{self.config.name}: started"

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> CollectorShell[C]:
        await self._stack.__aenter__()
        try:
            await self._enter(self._stack)
            await self._stack.enter_async_context(self.handoff)
            self._stack.push_async_callback(self._drain)
            if self.config.metrics_port is not None:
                server = await self.metrics.serve(self.config.metrics_port, self.config.metrics_host)
                self.metrics_port = server.sockets[0].getsockname()[1]
                self._stack.push_async_callback(_close_server, server)
        except BaseException:
            await self._stack.aclose()
            raise
        log.info("%s", self._started_line())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def run(self) -> None:
        """Run every device until cancelled."""
        async with asyncio.TaskGroup() as group:
            self._device_tasks(group)
            group.create_task(self._watch(), name="collector-watch")

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
        m.health_check(self._handoff_problem)

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
    SIGTERM.

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
    setup_logging(config.log_level, log_name)
    if quiet is not None:
        quiet()
    return run_service(serve(make(config)))


async def serve(collector: CollectorShell[C]) -> None:
    """Run the collector until cancelled (SIGTERM via run_service)."""
    async with collector:
        await collector.run()
