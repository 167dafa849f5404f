"""The forwarder under `fieldgate up` (process runtime) when the config changes: a device edit
is taken in place (the same process, the same MQTT session), a change of its MQTT settings
recreates it with one `offline` (json) or one NDEATH whose bdSeq is the last NBIRTH's
(Sparkplug), and no reading is lost either way.

A real Mosquitto (its log counts the forwarder's CONNECTs), a real Modbus collector and a
Modbus device whose counter register counts its own reads (tests/support/counting_modbus.py).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.demo import free_port_run
from gateway.runtime.common import RunDir
from tests.gateway.test_process_runtime import popen_cli, service_pids, stop, wait_sync
from tests.support import sparkplug as sp
from tests.support.broker import Mosquitto, free_port, wait_port
from tests.support.counting import CountingDevice, device_yaml, missing, repeated, sparkplug_counter
from tests.support.mqtt import Message, Subscriber

pytestmark = pytest.mark.sim

GATEWAY = """\
gateway: {{id: line9, group: plant1}}
mqtt: {{host: 127.0.0.1, port: {broker}, qos: 1, format: {format}, keepalive: {keepalive}}}
metrics: {{port: {metrics}}}
buffer: {{dir: {buffer}}}
runtime: process
"""

LEVEL = """\
  - name: level
    table: holding
    address: 1
    type: uint16
    unit: cm
"""
PREFIX = "fieldgate/line9"
SPB = "spBv1.0/plant1"


class Plant:
    """A config directory on one counting device, run by `fieldgate up` until the block ends."""

    def __init__(
        self, tmp_path: Path, broker: Mosquitto, device: CountingDevice, format: str, extra: dict[str, str]
    ) -> None:
        self.dir = tmp_path / "plant"
        (self.dir / "devices").mkdir(parents=True)
        self.gateway = self.dir / "gateway.yaml"
        self.device = self.dir / "devices" / "press-1.yaml"
        self.values = {"broker": broker.port, "format": format, "keepalive": "30s", "metrics": free_port_run(3),
                       "buffer": tmp_path / "buffer"}
        self.gateway.write_text(GATEWAY.format(**self.values))
        self.device.write_text(device_yaml(device.port))
        for name, text in extra.items():
            (self.dir / "devices" / f"{name}.yaml").write_text(text)
        self.port = device.port
        self.log = tmp_path / "up.log"
        self.run_dir = RunDir.for_config(self.dir)
        self.broker = broker

    def pids(self) -> dict[str, int | None]:
        return service_pids(self.run_dir)

    def connects(self) -> int:
        """CONNECTs the broker accepted from the forwarder."""
        return self.broker.log.read_text(errors="replace").count(" as fieldgate-line9 (")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def running(
    tmp_path: Path, broker: Mosquitto, format: str, extra: dict[str, str] | None = None
) -> Iterator[tuple[Plant, Subscriber]]:
    """`extra`: more device files (name -> text)."""
    with CountingDevice() as device:
        plant = Plant(tmp_path, broker, device, format, extra or {})
        sub = Subscriber(broker.host, broker.port, [f"{PREFIX}/#", "spBv1.0/#"])
        up: subprocess.Popen[bytes] | None = None
        try:
            up = popen_cli(plant.log, "up", str(plant.dir))
            services = {"forwarder", "modbus"} | ({"opcua"} if extra else set())
            wait_sync(lambda: set(plant.pids()) == services and all(plant.pids().values()), what="the services")
            yield plant, sub
        finally:
            if up is not None:
                stop(up)
            sub.close()


def json_counter(messages: list[Message]) -> list[int]:
    return [int(m.json()["value"]) for m in messages if m.topic == f"{PREFIX}/press-1/counter"]


def settle(sub: Subscriber, topic: str, since: float, count: int = 10, within: float = 60.0) -> None:
    sub.wait_for(lambda m: m.topic == topic and m.at > since, within, count=count)


def test_a_tag_added_reloads_the_forwarder_in_place(tmp_path: Path, broker: Mosquitto) -> None:
    with running(tmp_path, broker, "json") as (plant, sub):
        settle(sub, f"{PREFIX}/press-1/counter", 0)
        pids = plant.pids()
        assert plant.connects() == 1
        plant.device.write_text(device_yaml(plant.port, extra=LEVEL))
        level = sub.wait_for(lambda m: m.topic == f"{PREFIX}/press-1/level", 60)[0]
        assert level.json()["unit"] == "cm"
        settle(sub, f"{PREFIX}/press-1/counter", level.at)
        log = plant.log_text()
        assert "reload forwarder in place" in log and "reload modbus in place" in log
        assert "recreate forwarder" not in log
        assert plant.pids() == pids  # neither process was replaced
        assert plant.connects() == 1  # the same MQTT session
        status = [m.payload for m in list(sub.messages) if m.topic == f"{PREFIX}/status"]
        assert status == [b"online"], status
        counter = json_counter(list(sub.messages))
        assert missing(counter) == [] and repeated(counter) == 0


def test_a_forwarder_recreate_says_offline_once_and_loses_nothing(tmp_path: Path, broker: Mosquitto) -> None:
    with running(tmp_path, broker, "json") as (plant, sub):
        settle(sub, f"{PREFIX}/press-1/counter", 0)
        pids = plant.pids()
        plant.gateway.write_text(GATEWAY.format(**{**plant.values, "keepalive": "20s"}))
        wait_sync(lambda: plant.pids().get("forwarder") not in (None, pids["forwarder"]), 60, "a new forwarder")
        again = sub.wait_for(lambda m: m.topic == f"{PREFIX}/status" and m.payload == b"online", 60, count=2)[1]
        settle(sub, f"{PREFIX}/press-1/counter", again.at, count=20)
        assert "recreate forwarder" in plant.log_text()
        assert plant.pids()["modbus"] == pids["modbus"]
        assert plant.connects() == 2
        status = [m.payload for m in list(sub.messages) if m.topic == f"{PREFIX}/status"]
        assert status == [b"online", b"offline", b"online"], status
        counter = json_counter(list(sub.messages))
        assert missing(counter) == [], "readings the collector handed off while the forwarder was away"
        assert repeated(counter) == 0


def test_a_sparkplug_forwarder_recreate_is_a_clean_ndeath_then_nbirth(tmp_path: Path, broker: Mosquitto) -> None:
    with running(tmp_path, broker, "sparkplug") as (plant, sub):
        settle(sub, f"{SPB}/DDATA/line9/press-1", 0)
        pids = plant.pids()
        plant.gateway.write_text(GATEWAY.format(**{**plant.values, "keepalive": "20s"}))
        wait_sync(lambda: plant.pids().get("forwarder") not in (None, pids["forwarder"]), 60, "a new forwarder")
        reborn = sub.wait_for(lambda m: m.topic == f"{SPB}/NBIRTH/line9", 60, count=2)[1]
        settle(sub, f"{SPB}/DDATA/line9/press-1", reborn.at, count=10)
        messages = list(sub.messages)
        node = [(m.topic.split("/")[2], sp.decode(m.payload).metric("bdSeq").value) for m in messages
                if m.topic in (f"{SPB}/NBIRTH/line9", f"{SPB}/NDEATH/line9")]
        first = node[0][1]
        assert node == [("NBIRTH", first), ("NDEATH", first), ("NBIRTH", (first + 1) % 256)], node
        counter = sparkplug_counter(messages, "plant1", "line9")
        assert missing(counter) == [], "readings the collector handed off while the forwarder was away"


OVEN = """\
name: oven-2
protocol: opcua
endpoint: opc.tcp://127.0.0.1:{port}
subscription: {{publishing_interval: 200ms, sampling_interval: 100ms}}
tags:
  - name: temperature
    node: "ns=2;s=Oven.Temperature"
    unit: degC
    simulate: {{kind: ramp, min: 0, max: 100, period: 10s}}
{extra}"""

ZONE = """\
  - name: zone
    node: "ns=2;s=Oven.Zone"
    simulate: {kind: counter, min: 0, max: 100000, step: 5}
