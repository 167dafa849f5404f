"""Process plumbing every collector and the forwarder share: logging, signals, error latches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any


def setup_logging(level: str = "INFO", name: str = "fieldgate") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)-7s {name} %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_service(main: Coroutine[Any, Any, None]) -> int:
    """Run `main` until it ends or SIGTERM/SIGINT arrives; then cancel it and let it clean up."""

    async def runner() -> None:
        task = asyncio.create_task(main, name="main")
        loop = asyncio.get_running_loop()
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
    """

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._log = logger
        self._what = what
        self.failing = False
        self.failures = 0

    def failure(self, reason: str) -> bool:
        """Record a failure; True when it is the first of an episode."""
        self.failures += 1
        if self.failing:
            self._log.debug("%s: still failing: %s", self._what, reason)
            return False
        self.failing = True
        self._log.error("%s: %s", self._what, reason)
        return True

    def success(self) -> bool:
        """Record a success; True when it ends an episode of failures."""
        if not self.failing:
            return False
        self.failing = False
        self._log.info("%s: recovered after %d failed attempts", self._what, self.failures)
        self.failures = 0
        return True
