"""The Modbus collector against pymodbus' own server, handing off to a recording forwarder end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from collectors.core.config import HandoffConfig
from collectors.core.handoff import HandoffServer
from collectors.core.model import DeviceState, WriteRequest, WriteResult
from collectors.modbus.collector import ModbusCollector
from tests.modbus.conftest import Server, Sink, collector_config, until

pytestmark = pytest.mark.sim

POLL = "200ms"

# name -> (tag keys, registers (bits) the server holds, value the collector must report)
PRESS: dict[str, tuple[dict[str, Any], list[Any], Any]] = {
    "temperature": ({"table": "holding", "address": 0, "type": "float32", "unit": "degC"}, [0x41AC, 0], 21.5),
    "pressure": ({"table": "holding", "address": 2, "type": "int16", "scale": 0.1}, [215], 21.5),
    "counter": ({"table": "holding", "address": 3, "type": "uint32", "word_order": "little"},
                [0xE240, 0x0001], 123456),
    "total": ({"table": "holding", "address": 5, "type": "float64"}, [0x4093, 0x4A00, 0, 0], 1234.5),
    "alarm": ({"table": "holding", "address": 9, "type": "uint16", "bit": 3}, [0x0008], True),
    "recipe": ({"table": "holding", "address": 10, "type": "string", "length": 4},
               [0x5056, 0x432D, 0x3132, 0], "PVC-12"),
    "flow": ({"table": "input", "address": 0, "type": "int16", "poll": "400ms"}, [0xFFFB], -5),
    "run": ({"table": "coil", "address": 3, "type": "bool", "writable": True}, [True], True),
    "door": ({"table": "discrete", "address": 1, "type": "bool"}, [True], True),
    "setpoint": ({"table": "holding", "address": 20, "type": "float32", "writable": True}, [0x41A0, 0], 20.0),
    "mode": ({"table": "holding", "address": 22, "type": "uint16", "writable": True}, [7], 7),
    "flag": ({"table": "holding", "address": 23, "type": "uint16", "bit": 2, "writable": True},
             [0x8001], False),
}


EXPECTED = {tag: value for tag, (_keys, _words, value) in PRESS.items()}


def press(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": "press-1", "protocol": "modbus",
        "connection": {"tcp": {"host": "127.0.0.1", "port": port}},
        "unit": 1, "poll": POLL, "timeout": "300ms",
        "tags": [{"name": name, **keys} for name, (keys, _words, _value) in PRESS.items()],
        **extra,
    }


def tcp(port: int) -> dict[str, Any]:
    return {"tcp": {"host": "127.0.0.1", "port": port}}


async def preset(server: Server, unit: int = 1) -> None:
    for keys, words, _value in PRESS.values():
        await server.set(unit, keys["table"], keys["address"], words)


@pytest.fixture
async def running(server: Server, forwarder: tuple[Sink, HandoffServer, HandoffConfig],
                  tmp_path: Path) -> AsyncIterator[tuple[Server, Sink, HandoffServer, ModbusCollector]]:
    sink, handoff, settings = forwarder
    await preset(server)
    config = collector_config(settings, [press(server.port)], tmp_path)
    async with ModbusCollector(config, reconnect_max=1.0) as collector:
        task = asyncio.create_task(collector.run())
        try:
            await until(lambda: len(sink.latest("press-1")) == len(PRESS), what="every tag once")
            yield server, sink, handoff, collector
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_every_tag_arrives_with_its_value_and_good_quality(running: Any) -> None:
    _server, sink, _handoff, _collector = running
    latest = sink.latest("press-1")
    assert {tag: r.value for tag, r in latest.items()} == EXPECTED
    assert {r.quality for r in latest.values()} == {"good"}
    assert all(r.reason is None and r.ts_ms > 1_700_000_000_000 for r in latest.values())
    assert sink.states[0] == DeviceState("press-1", True)


async def test_a_stopped_device_goes_bad_once_and_good_again_on_restart(running: Any) -> None:
    server, sink, _handoff, _collector = running
    loop = asyncio.get_running_loop()
    await server.stop()
    stopped = loop.time()
    await until(lambda: {r.tag for r in sink.received if r.quality == "bad"} == set(PRESS), timeout=3,
                what="every tag bad")
    # within one poll interval plus the timeout, not after a backoff
    assert loop.time() - stopped < 0.2 + 0.3 + 0.5
    await asyncio.sleep(1.0)  # still down: nothing more is reported
    bad = [r for r in sink.received if r.quality == "bad"]
    assert sorted(r.tag for r in bad) == sorted(PRESS)
    assert {r.reason for r in bad} <= {"connection refused", "connection lost", "timeout"}
    assert {r.tag: r.value for r in bad} == EXPECTED
    assert sink.states[-1].online is False
    assert sink.states[-1].reason in {"connection refused", "connection lost", "timeout"}

    count = len(sink.received)
    await server.start()  # same port, same registers; nothing else restarts
    await until(lambda: {r.tag for r in sink.received[count:] if r.quality == "good"} == set(PRESS),
                timeout=6, what="every tag good again")
    assert sink.states[-1] == DeviceState("press-1", True)
    again = {r.tag: r.value for r in sink.received[count:]}
    assert again == EXPECTED


async def write(
    handoff: HandoffServer, sink: Sink, tag: str, value: Any, device: str = "press-1"
) -> WriteResult:
    request = WriteRequest(f"w-{len(sink.results)}", device, tag, value)
    assert handoff.send_write("modbus", request)
    await until(lambda: any(r.id == request.id for r in sink.results), timeout=5, what="write answered")
    return next(r for r in sink.results if r.id == request.id)


async def test_writes_change_the_device_and_report_the_read_back(running: Any) -> None:
    server, sink, handoff, _collector = running
    result = await write(handoff, sink, "setpoint", 42.5)
    assert result == WriteResult(result.id, "press-1", "setpoint", True, None)
    assert await server.get(1, "holding", 20, 2) == [0x422A, 0]
    assert sink.of("press-1", "setpoint")[-1].value == 42.5

    assert (await write(handoff, sink, "run", False)).ok
    assert await server.get(1, "coil", 3) == [False]
    assert (await write(handoff, sink, "run", 1)).ok
    assert await server.get(1, "coil", 3) == [True]

    assert (await write(handoff, sink, "flag", True)).ok  # one bit: the other bits stay
    assert await server.get(1, "holding", 23) == [0x8005]
    assert sink.of("press-1", "flag")[-1].value is True

    assert (await write(handoff, sink, "mode", 65535)).ok
    assert await server.get(1, "holding", 22) == [65535]


@pytest.mark.parametrize(
    ("tag", "value", "error"),
    [
        ("temperature", 30.0, "temperature is not writable"),
        ("door", True, "door is not writable: the discrete table is read-only in Modbus"),
        ("nope", 1, "device press-1 has no tag 'nope'"),
        ("setpoint", "hot", "setpoint is a float32: write a number, not 'hot'"),
        ("mode", 70000, "mode: 70000 is out of range for uint16 (0 .. 65535)"),
        ("mode", 2.5, "mode is a uint16: 2.5 is not a whole number"),
        ("run", 2, "run is a bool: write true, false, 1 or 0, not 2"),
    ],
)
async def test_refused_writes_answer_an_error_and_change_nothing(running: Any, tag: str, value: Any,
                                                                 error: str) -> None:
    server, sink, handoff, _collector = running
    before = await server.get(1, "holding", 0, 24)
    coils = await server.get(1, "coil", 0, 8)
    result = await write(handoff, sink, tag, value)
    assert not result.ok
    assert result.error is not None and result.error.startswith(error), result.error
    assert await server.get(1, "holding", 0, 24) == before
    assert await server.get(1, "coil", 0, 8) == coils


async def test_a_write_to_an_unknown_device_is_refused(running: Any) -> None:
    _server, sink, handoff, _collector = running
    result = await write(handoff, sink, "run", True, device="press-9")
    assert (result.ok, result.error) == (False, "no Modbus device named 'press-9' in this collector")


async def test_an_exception_answer_makes_only_its_block_bad(
    server: Server, forwarder: tuple[Sink, HandoffServer, HandoffConfig], tmp_path: Path
) -> None:
    sink, _handoff, settings = forwarder
    await server.set(1, "holding", 0, [0x41AC, 0])
    device = {
        "name": "meter", "protocol": "modbus", "connection": tcp(server.port),
        "poll": "100ms", "timeout": "300ms",
        "tags": [
            {"name": "power", "table": "holding", "address": 0, "type": "float32"},
            {"name": "ghost", "table": "holding", "address": 500, "type": "uint16"},  # past the server's 64
        ],
    }
    async with ModbusCollector(collector_config(settings, [device], tmp_path)) as collector:
        task = asyncio.create_task(collector.run())
        await until(lambda: len(sink.latest("meter")) == 2, what="both tags")
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    ghost = sink.of("meter", "ghost")
    assert [(r.quality, r.reason, r.value) for r in ghost] == [
        ("bad", "exception 2: illegal data address", None)
    ]
    assert {r.quality for r in sink.of("meter", "power")} == {"good"}
    assert sink.states == [DeviceState("meter", True)]


async def test_deadband_and_heartbeat(
    server: Server, forwarder: tuple[Sink, HandoffServer, HandoffConfig], tmp_path: Path
) -> None:
    sink, _handoff, settings = forwarder
    await server.set(1, "holding", 0, [100])
    device = {
        "name": "tank", "protocol": "modbus", "connection": tcp(server.port),
        "poll": "50ms", "max_silence": "1s",
        "tags": [{"name": "level", "table": "holding", "address": 0, "type": "uint16", "deadband": 5}],
    }
    async with ModbusCollector(collector_config(settings, [device], tmp_path)) as collector:
        task = asyncio.create_task(collector.run())
        await until(lambda: len(sink.of("tank", "level")) == 1, what="first reading")
        await server.set(1, "holding", 0, [103])  # inside the deadband: not reported
        await asyncio.sleep(0.4)
        assert [r.value for r in sink.of("tank", "level")] == [100]
        await server.set(1, "holding", 0, [106])  # moved 6 from the last reported value
        await until(lambda: len(sink.of("tank", "level")) == 2, timeout=2, what="moved past the deadband")
        await until(lambda: len(sink.of("tank", "level")) == 3, timeout=2.5, what="heartbeat")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [r.value for r in sink.of("tank", "level")] == [100, 106, 106]
    _first, second, third = sink.of("tank", "level")
    assert 0.8 <= (third.ts_ms - second.ts_ms) / 1000 <= 1.6


async def test_two_units_behind_one_endpoint_share_one_link(
    forwarder: tuple[Sink, HandoffServer, HandoffConfig], tmp_path: Path
) -> None:
    sink, _handoff, settings = forwarder
    server = await Server(units=(1, 2)).start()
    try:
        await server.set(1, "holding", 0, [11])
        await server.set(2, "holding", 0, [22])
        devices = [
            {"name": f"drive-{unit}", "protocol": "modbus", "unit": unit, "poll": "50ms",
             "connection": {"tcp": {"host": "127.0.0.1", "port": server.port}},
             "tags": [{"name": "speed", "table": "holding", "address": 0, "type": "uint16", "deadband": 0}]}
            for unit in (1, 2)
        ]
        async with ModbusCollector(collector_config(settings, devices, tmp_path)) as collector:
            assert len(collector.links) == 1
            task = asyncio.create_task(collector.run())
            await until(lambda: min(len(sink.of(f"drive-{u}", "speed")) for u in (1, 2)) >= 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            link = next(iter(collector.links.values()))
            assert link.max_in_flight == 1
    finally:
        await server.stop()
    assert {r.value for r in sink.of("drive-1", "speed")} == {11}
    assert {r.value for r in sink.of("drive-2", "speed")} == {22}
