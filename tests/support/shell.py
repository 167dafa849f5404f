"""A collector (any `CollectorShell`) running in the test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from collectors.core.shell import CollectorShell


@asynccontextmanager
async def running(collector: CollectorShell[Any]) -> AsyncIterator[asyncio.Task[None]]:
    """Enter the collector and run it; the task of `run()`, cancelled (if it still runs) at the end."""
    async with collector:
        task = asyncio.create_task(collector.run(), name=f"{collector.config.name}-under-test")
        try:
            yield task
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
