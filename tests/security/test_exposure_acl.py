"""The ACL `fieldgate render --acl` writes, loaded into a real Mosquitto with a password file:
a reader's write never reaches the forwarder, a writer's does, and the gateway still publishes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.core.model import Reading, WriteRequest, WriteResult
from collectors.forwarder.app import Forwarder
from collectors.forwarder.config import ForwarderConfig
from tests.forwarder.helpers import collector, config_dict, until
from tests.support import sparkplug as sp
from tests.support.broker import Mosquitto
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.security

ROOT = Path(__file__).resolve().parents[2]
USERS = {"gw": "gw-pass", "scada": "scada-pass", "viewer": "viewer-pass"}
TS = 1_764_316_800_000


def render_acl(tmp_path: Path, fmt: str) -> Path:
    """`fieldgate render plant -o out --acl FILE --writer scada --reader viewer`, as a user runs it."""
    plant = tmp_path / "plant"
    (plant / "devices").mkdir(parents=True)
    (plant / "gateway.yaml").write_text(
        f"gateway: {{id: line3, group: plant1}}\nmqtt: {{username: gw, format: {fmt}}}\n")
    (plant / "devices" / "press-1.yaml").write_text(
        "name: press-1\nprotocol: modbus\nconnection: {tcp: {host: 127.0.0.1, port: 5020}}\ntags:\n"
        "  - {name: run, table: coil, address: 0, type: bool, writable: true}\n")
    acl = tmp_path / "mosquitto.acl"
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "render", str(plant), "-o", str(tmp_path / "out"),
         "--acl", str(acl), "--writer", "scada", "--reader", "viewer"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {acl} (Mosquitto ACL: gw, writers scada, readers viewer)" in done.stdout
    return acl


@pytest.fixture(params=["json", "sparkplug"])
def secured(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Mosquitto]]:
    fmt = str(request.param)
    broker = Mosquitto.secured(tmp_path, USERS, render_acl(tmp_path, fmt)).start()
    try:
        yield fmt, broker
    finally:
        broker.stop()


def account(broker: Mosquitto, user: str, topics: list[str]) -> Subscriber:
    return Subscriber(broker.host, broker.port, topics, username=user, password=USERS[user])


def set_request(fmt: str, request_id: str) -> tuple[str, bytes]:
    """A write of press-1/run = true, as a json `/set` or a Sparkplug DCMD."""
    if fmt == "json":
        return "fieldgate/line3/press-1/run/set", json.dumps({"value": True, "id": request_id}).encode()
    return "spBv1.0/plant1/DCMD/line3/press-1", sp.command([sp.command_metric(True, sp.BOOLEAN, name="run")])


async def test_only_a_writer_account_can_write_and_the_gateway_still_publishes(
    secured: tuple[str, Mosquitto], tmp_path: Path
) -> None:
    fmt, broker = secured
    data = config_dict(tmp_path, broker, format=fmt, username="gw", password=USERS["gw"])
    data["devices"] = [{"name": "press-1", "collector": "modbus",
                        "tags": [{"name": "run", "type": "bool", "writable": True}]}]
    config = ForwarderConfig.model_validate(data)
    asked: list[WriteRequest] = []

    async def on_write(request: WriteRequest) -> WriteResult:
        asked.append(request)
        return WriteResult(request.id, request.device, request.tag, True)

    everything = "fieldgate/line3/#" if fmt == "json" else "spBv1.0/plant1/+/line3/#"
    viewer = account(broker, "viewer", [everything])
    scada = account(broker, "scada", [everything])
    try:
        async with Forwarder(config), collector(config, on_write=on_write) as client:
            client.publish([Reading("press-1", "run", False, TS)])
            # the gateway's account publishes: readers and writers see its data
            published = "fieldgate/line3/press-1/run" if fmt == "json" else "spBv1.0/plant1/DBIRTH/line3/press-1"
            for sub in (viewer, scada):
                await asyncio.to_thread(sub.wait_for, lambda m: m.topic == published, 20)
            # a reader's write is dropped by the broker: the forwarder never sees it
            topic, payload = set_request(fmt, "from-viewer")
            await asyncio.to_thread(viewer.publish, topic, payload, 1)
            await asyncio.sleep(1.0)
            assert asked == []
            # a writer's write reaches the forwarder and the collector
            topic, payload = set_request(fmt, "from-scada")
            await asyncio.to_thread(scada.publish, topic, payload, 1)
            await until(lambda: len(asked) >= 1, 15, "the writer's write at the collector")
            if fmt == "json":
                await asyncio.to_thread(viewer.wait_for, lambda m: m.topic.endswith("/run/set/result")
                                        and m.json()["id"] == "from-scada", 10)
            # a reading published after the writes arrives: publishing goes on
            client.publish([Reading("press-1", "run", True, int(time.time() * 1000))])
            data_topic = "fieldgate/line3/press-1/run" if fmt == "json" else "spBv1.0/plant1/DDATA/line3/press-1"
            await asyncio.to_thread(viewer.wait_for, lambda m: m.topic == data_topic and m.at > time.time() - 5, 15)
    finally:
        viewer.close()
        scada.close()
    assert [(r.device, r.tag, r.value) for r in asked] == [("press-1", "run", True)]
    if fmt == "json":
        assert asked[0].id == "from-scada"
    # the viewer saw its own write go nowhere: no result for it
    assert not [m for m in viewer.messages if m.topic.endswith("/set/result") and b"from-viewer" in m.payload]


def test_a_reader_cannot_publish_as_the_gateway(secured: tuple[str, Mosquitto]) -> None:
    fmt, broker = secured
    forged = "fieldgate/line3/press-1/run" if fmt == "json" else "spBv1.0/plant1/NDEATH/line3"
    gateway = account(broker, "gw", [forged])
    viewer = account(broker, "viewer", ["#"])
    try:
        viewer.publish(forged, b'{"value": true}', 1)
        time.sleep(1.0)
        assert [m for m in gateway.messages if m.topic == forged] == []
    finally:
        gateway.close()
        viewer.close()
