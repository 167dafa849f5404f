"""Huge commands (issue 9, item 10): a 7.9 MB `/set` produced a 7.9 MB `/set/result`.

Payloads over 64 KiB are refused before they are parsed (json `/set`, Sparkplug DCMD), and
what an answer echoes of a refused value is cut short. Real Mosquitto, real hand-off.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from collectors.core.model import Reading, WriteRequest, WriteResult
from collectors.forwarder.app import Forwarder
from collectors.forwarder.formats import MAX_COMMAND_BYTES
from tests.forwarder.helpers import collector, make_config, until
from tests.support import sparkplug as sp
from tests.support.broker import Mosquitto
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.sim

TS = 1_764_316_800_000
SET = "fieldgate/line3/press-1/run/set"


async def echoing_refusal(request: WriteRequest) -> WriteResult:
    """As the collectors' codecs word it: the refused value is quoted in the error."""
    return WriteResult(request.id, request.device, request.tag, False,
                       f"run is a bool: write true, false, 1 or 0, not {request.value!r}")


async def test_a_huge_set_is_refused_unparsed_and_a_refusal_echoes_a_short_value(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    config = make_config(tmp_path, broker)
    async with Forwarder(config) as forwarder, collector(config, on_write=echoing_refusal):
        await until(lambda: forwarder.handoff.serving and forwarder.session.connected, 10, "connected")
        await until(lambda: "modbus" in forwarder.handoff.collectors, 10, "the collector on the hand-off")
        huge = orjson.dumps({"value": "x" * 2_000_000, "id": "big"})
        await asyncio.to_thread(subscriber.publish, SET, huge)
        (big,) = await asyncio.to_thread(subscriber.wait_for, lambda m: m.topic == SET + "/result", 10)
        # Under the cap, the collector refuses and quotes the value: the answer quotes 300 characters of it.
        await asyncio.to_thread(subscriber.publish, SET, orjson.dumps({"value": "y" * 60_000, "id": "id" * 500}))
        _, long = await asyncio.to_thread(subscriber.wait_for, lambda m: m.topic == SET + "/result", 10, 2)
        exposed = forwarder.metrics.render()
    assert big.json() == {
        "id": "", "ok": False,
        "error": f"payload of {len(huge)} bytes is over the limit of {MAX_COMMAND_BYTES} bytes for a write",
    }
    assert len(long.payload) < 600, len(long.payload)
    body = long.json()
    assert body["error"].startswith("run is a bool: write true, false, 1 or 0, not 'yyy")
    assert body["error"].endswith("…")
    assert body["id"] == "id" * 64 + "…"
    assert "fieldgate_forwarder_set_payloads_refused_total 1\n" in exposed


async def test_a_dcmd_over_the_cap_writes_nothing(tmp_path: Path, broker: Mosquitto, subscriber: Subscriber) -> None:
    config = make_config(tmp_path, broker, format="sparkplug")
    asked: list[WriteRequest] = []

    async def on_write(request: WriteRequest) -> WriteResult:
        asked.append(request)
        return WriteResult(request.id, request.device, request.tag, True)

    async with Forwarder(config) as forwarder, collector(config, on_write=on_write) as client:
        client.publish([Reading("press-1", "run", False, TS)])
        await until(lambda: forwarder.format.ready, 15, "the births")
        dcmd = "spBv1.0/plant1/DCMD/line3/press-1"
        padding = [sp.command_metric("z" * 1000, sp.STRING, name=f"unknown-{i}") for i in range(70)]
        too_big = sp.command([sp.command_metric(True, sp.BOOLEAN, name="run"), *padding])
        assert len(too_big) > MAX_COMMAND_BYTES
        await asyncio.to_thread(subscriber.publish, dcmd, too_big, 1)
        # A small one after it still writes: the cap refuses the message, nothing else.
        small = sp.command([sp.command_metric(True, sp.BOOLEAN, name="run")])
        await asyncio.to_thread(subscriber.publish, dcmd, small, 1)
        await until(lambda: len(asked) >= 1, 10, "the small DCMD's write")
        await asyncio.sleep(0.5)
        exposed = forwarder.metrics.render()
    assert [(r.tag, r.value) for r in asked] == [("run", True)]
    assert "fieldgate_forwarder_sparkplug_commands_refused_total 1\n" in exposed


async def test_a_set_value_nested_too_deep_for_the_hand_off_is_answered(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the fuzzer: orjson reads 500 levels but writes 254, so routing the write raised
    in the message callback (a traceback, and no answer)."""
    config = make_config(tmp_path, broker)
    async with Forwarder(config) as forwarder, collector(config, on_write=echoing_refusal):
        await until(lambda: "modbus" in forwarder.handoff.collectors and forwarder.session.connected, 10,
                    "the collector on the hand-off")
        deep = b'{"id": "deep", "value": ' + b"[" * 500 + b"]" * 500 + b"}"
        await asyncio.to_thread(subscriber.publish, SET, deep)
        (answer,) = await asyncio.to_thread(subscriber.wait_for, lambda m: m.topic == SET + "/result", 10)
    assert answer.json() == {"id": "deep", "ok": False, "error": '"value" is nested too deep to be a tag value'}
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info]
