"""A misbehaving Modbus device against a running collector: nothing wrong is published as good.

Two devices, each on its own link: `rogue` on a raw TCP server that answers as the test tells
it (tests/support/rogue_modbus.py), `steady` on pymodbus' own server. For every way a device
can misbehave, the rogue device must go bad with a reason a plant engineer can read (or its
request be retried and answered correctly), no wrong value may be published as good, the
steady device must keep reporting, the collector must keep running, and the rogue device must
come back good once its server behaves again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from collectors.core.config import HandoffConfig
from collectors.core.handoff import HandoffServer
from collectors.core.model import Quality
from collectors.modbus.collector import ModbusCollector
from tests.modbus import conftest as modbus_parts
from tests.modbus.conftest import Server, Sink, collector_config, until
from tests.support.rogue_modbus import GOOD, RogueModbusServer

pytestmark = pytest.mark.security

# the Modbus tests' fixtures: a recording hand-off server, pymodbus' own logging silenced
forwarder = modbus_parts.forwarder
quiet_pymodbus = modbus_parts.quiet_pymodbus

# mode -> the reason the rogue device's tag goes bad with; None: a good answer may also come
# through (the request is retried and answered right), as long as nothing wrong is good
EXPECTED: dict[str, str | None] = {
    "wrong_fc": "wrong function code",
    "long_answer": "long answer",
    "short_answer": "short answer",
    "byte_count_lie": "protocol error",
    "wrong_tid": "timeout",
    "tid_zero": "wrong transaction id",
    "exception": "exception 2: illegal data address",
    "exception_busy": "exception 6: server device busy",
    "exception_wrong_fc": "wrong function code",
    "unknown_fc": "protocol error",
    "stall": "timeout",
    "garbage": "timeout",
    "half_frame": "timeout",
    "close_mid": "connection lost",
    "flood": None,
}


@pytest.fixture
async def steady_server() -> AsyncIterator[Server]:
    srv = await Server().start()
    await srv.set(1, "holding", 0, [77])
    try:
        yield srv
    finally:
        await srv.stop()


def tcp_device(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "protocol": "modbus", "connection": {"tcp": {"host": "127.0.0.1", "port": port}},
        "poll": "50ms", "timeout": "200ms",
        "tags": [{"name": "level", "table": "holding", "address": 0, "type": "uint16"},
                 {"name": "flow", "table": "holding", "address": 1, "type": "uint16"}],
        **extra,
    }


def assert_nothing_wrong_was_good(sink: Sink) -> None:
    wrong = [r for r in sink.received
             if r.device == "rogue" and r.quality == Quality.GOOD and r.value != GOOD]
    assert not wrong, f"published as good: {wrong[:3]}"


async def steady_keeps_reporting(sink: Sink, seconds: float = 0.5) -> None:
    before = len(sink.of("steady", "level"))
    await until(lambda: len(sink.of("steady", "level")) >= before + 3, timeout=5 + seconds,
                what="steady readings while the rogue device misbehaves")
    assert all(r.quality == Quality.GOOD and r.value == 77 for r in sink.of("steady", "level"))


@pytest.mark.parametrize("mode", list(EXPECTED))
async def test_a_misbehaving_device_goes_bad_and_nothing_wrong_is_good(
    mode: str, forwarder: tuple[Sink, HandoffServer, HandoffConfig], steady_server: Server,
    tmp_path: Path,
) -> None:
    sink, _handoff, settings = forwarder
    async with RogueModbusServer() as rogue:
        devices = [tcp_device("rogue", rogue.port), tcp_device("steady", steady_server.port)]
        config = collector_config(settings, devices, tmp_path)
        async with ModbusCollector(config, reconnect_max=0.5) as collector:
            run = asyncio.create_task(collector.run())
            try:
                await until(lambda: any(r.quality == Quality.GOOD and r.value == GOOD
                                        for r in sink.of("rogue", "level")), what="rogue good first")
                mark = len(sink.received)
                rogue.mode = mode
                expected = EXPECTED[mode]
                if expected is not None:
                    await until(lambda: any(r.device == "rogue" and (r.quality == Quality.BAD or r.value != GOOD)
                                            for r in sink.received[mark:]), what=f"{mode}: rogue bad")
                    assert_nothing_wrong_was_good(sink)
                    bad = [r for r in sink.received[mark:] if r.device == "rogue" and r.quality == Quality.BAD]
                    assert {r.reason for r in bad} == {expected}, f"{mode}: {bad}"
                    assert {r.tag for r in bad} == {"level", "flow"}
                else:
                    seen = rogue.requests
                    await until(lambda: rogue.requests >= seen + 20, what=f"{mode}: requests go on")
                await steady_keeps_reporting(sink)
                assert not run.done(), run
                assert_nothing_wrong_was_good(sink)

                mark = len(sink.received)
                rogue.mode = "good"
                await until(lambda: {r.tag for r in sink.received[mark:] if r.device == "rogue"
                                     and r.quality == Quality.GOOD and r.value == GOOD} == {"level", "flow"}
                            or (expected is None and not any(r.device == "rogue" and r.quality == Quality.BAD
                                                             for r in sink.received)),
                            timeout=10, what=f"{mode}: rogue good again")
                assert_nothing_wrong_was_good(sink)
                assert not run.done(), run
            finally:
                run.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await run