"""


def test_an_opcua_tag_added_is_born_by_its_device_alone(tmp_path: Path, broker: Mosquitto) -> None:
    """Sparkplug, a real OPC UA collector: the new tag's datatype comes from its server, and its
    device's one DBIRTH announces it; the node and the Modbus device are not born again."""
    port = free_port()
    sim = tmp_path / "oven-sim.yaml"
    sim.write_text(OVEN.format(port=port, extra=ZONE))
    simulator = popen_cli(tmp_path / "simulator.log", "simulate", str(sim))
    try:
        wait_port(port, timeout=30)
        with running(tmp_path, broker, "sparkplug", extra={"oven-2": OVEN.format(port=port, extra="")}) as (
                plant, sub):
            settle(sub, f"{SPB}/DDATA/line9/oven-2", 0, count=5)
            settle(sub, f"{SPB}/DDATA/line9/press-1", 0, count=5)
            pids = plant.pids()
            before = len(sub.messages)
            (plant.dir / "devices" / "oven-2.yaml").write_text(OVEN.format(port=port, extra=ZONE))
            birth = sub.wait_for(lambda m: m.topic == f"{SPB}/DBIRTH/line9/oven-2" and m.at > 0, 60,
                                 count=2)[1]
            zone = sp.decode(birth.payload).metric("zone")
            data = sub.wait_for(lambda m: m.topic == f"{SPB}/DDATA/line9/oven-2" and m.at > birth.at and any(
                x.alias == zone.alias for x in sp.decode(m.payload).metrics), 30)[0]
            settle(sub, f"{SPB}/DDATA/line9/press-1", data.at, count=5)
            after = list(sub.messages)[before:]
            assert "reload forwarder in place" in plant.log_text()
            assert plant.pids() == pids and plant.connects() == 1
            topics = [m.topic for m in after if "/DDATA/" not in m.topic]
            assert topics == [f"{SPB}/DBIRTH/line9/oven-2"], topics  # one birth, of the changed device
            assert zone.datatype == sp.DOUBLE, zone  # the datatype the collector read from the server
            assert [m.name for m in sp.decode(birth.payload).metrics] == ["temperature", "zone"]
    finally:
        stop(simulator)
