"""Writes through `/set`, as a SCADA client sees them: the answer on `/set/result` and what the
device then holds agree, and a value the tag must not take is refused before the device is touched.

pymodbus' server (recording every request) -> Modbus collector -> forwarder -> Mosquitto, in one
process (tests/e2e/writes_plant.py).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.writes_plant import DEVICE, PREFIX, SETPOINTS, TAGS, plant
from tests.support.broker import Mosquitto
from tests.support.mqtt import Message, Subscriber

pytestmark = pytest.mark.sim

ADDRESS = {t["name"]: t["address"] for t in TAGS}


def result_topic(tag: str) -> str:
    return f"{PREFIX}/{DEVICE}/{tag}/set/result"


async def answers(sub: Subscriber, count: int, within: float = 30.0) -> dict[str, dict[str, Any]]:
    """The first `count` answers on any `/set/result`, by id."""
    found: list[Message] = await asyncio.to_thread(
        sub.wait_for, lambda m: m.topic.endswith("/set/result"), within, count)
    return {m.json()["id"]: m.json() for m in found}


async def set_value(sub: Subscriber, tag: str, value: Any, write_id: str) -> dict[str, Any]:
    await asyncio.to_thread(sub.publish, f"{PREFIX}/{DEVICE}/{tag}/set",
                            json.dumps({"value": value, "id": write_id}))
    found = await asyncio.to_thread(
        sub.wait_for, lambda m: m.topic == result_topic(tag) and m.json()["id"] == write_id, 15.0)
    answer: dict[str, Any] = found[0].json()
    return answer


async def test_a_write_answered_not_done_is_never_done(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    """32 writes to a device that takes 250 ms a write: those that cannot be done in time are
    answered so, and exactly the writes answered `ok` reach the device, then or later.

    Before: the forwarder answered "no answer within 6s" to the last ones, and the collector wrote
    them anyway afterwards."""
    async with plant(tmp_path, broker, subscriber, write_timeout=6.0, write_delay=0.25) as p:
        sent: dict[str, tuple[str, int]] = {}
        for round_ in range(4):
            for i, tag in enumerate(SETPOINTS):
                write_id = f"w{round_}-{i}"
                value = 1000 + round_ * 100 + i  # unique: what the device took tells which write it was
                sent[write_id] = (tag, value)
                subscriber.publish(f"{PREFIX}/{DEVICE}/{tag}/set", json.dumps({"value": value, "id": write_id}))
        got = await answers(subscriber, len(sent))
        assert set(got) == set(sent)
        await asyncio.sleep(2.0)  # a write still queued in the collector would reach the device now

        written = {(r.address, r.values[0]) for r in p.device.writes() if r.function_code == 6 and r.values}
        answered_ok = {(ADDRESS[tag], value) for write_id, (tag, value) in sent.items() if got[write_id]["ok"]}
        refused = {write_id: got[write_id]["error"] for write_id in sent if not got[write_id]["ok"]}
        assert written == answered_ok, f"written but not answered ok: {sorted(written - answered_ok)}"
        assert answered_ok, "some writes are done in time"
        assert refused, "the device cannot take 32 writes in time: some are refused"
        assert all(error.startswith("expired: not written") for error in refused.values()), refused


async def test_a_value_that_overflows_after_scaling_is_refused_and_not_written(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    async with plant(tmp_path, broker, subscriber) as p:
        # speed: float64 with scale 0.001: 1e308 / 0.001 is inf, which the register took before
        answer = await set_value(subscriber, "speed", 1e308, "big")
        assert answer == {"id": "big", "ok": False,
                          "error": "speed: 1e+308 is out of range for float64 after scale and offset"}
        answer = await set_value(subscriber, "run", 2, "two")  # Boolean: true/false, 0/1 only
        assert answer == {"id": "two", "ok": False, "error": "run is a bool: write true, false, 1 or 0, not 2"}
        assert p.device.writes() == []
        assert await set_value(subscriber, "speed", 12.5, "ok") == {"id": "ok", "ok": True}
        assert len(p.device.written(16, ADDRESS["speed"])) == 1


async def test_write_limits_refuse_a_value_outside_them_with_the_limit(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    async with plant(tmp_path, broker, subscriber, limits={"write_min": 0, "write_max": 150}) as p:
        answer = await set_value(subscriber, "limit", 150.5, "high")
        assert answer == {"id": "high", "ok": False, "error": "limit: 150.5 is above its write_max 150"}
        answer = await set_value(subscriber, "limit", -1, "low")
        assert answer == {"id": "low", "ok": False, "error": "limit: -1 is below its write_min 0"}
        assert p.device.writes() == []
        assert await set_value(subscriber, "limit", 150, "ok") == {"id": "ok", "ok": True}
        assert p.device.written(6, ADDRESS["limit"]) == [1500]


async def test_a_write_made_whose_read_back_fails_is_answered_ok(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    """Before: "write failed: exception 4: server device failure", and the device held the value."""
    async with plant(tmp_path, broker, subscriber) as p:
        p.device.failing_reads.add(ADDRESS["sp1"])  # the read-back of sp1 (polls read from address 0)
        assert await set_value(subscriber, "sp1", 77, "w") == {"id": "w", "ok": True}
        assert p.device.written(6, ADDRESS["sp1"]) == [77]
