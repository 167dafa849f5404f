"""Rogue hand-off peers against a running forwarder (real Mosquitto): another local user, a second
peer under a collector's name, and readings crafted to reach the forwarder's own `/set` topic."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from collectors.core.handoff import encode_frame, read_frame
from collectors.core.model import Reading, WriteRequest, WriteResult
from collectors.forwarder.app import Forwarder
from collectors.forwarder.config import ForwarderConfig
from tests.forwarder.helpers import collector, config_dict, until
from tests.support.broker import Mosquitto
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.security

TS = 1_764_316_800_000
ROGUE_UID = 65534
TEMPERATURE = "fieldgate/line3/press-1/temperature"

# Runs as uid 65534 with the system Python (stdlib only): connects, says hello as the modbus
# collector, hands off a reading for a real tag, and prints what happened as one JSON line.
ROGUE = r"""
import json, socket, struct, sys
out = {}
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect": type(exc).__name__}))
    sys.exit(0)
out["connect"] = "ok"
def frame(m):
    body = json.dumps(m).encode()
    return struct.pack(">I", len(body)) + body
try:
    s.sendall(frame({"t": "hello", "collector": "modbus", "epoch": "rogue"}))
    s.sendall(frame({"t": "batch", "seq": 1, "r": [["press-1", "temperature", 666.0, int(sys.argv[2]), "good"]]}))
    head = s.recv(4)
    out["answer"] = json.loads(s.recv(65536)) if len(head) == 4 else "closed"
except OSError as exc:
    out["answer"] = type(exc).__name__
print(json.dumps(out))
"""


def run_rogue(socket: Path) -> dict[str, Any]:
    done = subprocess.run(
        ["setpriv", "--reuid", str(ROGUE_UID), "--regid", str(ROGUE_UID), "--clear-groups",
         "/usr/bin/python3", "-c", ROGUE, str(socket), str(TS)],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return dict(json.loads(done.stdout))


def forwarder_config(tmp_path: Path, broker: Mosquitto, socket: Path) -> ForwarderConfig:
    data = config_dict(tmp_path, broker)
    data["handoff"]["socket"] = str(socket)
    return ForwarderConfig.model_validate(data)


def recording(written: list[WriteRequest]) -> Callable[[WriteRequest], Awaitable[WriteResult]]:
    """A collector's write handler that notes each write and answers ok."""

    async def on_write(request: WriteRequest) -> WriteResult:
        written.append(request)
        return WriteResult(request.id, request.device, request.tag, True)

    return on_write


async def test_another_local_user_cannot_reach_the_socket_nor_hand_off_readings(
    tmp_path: Path, open_dir: Path, broker: Mosquitto, subscriber: Subscriber, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "collectors")
    socket = open_dir / "run" / "handoff.sock"  # the forwarder makes run/ itself
    config = forwarder_config(tmp_path, broker, socket)
    async with Forwarder(config) as forwarder:
        await until(lambda: forwarder.session.connected, 10, "the broker session")
        # 1. as deployed: the directory keeps the other user out
        assert await asyncio.to_thread(run_rogue, socket) == {"connect": "PermissionError"}
        # 2. the directory opened (a careless chmod, a shared volume): the peer check still refuses
        socket.parent.chmod(0o755)
        socket.chmod(0o666)
        answers = [await asyncio.to_thread(run_rogue, socket) for _ in range(2)]
        await asyncio.sleep(0.5)
        metrics = forwarder.metrics.render()
    closed = ("closed", "ConnectionResetError", "BrokenPipeError")  # no answer, whichever way the close shows
    assert all(a["connect"] == "ok" and a["answer"] in closed for a in answers), answers
    assert not subscriber.on_topic(TEMPERATURE)  # the rogue's 666 was never published
    assert "fieldgate_forwarder_handoff_refused_connections_total 2" in metrics
    refusals = [r for r in caplog.records if f"refused a connection from uid {ROGUE_UID}" in r.getMessage()]
    assert [r.levelname for r in refusals] == ["ERROR", "DEBUG"]  # once per uid, then quiet
    assert "only uid 0, the forwarder's own, may connect" in refusals[0].getMessage()


async def test_a_second_peer_named_modbus_gets_no_writes_and_leaves_the_real_ones_routing(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    config = forwarder_config(tmp_path, broker, tmp_path / "run" / "handoff.sock")
    written: list[WriteRequest] = []
    on_write = recording(written)

    def ask(write_id: str) -> dict[str, Any]:
        topic = "fieldgate/line3/press-1/run/set"
        subscriber.publish(topic, json.dumps({"value": 1, "id": write_id}))
        (answer,) = subscriber.wait_for(lambda m: m.topic == topic + "/result" and write_id in m.payload.decode(), 10)
        return dict(answer.json())

    async with Forwarder(config) as forwarder, collector(config, on_write=on_write):
        await until(lambda: forwarder.session.connected and forwarder.handoff.collectors == ["modbus"], 10,
                    "broker and collector")
        await asyncio.sleep(0.3)  # the /set subscription follows CONNACK
        reader, writer = await asyncio.open_unix_connection(str(config.handoff.socket))
        writer.write(encode_frame({"t": "hello", "collector": "modbus", "epoch": "impostor"}))
        refusal = await asyncio.wait_for(read_frame(reader), 5)
        first = await asyncio.to_thread(ask, "w1")  # while the impostor's connection is still open
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.2)
        second = await asyncio.to_thread(ask, "w2")  # after it left
    assert refusal["t"] == "error" and "already connected" in refusal["error"]
    assert first == {"id": "w1", "ok": True} and second == {"id": "w2", "ok": True}
    assert [w.id for w in written] == ["w1", "w2"]  # both reached the real collector


async def test_readings_named_to_hit_the_set_topic_are_dropped_and_write_nothing(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    config = forwarder_config(tmp_path, broker, tmp_path / "run" / "handoff.sock")
    written: list[WriteRequest] = []
    on_write = recording(written)

    async with Forwarder(config) as forwarder, collector(config, on_write=on_write) as client:
        await until(lambda: forwarder.session.connected, 10, "the broker session")
        await asyncio.sleep(0.3)  # the /set subscription follows CONNACK
        client.publish([
            Reading("press-1", "run/set", 1, TS),
            Reading("press-1/run", "set", 1, TS),
            Reading("press-1", "run", True, TS + 1),  # the good one in the same batch
            Reading("press-1", "#", 1, TS),
            Reading("x/#", "temperature", 1.0, TS),
            Reading("press-1", "temperature", 1.0, "soon"),  # type: ignore[arg-type]
            Reading("press-1", "temperature", 1.0, 10**18),
        ])
        assert await client.drain(10)  # acknowledged: the collector does not resend it forever
        await asyncio.to_thread(subscriber.wait_for, lambda m: m.topic == "fieldgate/line3/press-1/run", 10)
        await asyncio.sleep(0.5)  # a write would be routed within this
        healthy, _ = forwarder.metrics.health()
        metrics = forwarder.metrics.render()
    assert written == []
    assert not [m.topic for m in subscriber.messages if "/set" in m.topic or m.topic.startswith("x/")]
    assert healthy
    assert 'fieldgate_forwarder_handoff_rejected_total{collector="modbus",reason="bad_name"} 4' in metrics
    assert 'fieldgate_forwarder_handoff_rejected_total{collector="modbus",reason="bad_timestamp"} 2' in metrics
