"""A write's deadline through the hand-off: the Modbus collector against pymodbus' own server.

The forwarder stamps `deadline_ms` in the write frame; a write that cannot be done before it is
answered "expired" and the device is not touched. A frame without it (a forwarder from before
the deadline) is served as it always was.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from collectors.core.config import HandoffConfig
from collectors.core.handoff import HandoffServer
from collectors.core.model import WriteRequest, WriteResult, now_ms
from collectors.modbus.collector import ModbusCollector
from tests.modbus.conftest import Server, Sink, collector_config, until

pytestmark = pytest.mark.sim


@pytest.fixture
async def running(server: Server, forwarder: tuple[Sink, HandoffServer, HandoffConfig],
                  tmp_path: Path) -> AsyncIterator[tuple[Server, Sink, HandoffServer]]:
    sink, handoff, settings = forwarder
    device = {
        "name": "press-1", "protocol": "modbus", "poll": "100ms", "timeout": "300ms",
        "connection": {"tcp": {"host": "127.0.0.1", "port": server.port}},
        "tags": [{"name": "setpoint", "table": "holding", "address": 4, "type": "uint16", "writable": True}],
    }
    async with ModbusCollector(collector_config(settings, [device], tmp_path)) as collector:
        task = asyncio.create_task(collector.run())
        try:
            await until(lambda: bool(sink.latest("press-1")) and "modbus" in handoff.collectors,
                        what="the collector polls and has joined")
            yield server, sink, handoff
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def write(handoff: HandoffServer, sink: Sink, request: WriteRequest) -> WriteResult:
    assert handoff.send_write("modbus", request)
    await until(lambda: any(r.id == request.id for r in sink.results), timeout=5, what="write answered")
    return next(r for r in sink.results if r.id == request.id)


async def test_a_write_past_its_deadline_is_answered_expired_and_not_made(running: Any) -> None:
    server, sink, handoff = running
    result = await write(handoff, sink, WriteRequest("late", "press-1", "setpoint", 7, now_ms() - 50))
    assert not result.ok and result.error is not None
    assert result.error.startswith("expired: not written, its deadline passed"), result.error
    # 0.1 s left, and the write and its read-back may take 0.3 s each (the device's timeout)
    result = await write(handoff, sink, WriteRequest("tight", "press-1", "setpoint", 8, now_ms() + 100))
    assert not result.ok and result.error is not None
    assert result.error.endswith("the device may take 0.6s to answer"), result.error
    await asyncio.sleep(0.3)
    assert await server.get(1, "holding", 4) == [0]


async def test_a_write_in_time_or_without_a_deadline_is_made(running: Any) -> None:
    server, sink, handoff = running
    result = await write(handoff, sink, WriteRequest("soon", "press-1", "setpoint", 9, now_ms() + 5000))
    assert result == WriteResult("soon", "press-1", "setpoint", True, None)
    assert await server.get(1, "holding", 4) == [9]
    # as a forwarder from before deadlines sends it: no deadline_ms in the frame
    result = await write(handoff, sink, WriteRequest("old", "press-1", "setpoint", 10))
    assert result == WriteResult("old", "press-1", "setpoint", True, None)
    assert await server.get(1, "holding", 4) == [10]
