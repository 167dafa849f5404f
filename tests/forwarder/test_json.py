"""The json format end to end: a real collector hand-off in, a real Mosquitto out."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from collectors.core.model import Reading, WriteRequest, WriteResult
from collectors.forwarder.app import Forwarder
from collectors.forwarder.config import ForwarderConfig
from tests.forwarder.helpers import collector, config_dict, make_config, until
from tests.support.broker import Mosquitto
from tests.support.entry import run_entry_point
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.sim

TS = 1_764_316_800_123  # 2025-11-28T08:00:00.123Z


async def test_layout_tag_publishes_one_message_per_reading(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    config = make_config(tmp_path, broker, qos=1)
    async with Forwarder(config), collector(config) as client, collector(config, "opcua") as opcua:
        client.publish([
            Reading("press-1", "temperature", 21.5, TS),
            Reading("press-1", "pressure", 3.25, TS + 1, "bad", "timeout"),
            Reading("press-1", "run", True, TS + 2, "uncertain"),
            Reading("press-1", "unknown_tag", "x", TS + 3),  # not in the catalog: dropped at the hand-off
        ])
        opcua.publish([Reading("oven-2", "setpoint", 180.5, TS + 3)])
        messages = await asyncio.to_thread(
            subscriber.wait_for, lambda m: m.topic.startswith("fieldgate/line3/") and "status" not in m.topic,
            10, 4,
        )
    by_topic = {m.topic: (m.json(), m.qos, m.retain) for m in messages}
    assert by_topic["fieldgate/line3/press-1/temperature"] == (
        {"value": 21.5, "ts": "2025-11-28T08:00:00.123Z", "quality": "good", "unit": "degC"}, 1, False
    )
    assert by_topic["fieldgate/line3/press-1/pressure"][0] == {
        "value": 3.25, "ts": "2025-11-28T08:00:00.124Z", "quality": "bad", "unit": "bar", "reason": "timeout",
    }
    assert by_topic["fieldgate/line3/press-1/run"][0]["quality"] == "uncertain"
    assert by_topic["fieldgate/line3/oven-2/setpoint"][0]["unit"] == "degC"
    assert not [t for t in by_topic if "unknown_tag" in t]


async def test_layout_device_groups_a_batch_per_device(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    config = make_config(tmp_path, broker, layout="device", qos=0, topic_prefix="plant/l3", retain=True)
    async with Forwarder(config), collector(config) as client, collector(config, "opcua") as opcua:
        client.publish([
            Reading("press-1", "temperature", 21.5, TS),
            Reading("press-1", "pressure", 3.0, TS + 5),
        ])
        opcua.publish([Reading("oven-2", "setpoint", 180, TS + 7)])
        messages = await asyncio.to_thread(
            subscriber.wait_for, lambda m: m.topic.count("/") == 2 and "status" not in m.topic, 10, 2
        )
    press = next(m for m in messages if m.topic == "plant/l3/press-1")
    late = Subscriber(broker.host, broker.port, "plant/l3/press-1")  # retained: a late subscriber gets it
    try:
        retained = await asyncio.to_thread(late.wait_for, lambda m: True, 10)
        assert retained[0].retain and retained[0].payload == press.payload
    finally:
        late.close()
    assert press.json() == {
        "ts": "2025-11-28T08:00:00.128Z",
        "readings": {
            "temperature": {"value": 21.5, "ts": "2025-11-28T08:00:00.123Z", "quality": "good",
                            "unit": "degC"},
            "pressure": {"value": 3.0, "ts": "2025-11-28T08:00:00.128Z", "quality": "good", "unit": "bar"},
        },
    }
    oven = next(m for m in messages if m.topic == "plant/l3/oven-2")
    assert oven.json()["readings"]["setpoint"]["value"] == 180


async def test_status_online_retained_then_offline_on_shutdown(tmp_path: Path, broker: Mosquitto) -> None:
    config = make_config(tmp_path, broker)
    watcher = Subscriber(broker.host, broker.port, "fieldgate/line3/status")
    async with Forwarder(config) as forwarder:
        await until(lambda: forwarder.session.connected, 10, "the broker session")
        # joins after the forwarder connected: sees the retained status
        late = Subscriber(broker.host, broker.port, "fieldgate/line3/status")
        try:
            status = await asyncio.to_thread(late.wait_for, lambda m: True, 10)
            assert (status[0].payload, status[0].retain) == (b"online", True)
        finally:
            late.close()
    after = Subscriber(broker.host, broker.port, "fieldgate/line3/status")
    try:
        status = await asyncio.to_thread(after.wait_for, lambda m: True, 10)
        assert (status[0].payload, status[0].retain) == (b"offline", True)
        # A clean shutdown says goodbye itself and sends DISCONNECT, so the broker drops the
        # last will: one offline, not a second one from the will.
        await asyncio.sleep(1.5)
        assert [m.payload for m in watcher.on_topic("fieldgate/line3/status")] == [b"online", b"offline"]
    finally:
        after.close()
        watcher.close()


async def test_writes_are_routed_to_the_owning_collector_and_answered(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    config = make_config(tmp_path, broker)
    seen: list[WriteRequest] = []

    async def on_write(request: WriteRequest) -> WriteResult:
        seen.append(request)
        if request.value == "slow":
            await asyncio.sleep(5)
        if request.value == 99:
            return WriteResult(request.id, request.device, request.tag, False, "value out of range")
        return WriteResult(request.id, request.device, request.tag, True)

    async with Forwarder(config, write_timeout=1.0) as forwarder, collector(config, on_write=on_write):
        await until(lambda: forwarder.session.connected and forwarder.handoff.collectors == ["modbus"], 10,
                    "broker and collector")
        await asyncio.sleep(0.3)  # the /set subscription follows CONNACK

        def ask(tag: str, payload: bytes | str, device: str = "press-1") -> dict[str, object]:
            topic = f"fieldgate/line3/{device}/{tag}/set"
            before = len(subscriber.on_topic(topic + "/result"))
            subscriber.publish(topic, payload)
            answers = subscriber.wait_for(lambda m: m.topic == topic + "/result", 10, before + 1)
            return dict(answers[-1].json())

        answers = await asyncio.to_thread(lambda: [
            ask("run", json.dumps({"value": 1, "id": "a1"})),
            ask("run", json.dumps({"value": 99, "id": "a2"})),
            ask("temperature", json.dumps({"value": 1, "id": "a3"})),
            ask("nope", json.dumps({"value": 1, "id": "a4"})),
            ask("run", json.dumps({"value": 1, "id": "a5"}), device="ghost"),
            ask("setpoint", json.dumps({"value": 180, "id": "a6"}), device="oven-2"),
            ask("run", b"{not json"),
            ask("run", json.dumps({"id": "a8"})),
            ask("run", json.dumps([1, 2])),
            ask("run", json.dumps({"value": "slow", "id": "a10"})),
        ])
        metrics = forwarder.metrics.render()
    assert answers[0] == {"id": "a1", "ok": True}
    assert answers[1] == {"id": "a2", "ok": False, "error": "value out of range"}
    assert answers[2]["ok"] is False and "not writable" in str(answers[2]["error"])
    assert "no tag 'nope'" in str(answers[3]["error"])
    assert "unknown device 'ghost'" in str(answers[4]["error"])
    assert "collector 'opcua' is not connected" in str(answers[5]["error"])
    assert answers[6]["ok"] is False and "not JSON" in str(answers[6]["error"])
    assert answers[7] == {"id": "a8", "ok": False, "error": 'no "value" in the payload'}
    assert answers[8]["ok"] is False
    assert answers[9]["id"] == "a10" and "no answer from the collector within 1s" in str(answers[9]["error"])
    # the three payload errors are answered before routing, and counted apart from the writes
    assert "fieldgate_forwarder_set_payloads_refused_total 3\n" in metrics
    assert "fieldgate_forwarder_writes_total 7\n" in metrics
    assert "fieldgate_forwarder_writes_refused_total 6\n" in metrics
    # only the writes that passed the catalog reached the collector, with their values
    assert [(r.id, r.device, r.tag, r.value) for r in seen] == [
        ("a1", "press-1", "run", 1), ("a2", "press-1", "run", 99), ("a10", "press-1", "run", "slow"),
    ]


async def test_metrics_and_healthz(tmp_path: Path, broker: Mosquitto, port: int) -> None:
    config = ForwarderConfig.model_validate(config_dict(tmp_path, broker) | {"metrics": {"port": port}})
    async with Forwarder(config) as forwarder, collector(config) as client:
        client.publish([Reading("press-1", "count", i, TS + i) for i in range(100)])
        await until(lambda: forwarder.stats.readings_out == 100, 10, "100 readings out")

        async def get(path: str) -> tuple[str, str]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            data = (await reader.read()).decode()
            writer.close()
            head, _, body = data.partition("\r\n\r\n")
            return head.splitlines()[0], body

        status, body = await get("/metrics")
        assert "200" in status
        assert "fieldgate_forwarder_readings_in_total 100" in body
        assert "fieldgate_forwarder_readings_out_total 100" in body
        assert "fieldgate_forwarder_broker_connected 1" in body
        assert 'fieldgate_forwarder_buffered_readings{lane="backlog"} 0' in body
        status, body = await get("/healthz")
        assert "200" in status, body
        broker.stop()
        await until(lambda: not forwarder.session.connected, 10, "the loss to be noticed")
        status, body = await get("/healthz")  # an outage is degraded, not unhealthy (test_health.py)
        assert "200" in status and body.startswith(f"degraded: broker 127.0.0.1:{broker.port} not connected")
        status, body = await get("/metrics")
        assert "fieldgate_forwarder_broker_connected 0" in body
        broker.start()
        await until(lambda: forwarder.session.connected, 30, "the reconnect")
        status, body = await get("/metrics")
        assert "fieldgate_forwarder_reconnects_total 1" in body


def test_entry_point_refuses_a_bad_config_with_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "forwarder.yaml"
    bad.write_text(
        "gateway: {id: line3}\n"
        "mqtt:\n"
        "  qos: 3\n"
        "  layuot: device\n"
        "  password: s3cret-never-shown\n"
        "buffer: {durability: sometimes, max_bytes: lots}\n"
    )
    done = run_entry_point("collectors.forwarder", bad)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"{bad}:3:8: mqtt.qos: 3 is not one of 0, 1, 2 (QoS of readings in json mode (Sparkplug data is QoS 0))",
        f"{bad}:4:3: mqtt: unknown key 'layuot' (did you mean 'layout'?); allowed here: client_id, format, host, "
        "keepalive, layout, password, password_env, password_file, port, primary_host, qos, retain, tls, "
        "topic_prefix, username",
        f"{bad}:6:22: buffer.durability: 'sometimes' is not one of outage, always "
        "(outage: disk only while the broker is away | always: disk before every ack)",
        f"{bad}:6:44: buffer.max_bytes: 'lots' is not a size: write it like 4096, 64KiB, 256MiB or 1GB",
    ]


def test_entry_point_positions_errors_in_a_json_slice_and_in_broken_syntax(tmp_path: Path) -> None:
    rendered = tmp_path / "forwarder.json"  # the process runtime renders JSON
    rendered.write_text('{\n  "gateway": {"id": "line 3"},\n  "metrics": {"port": "ninety"}\n}\n')
    done = run_entry_point("collectors.forwarder", rendered)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0].startswith(f"{rendered}:2:21: gateway.id: 'line 3' is not allowed: a name holds letters")
    assert lines[1] == f"{rendered}:3:23: metrics.port: expected a whole number (got 'ninety')"
    broken = tmp_path / "broken.yaml"
    broken.write_text("gateway:\n  id: line3\n mqtt: {}\n")
    done = run_entry_point("collectors.forwarder", broken)
    assert done.returncode == 2 and done.stderr.startswith(f"{broken}:3:2: not valid YAML: ")
