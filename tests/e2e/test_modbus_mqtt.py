"""Modbus to MQTT end to end: pymodbus' server -> collector process -> forwarder process -> Mosquitto.

What a SCADA system subscribed to the broker sees: each tag's value on
`{prefix}/{device}/{tag}` as SPEC.md's JSON, writes through `/set` answered on `/set/result`,
and a device that stops answering turning `bad` once, then `good` when it is back.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.modbus.conftest import Server
from tests.support.broker import Mosquitto
from tests.support.entry import start_entry_point, stop_entry_point
from tests.support.mqtt import Message, Subscriber

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "fieldgate/line3"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

TAGS: list[dict[str, Any]] = [
    {"name": "temperature", "table": "holding", "address": 0, "type": "float32", "unit": "degC"},
    {"name": "pressure", "table": "holding", "address": 2, "type": "int16", "scale": 0.1, "unit": "bar"},
    {"name": "recipe", "table": "holding", "address": 4, "type": "string", "length": 2},
    {"name": "setpoint", "table": "holding", "address": 10, "type": "float32", "writable": True},
    {"name": "run", "table": "coil", "address": 3, "type": "bool", "writable": True},
]
REGISTERS: list[tuple[str, int, list[Any]]] = [
    ("holding", 0, [0x41AC, 0x0000]),  # 21.5
    ("holding", 2, [123]),  # 12.3 bar
    ("holding", 4, [0x4142, 0x4300]),  # "ABC"
    ("holding", 10, [0x41A0, 0x0000]),  # 20.0
    ("coil", 3, [True]),
]
EXPECTED = {"temperature": 21.5, "pressure": 12.3, "recipe": "ABC", "setpoint": 20.0, "run": True}
UNITS = {"temperature": "degC", "pressure": "bar"}


@dataclass
class Plant:
    server: Server
    subscriber: Subscriber


@pytest.fixture
def processes(tmp_path: Path, broker: Mosquitto) -> Iterator[tuple[Path, list[Any]]]:
    """Where configs go, and the list the test appends (process, log) pairs to; all stopped after."""
    started: list[Any] = []
    try:
        yield tmp_path, started
    finally:
        for proc, log in reversed(started):
            stop_entry_point(proc, log)


@pytest.fixture
async def plant(processes: tuple[Path, list[Any]], broker: Mosquitto,
                subscriber: Subscriber) -> AsyncIterator[Plant]:
    tmp_path, started = processes
    server = await Server().start()
    for table, address, values in REGISTERS:
        await server.set(1, table, address, values)
    socket = tmp_path / "handoff.sock"
    device = {
        "name": "press-1", "protocol": "modbus", "poll": "200ms", "timeout": "300ms",
        "connection": {"tcp": {"host": "127.0.0.1", "port": server.port}}, "tags": TAGS,
    }
    forwarder = {
        "gateway": {"id": "line3", "group": "plant1"},
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": "2s", "qos": 1},
        "buffer": {"dir": str(tmp_path / "buffer")},
        "metrics": {"port": None},
        "handoff": {"socket": str(socket), "linger": "5ms"},
        "devices": [{
            "name": "press-1", "collector": "modbus",
            "tags": [{"name": t["name"], "type": t["type"], "unit": t.get("unit"),
                      "writable": t.get("writable", False)} for t in TAGS],
        }],
    }
    collector = {
        "name": "modbus", "metrics_port": None, "state_dir": str(tmp_path),
        "handoff": {"socket": str(socket), "linger": "5ms"}, "devices": [device],
    }
    (tmp_path / "forwarder.json").write_text(json.dumps(forwarder))
    (tmp_path / "modbus.json").write_text(json.dumps(collector))
    for module, name in (("collectors.forwarder", "forwarder"), ("collectors.modbus", "modbus")):
        log = tmp_path / f"{name}.log"
        started.append((start_entry_point(module, tmp_path / f"{name}.json", log), log))
    try:
        yield Plant(server, subscriber)
    finally:
        await server.stop()


async def wait_for(sub: Subscriber, predicate: Any, within: float = 15.0, count: int = 1) -> list[Message]:
    """Subscriber.wait_for blocks; the pymodbus server lives on this loop, so wait in a thread."""
    return await asyncio.to_thread(sub.wait_for, predicate, within, count)


def on(tag: str, quality: str | None = None) -> Any:
    topic = f"{PREFIX}/press-1/{tag}"

    def match(m: Message) -> bool:
        return m.topic == topic and (quality is None or m.json()["quality"] == quality)

    return match


async def set_value(sub: Subscriber, tag: str, payload: bytes | str) -> dict[str, Any]:
    before = len(sub.on_topic(f"{PREFIX}/press-1/{tag}/set/result"))
    await asyncio.to_thread(sub.publish, f"{PREFIX}/press-1/{tag}/set", payload)
    (answer, *_) = (await wait_for(sub, lambda m: m.topic == f"{PREFIX}/press-1/{tag}/set/result",
                                   count=before + 1))[before:]
    result: dict[str, Any] = answer.json()
    return result


async def test_values_arrive_and_writes_are_answered(plant: Plant) -> None:
    sub = plant.subscriber
    for tag, value in EXPECTED.items():
        (message,) = await wait_for(sub, on(tag))
        payload = message.json()
        assert payload["value"] == value, tag
        assert payload["quality"] == "good"
        assert ISO_MS.match(payload["ts"])
        assert payload.get("unit") == UNITS.get(tag)
        assert set(payload) <= {"value", "ts", "quality", "unit"}

    ok = await set_value(sub, "setpoint", json.dumps({"value": 42.5, "id": "w1"}))
    assert ok == {"id": "w1", "ok": True}
    assert await plant.server.get(1, "holding", 10, 2) == [0x422A, 0]
    await wait_for(sub, lambda m: on("setpoint")(m) and m.json()["value"] == 42.5)

    assert await set_value(sub, "run", json.dumps({"value": 0, "id": "w2"})) == {"id": "w2", "ok": True}
    assert await plant.server.get(1, "coil", 3) == [False]

    refused = await set_value(sub, "temperature", json.dumps({"value": 30, "id": "w3"}))
    assert refused["id"] == "w3" and refused["ok"] is False and "not writable" in refused["error"]
    assert await plant.server.get(1, "holding", 0, 2) == [0x41AC, 0]

    wrong = await set_value(sub, "setpoint", json.dumps({"value": "hot", "id": "w4"}))
    assert wrong == {"id": "w4", "ok": False, "error": "setpoint is a float32: write a number, not 'hot'"}
    too_big = await set_value(sub, "setpoint", json.dumps({"value": 1e40, "id": "w5"}))
    assert too_big["ok"] is False and "out of range for float32" in too_big["error"]
    assert await plant.server.get(1, "holding", 10, 2) == [0x422A, 0]

    malformed = await set_value(sub, "setpoint", b"{not json")
    assert malformed["ok"] is False and "not JSON" in malformed["error"]
    # and nothing crashed: the next write still goes through
    ok = await set_value(sub, "setpoint", json.dumps({"value": 1.5, "id": "w6"}))
    assert ok == {"id": "w6", "ok": True}
    assert await plant.server.get(1, "holding", 10, 2) == [0x3FC0, 0]


async def test_a_stopped_device_goes_bad_once_and_good_again(plant: Plant) -> None:
    sub = plant.subscriber
    for tag in EXPECTED:
        await wait_for(sub, on(tag, "good"))
    await plant.server.stop()
    for tag, value in EXPECTED.items():
        (bad,) = await wait_for(sub, on(tag, "bad"), within=5)
        assert bad.json()["value"] == value  # the last value, with the reason
        assert bad.json()["reason"] in {"connection refused", "connection lost", "timeout"}
    await asyncio.sleep(1.0)
    assert all(len([m for m in sub.messages if on(tag, "bad")(m)]) == 1 for tag in EXPECTED)

    seen = len(sub.messages)
    await plant.server.start()
    for tag, value in EXPECTED.items():
        (good,) = await wait_for(sub, lambda m, t=tag: on(t, "good")(m) and m in sub.messages[seen:], 10)
        assert good.json()["value"] == value
