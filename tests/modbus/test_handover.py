"""A start-first handover between two Modbus collectors of one name, on a real hand-off and a
real counting device: the new one waits as a standby (healthy on a metrics port of its own,
polling nothing), and takes over when the old one leaves, one poll period after its last poll."""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise
from pathlib import Path

import pytest

from collectors.core.config import HandoffConfig
from collectors.core.handoff import HandoffServer
from collectors.core.model import WriteRequest
from collectors.modbus.collector import ModbusCollector
from collectors.modbus.config import ModbusCollectorConfig
from tests.modbus.conftest import Sink, collector_config, until
from tests.support.broker import free_port
from tests.support.counting import counting_server
from tests.support.http import http_get
from tests.support.shell import running

pytestmark = pytest.mark.sim

POLL_S = 0.1
SLACK_S = 0.05  # what the handover may add to one poll period (issue 12: gap <= period + 50 ms)


def counter_device(port: int) -> dict[str, object]:
    return {"name": "press-1", "protocol": "modbus", "unit": 1, "poll": "100ms", "timeout": "300ms",
            "connection": {"tcp": {"host": "127.0.0.1", "port": port}},
            "tags": [{"name": "counter", "table": "holding", "address": 0, "type": "uint16", "deadband": 0},
                     {"name": "run", "table": "holding", "address": 5, "type": "uint16", "writable": True}]}


def config(settings: HandoffConfig, device_port: int, metrics_port: int, tmp_path: Path) -> ModbusCollectorConfig:
    return collector_config(settings, [counter_device(device_port)], tmp_path, metrics_port=metrics_port)


async def test_the_standby_takes_over_one_poll_after_the_old_ones_last_with_nothing_lost_or_twice(
    forwarder: tuple[Sink, HandoffServer, HandoffConfig], tmp_path: Path
) -> None:
    sink, handoff, settings = forwarder
    device_port, metrics_port, standby_port = free_port(), free_port(), free_port()
    server, core = await counting_server(device_port)
    try:
        cfg = config(settings, device_port, metrics_port, tmp_path)
        old, new = ModbusCollector(cfg), ModbusCollector(cfg)
        new.start_as_standby(standby_port)
        async with running(old) as old_task:
            await until(lambda: len(sink.of("press-1", "counter")) >= 10, what="the old one's readings")
            async with running(new):
                await until(lambda: new.handoff.standby_admitted, what="the standby admitted")
                # Beside the old one: healthy on its own port, the old one still on the slice's.
                health = await http_get(standby_port, "/healthz")
                old_metrics = (await http_get(metrics_port, "/metrics"))[1]
                reads_before = core.reads
                await asyncio.sleep(1.0)
                standby_reads = core.reads - reads_before
                assert handoff.collectors == ["modbus"] and handoff.standbys == ["modbus"]
                # A write goes to the active (old) one only.
                assert handoff.send_write("modbus", WriteRequest("w1", "press-1", "run", 7))
                await until(lambda: sink.results, what="the write's result")
                assert old.writer.ok == 1 and new.writer.ok == 0

                # The handover: the old one stops as on SIGTERM (collectors.core.shell.serve):
                # its polls land, then it is cancelled, drains and leaves.
                await old.quiesce()
                old_task.cancel()
                await asyncio.gather(old_task, return_exceptions=True)
                await old.__aexit__(None, None, None)
                left_at = time.monotonic()
                await until(lambda: new.active, what="the standby made active")
                active_after = time.monotonic() - left_at
                await asyncio.sleep(1.0)
                new_metrics = await _answer(metrics_port)  # the old one closed it: the new one's now
                assert handoff.collectors == ["modbus"] and handoff.standbys == []
    finally:
        await server.shutdown()

    assert health[0] == 200, health
    assert "fieldgate_handoff_standby 0" in old_metrics
    assert "fieldgate_handoff_standby 0" in new_metrics  # the slice's port now answers for the new one
    # 10 polls a second from one collector, not 20 from two: the standby polled nothing.
    assert standby_reads <= 12, f"{standby_reads} reads in 1 s while one collector should poll"
    readings = sink.of("press-1", "counter")
    values = [int(r.value) for r in readings]  # type: ignore[arg-type]
    assert len(values) == len(set(values)), "a counter value was published twice"
    assert sorted(values) == list(range(min(values), max(values) + 1)), "a polled value was lost"
    stamps = sorted(r.ts_ms for r in readings)
    gap = max(b - a for a, b in pairwise(stamps)) / 1000
    print(f"\nhandover: standby active {active_after * 1000:.0f} ms after the old one left; "
          f"widest gap {gap * 1000:.0f} ms (poll {POLL_S * 1000:.0f} ms); {len(values)} readings, 0 lost")
    assert gap <= POLL_S + SLACK_S, f"widest gap {gap * 1000:.0f} ms"


async def _answer(port: int, timeout: float = 5.0) -> str:
    """The /metrics page on `port`, once something answers there."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return (await http_get(port, "/metrics"))[1]
        except OSError:
            assert time.monotonic() < deadline, f"nothing answers on port {port}"
            await asyncio.sleep(0.05)


async def test_a_standby_without_an_active_one_takes_over_after_the_claim_time(
    forwarder: tuple[Sink, HandoffServer, HandoffConfig], tmp_path: Path
) -> None:
    """The old one died (or its container was restarted by the Engine with the standby port set):
    nobody else holds the name, so the standby polls after STANDBY_CLAIM."""
    sink, handoff, settings = forwarder
    device_port = free_port()
    server, _ = await counting_server(device_port)
    try:
        new = ModbusCollector(config(settings, device_port, free_port(), tmp_path))
        new.start_as_standby(free_port())
        async with running(new):
            await until(lambda: sink.of("press-1", "counter"), what="the standby's first reading")
            assert new.active and handoff.collectors == ["modbus"]
    finally:
        await server.shutdown()


async def test_on_shutdown_a_poll_under_way_lands_and_its_reading_reaches_the_forwarder(
    forwarder: tuple[Sink, HandoffServer, HandoffConfig], tmp_path: Path
) -> None:
    """SIGTERM mid-poll: the device has counted the read; cutting the request would lose that
    value (the standby's first reading would be one further on). `quiesce` lets it land first."""
    sink, _handoff, settings = forwarder
    device_port = free_port()
    server, core = await counting_server(device_port, delay=0.15)  # every read is under way 150 ms
    try:
        collector = ModbusCollector(config(settings, device_port, free_port(), tmp_path))
        async with running(collector) as task:
            await until(lambda: len(sink.of("press-1", "counter")) >= 3, what="readings")
            await until(lambda: core.reads > max(int(r.value) for r in sink.of("press-1", "counter")),  # type: ignore[arg-type]
                        what="a read under way")
            await collector.quiesce(1.0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            reads = core.reads
    finally:
        await server.shutdown()
    values = sorted(int(r.value) for r in sink.of("press-1", "counter"))  # type: ignore[arg-type]
    assert values[-1] == reads, f"the device counted {reads} reads, the forwarder got up to {values[-1]}"
