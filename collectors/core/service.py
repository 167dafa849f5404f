"""Process plumbing every collector and the forwarder share: logging, signals, error latches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


def setup_logging(level: str = "INFO", name: str = "fieldgate") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)-7s {name} %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_service(main: Coroutine[Any, Any, None]) -> int:
    """Run `main` until it ends or SIGTERM/SIGINT arrives; then cancel it and let it clean up."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(LoopErrors(logging.getLogger("asyncio")))
        task = asyncio.create_task(main, name="main")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner())
    return 0


class ErrorLatch:
    """Logs the first failure at ERROR and repeats at DEBUG until a success clears it.

    A device that is down for an hour must not write 3,600 identical ERROR lines, and its
    recovery must be visible (Home Assistant's modbus does the same).

    A device that flaps (fails again within `settle` seconds of recovering) would still write
    an ERROR and an INFO line per flap: its episodes after the first are logged at DEBUG, and
    one WARNING every `summary_every` seconds says how often it failed meanwhile. Once it has
    stayed good for `settle` seconds, its next failure is an ERROR again.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        settle: float = 60.0,
        summary_every: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._what = what
        self._settle = settle
        self._summary_every = summary_every
        self._clock = clock
        self.failing = False
        self.failures = 0
        self._quiet = False  # this episode is a flap, logged at DEBUG
        self._recovered_at: float | None = None
        self._flaps = 0  # episodes not logged at ERROR since the last summary
        self._flaps_since = 0.0

    def failure(self, reason: str) -> bool:
        """Record a failure; True when it was logged at ERROR (the first of an episode that is
        not a flap)."""
        self.failures += 1
        if self.failing:
            self._log.debug("%s: still failing: %s", self._what, reason)
            return False
        self.failing = True
        now = self._clock()
        if self._recovered_at is not None and now - self._recovered_at < self._settle:
            self._quiet = True
            if self._flaps == 0:
                self._flaps_since = now
            self._flaps += 1
            if now - self._flaps_since >= self._summary_every:
                self._log.warning("%s: unsteady: failed and recovered %d times in %.0f min, last: %s",
                                  self._what, self._flaps, (now - self._flaps_since) / 60, reason)
                self._flaps, self._flaps_since = 0, now
            else:
                self._log.debug("%s: failing again: %s", self._what, reason)
            return False
        self._quiet = False
        self._flaps = 0
        self._log.error("%s: %s", self._what, reason)
        return True

    def success(self) -> bool:
        """Record a success; True when it ends an episode of failures."""
        if not self.failing:
            return False
        self.failing = False
        self._recovered_at = self._clock()
        self._log.log(logging.DEBUG if self._quiet else logging.INFO,
                      "%s: recovered after %d failed attempts", self._what, self.failures)
        self.failures = 0
        return True


class LoopErrors:
    """asyncio's exception handler: what no task caught (a protocol's `data_received` raising,
    a callback failing) is logged as one ERROR line per kind, repeats at DEBUG.

    asyncio's default handler writes a traceback per occurrence: a device sending frames its
    driver chokes on wrote over a thousand in ten minutes. A kind (message and exception type)
    is an episode until it has not occurred for `settle` seconds; the next occurrence after
    that is an ERROR again. Tracebacks go to DEBUG.
    """

    MAX_KINDS = 1000

    def __init__(
        self, logger: logging.Logger, *, settle: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = logger
        self._settle = settle
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}  # kind -> (last seen, repeats)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message") or "unhandled error in the event loop")
        kind = f"{message} {type(exc).__name__}" if exc is not None else message
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last[0] < self._settle:
            self._last[kind] = (now, last[1] + 1)
            self._log.debug("%s (repeat %d)", message, last[1] + 1, exc_info=exc)
            return
        if len(self._last) >= self.MAX_KINDS:
            self._last.clear()
        self._last[kind] = (now, 0)
        where = context.get("protocol") or context.get("transport") or context.get("task")
        line = message if exc is None else f"{message} {type(exc).__name__}: {exc}"
        if where is not None:
            line += f" [{type(where).__name__}]"
        self._log.error("%s; repeats are logged at DEBUG", line)
        if exc is not None:
            self._log.debug("traceback of: %s", message, exc_info=exc)
