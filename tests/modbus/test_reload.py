"""A new slice taken in place: only the devices whose config changed are touched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from collectors.core.config import HandoffConfig
from collectors.core.handoff import HandoffServer
from collectors.core.model import Reading
from collectors.core.shell import reload_from
from collectors.modbus.collector import ModbusCollector
from collectors.modbus.config import ModbusCollectorConfig
from tests.modbus.conftest import Server, Sink, collector_config, until

pytestmark = pytest.mark.sim

POLL_S = 0.1


def drive(unit: int, port: int, *tags: tuple[str, int]) -> dict[str, Any]:
    return {"name": f"drive-{unit}", "protocol": "modbus", "unit": unit, "poll": "100ms", "timeout": "300ms",
            "connection": {"tcp": {"host": "127.0.0.1", "port": port}},
            "tags": [{"name": name, "table": "holding", "address": address, "type": "uint16", "deadband": 0}
                     for name, address in tags]}


@asynccontextmanager
async def running(collector: ModbusCollector) -> AsyncIterator[ModbusCollector]:
    async with collector:
        task = asyncio.create_task(collector.run())
        try:
            yield collector
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


def widest_gap(readings: list[Reading], start_ms: int, end_ms: int) -> float:
    """Seconds between consecutive readings' timestamps inside [start, end]."""
    stamps = sorted({r.ts_ms for r in readings if start_ms <= r.ts_ms <= end_ms})
    assert len(stamps) >= 5, f"too few readings in the window: {stamps}"
    return max(b - a for a, b in pairwise(stamps)) / 1000


async def test_editing_one_devices_tags_leaves_the_other_devices_polls_alone(
    forwarder: tuple[Sink, HandoffServer, HandoffConfig], tmp_path: Path
) -> None:
    sink, _handoff, settings = forwarder
    server = await Server(units=(1, 2)).start()  # both units behind one endpoint: one shared link
    try:
        for unit in (1, 2):
            await server.set(unit, "holding", 0, [10 * unit, 100 + unit])
        before = collector_config(settings, [drive(1, server.port, ("speed", 0)),
                                             drive(2, server.port, ("speed", 0))], tmp_path)
        after = collector_config(settings, [drive(1, server.port, ("speed", 0)),
                                            drive(2, server.port, ("speed", 0), ("torque", 1))], tmp_path)
        async with running(ModbusCollector(before)) as collector:
            await until(lambda: min(len(sink.of(f"drive-{u}", "speed")) for u in (1, 2)) >= 10)
            link = next(iter(collector.links.values()))
            untouched = collector.pollers[0]
            reloaded_at = _now_ms()
            collector.reload(after)
            await until(lambda: sink.of("drive-2", "torque"), what="the new tag's first reading")
            live_ms = _now_ms() - reloaded_at
            await asyncio.sleep(1.0)
            assert next(iter(collector.links.values())) is link  # the connection was kept
            assert collector.pollers[0] is untouched
            gap = widest_gap(sink.of("drive-1", "speed"), reloaded_at - 1000, reloaded_at + 1000)
    finally:
        await server.stop()
    print(f"\nwidest gap of the untouched device around the reload: {gap * 1000:.0f} ms; "
          f"new tag live after {live_ms} ms")
    assert gap <= POLL_S + 0.05, f"drive-1 missed a poll: {gap * 1000:.0f} ms between readings"
    assert {r.value for r in sink.of("drive-2", "torque")} == {102}
    assert collector.reloaded == 1


async def test_devices_added_and_removed_in_place(
    forwarder: tuple[Sink, HandoffServer, HandoffConfig], tmp_path: Path
) -> None:
    sink, _handoff, settings = forwarder
    one, two = await Server().start(), await Server().start()
    try:
        await one.set(1, "holding", 0, [11])
        await two.set(1, "holding", 0, [22])
        a = drive(1, one.port, ("speed", 0))
        b = {**drive(1, two.port, ("speed", 0)), "name": "pump"}
        async with running(ModbusCollector(collector_config(settings, [a], tmp_path))) as collector:
            await until(lambda: sink.of("drive-1", "speed"))
            collector.reload(collector_config(settings, [a, b], tmp_path))
            await until(lambda: sink.of("pump", "speed"), what="the added device's first reading")
            assert len(collector.links) == 2
            collector.reload(collector_config(settings, [b], tmp_path))
            await until(lambda: collector.reloaded == 2)
            assert [p.device.name for p in collector.pollers] == ["pump"]
            assert len(collector.links) == 1
            count = len(sink.of("drive-1", "speed"))
            await until(lambda: len(sink.of("pump", "speed")) >= 5)
            assert len(sink.of("drive-1", "speed")) <= count + 1  # at most one poll in flight
    finally:
        await one.stop()
        await two.stop()
    assert {r.value for r in sink.of("pump", "speed")} == {22}


async def test_a_slice_that_does_not_load_is_refused_and_the_running_one_kept(
    forwarder: tuple[Sink, HandoffServer, HandoffConfig], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _sink, _handoff, settings = forwarder
    config = collector_config(settings, [drive(1, 1502, ("speed", 0))], tmp_path)
    path = tmp_path / "modbus.json"
    path.write_text('{"name": "modbus", "devices": [{"name": "x", "poll": "soon"}]}')
    async with ModbusCollector(config) as collector:
        assert reload_from(collector, path, ModbusCollectorConfig) is False
    assert collector.config is config
    assert f"{path}:1:" in caplog.text and "keeping the running one" in caplog.text


def _now_ms() -> int:
    return int(time.time() * 1000)
