"""`fieldgate fleet deploy|status` on a one-node swarm made by the test (and left at the end).

A two-gateway repository; the node carries one gateway's label. That gateway's forwarder and
Modbus collector run as Swarm services on the host network, poll `fieldgate simulate` on
127.0.0.1 and publish to a Mosquitto the test starts; the other gateway shows as unplaced.
Then a config change rolls out (the readings' widest gap is measured), and an update of both
gateways to an image that never turns healthy is rolled back by Swarm on the first one, the
deploy stops there (the second keeps its image), and readings come back.
Skipped where no engine answers, where the images are missing, or where the engine is
already part of a swarm (someone else's: never touched).
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker.stack import ROOT, Process, fieldgate, free_ports, image, modbus_rtu_device, modbus_tcp_device
from tests.support.broker import Mosquitto, free_port
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.docker

FORWARDER = image("forwarder")
MODBUS = image("collector-modbus")


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def swarm() -> Iterator[str]:
    """A one-node swarm on 127.0.0.1; yields the node id; always left at the end."""
    try:
        import docker as docker_py

        client = docker_py.from_env(timeout=30)
        info = client.info()
        images = [i for i in (FORWARDER, MODBUS) if not client.images.list(name=i)]
        client.close()
    except Exception as exc:  # no engine at all: the docker SDK raises several kinds
        pytest.skip(f"no Docker engine answers ({exc})")
    if images:
        pytest.skip(f"images not on the engine: {images}")
    if (info.get("Swarm") or {}).get("LocalNodeState") != "inactive":
        pytest.skip("this engine is already part of a swarm: not ours to change")
    made = docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    assert made.returncode == 0, made.stderr
    try:
        yield docker("info", "-f", "{{.Swarm.NodeID}}").stdout.strip()
    finally:
        docker("swarm", "leave", "--force")


def gateway_yaml(gateway_id: str, broker: int, metrics: int) -> str:
    return f"""\
gateway:
  id: {gateway_id}
mqtt:
  host: 127.0.0.1
  port: {broker}
  qos: 1
metrics:
  port: {metrics}
forwarder:
  image: {FORWARDER}
  cpus: 0.5
  memory: 128MiB
collectors:
  modbus:
    image: {MODBUS}
    cpus: 0.5
    memory: 128MiB
"""


class Fleet:
    def __init__(self, root: Path, broker: int) -> None:
        self.root = root
        self.repo = root / "fleet"
        self.stack = f"t{uuid.uuid4().hex[:8]}"
        self.placed, self.unplaced = f"{self.stack}-a", f"{self.stack}-b"
        (self.repo / "models").mkdir(parents=True)
        (self.repo / "fleet.yaml").write_text(
            f"stack: {self.stack}\nupdate: {{monitor: 8s}}\n"
            "health: {interval: 1s, timeout: 2s, retries: 3, start_period: 5s}\n")
        self.sim_port = free_port()
        device = modbus_tcp_device("press-1", self.sim_port)
        model = "\n".join(line for line in device.splitlines()
                          if not line.startswith(("name:", "connection:", "  tcp:", "unit:")))
        (self.repo / "models" / "press.yaml").write_text(model + "\n")
        for gateway in (self.placed, self.unplaced):
            folder = self.repo / "gateways" / gateway
            (folder / "devices").mkdir(parents=True)
            (folder / "gateway.yaml").write_text(gateway_yaml(gateway, broker, free_ports(3)))
            (folder / "devices" / "press-1.yaml").write_text(
                f"model: ../../../models/press.yaml\nname: press-1\n"
                f"connection:\n  tcp: {{host: 127.0.0.1, port: {self.sim_port}}}\nunit: 1\n")
        # a meter on a serial port: not for the swarm, left to the node's own supervisor
        (self.repo / "gateways" / self.unplaced / "devices" / "meter-9.yaml").write_text(
            modbus_rtu_device("meter-9", "/dev/ttyFGFLEET0"))
        sim_file = root / "sim.yaml"
        sim_file.write_text(device)
        self.simulator = Process(fieldgate("simulate", str(sim_file)), root / "sim.log")
        self.simulator.wait_for_output("simulating", 30)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(fieldgate("fleet", *args), capture_output=True, text=True, cwd=ROOT, timeout=300)

    def status(self) -> dict[tuple[str, str], dict[str, str]]:
        result = self.run("status", str(self.repo))
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        names = lines[0].split()
        starts = [lines[0].index(n) for n in names]
        table = {}
        for line in lines[1:]:
            cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
            row = dict(zip(names, cells, strict=True))
            table[(row["GATEWAY"], row["SERVICE"])] = row
        return table

    def wait_status(self, check: object, timeout: float, what: str) -> dict[tuple[str, str], dict[str, str]]:
        deadline = time.monotonic() + timeout
        while True:
            table = self.status()
            if check(table):  # type: ignore[operator]
                return table
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not reached after {timeout}s: {table}")
            time.sleep(1)

    def close(self) -> None:
        docker("stack", "rm", self.stack)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and docker(
                "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={self.stack}").stdout.strip():
            time.sleep(1)
        for kind in ("config", "secret"):
            names = docker(kind, "ls", "-q", "--filter", f"name={self.stack}-").stdout.split()
            if names:
                docker(kind, "rm", *names)
        volumes = docker("volume", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={self.stack}")
        for volume in volumes.stdout.split():
            docker("volume", "rm", "-f", volume)
        self.simulator.stop()


def widest_gap(times: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


@pytest.mark.timeout(600)
def test_fleet_on_a_one_node_swarm(swarm: str, tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker").start()
    fleet = Fleet(tmp_path, broker.port)
    unhealthy = f"fieldgate-test/unhealthy:{fleet.stack}"
    sub = Subscriber(broker.host, broker.port)
    try:
        assert docker("node", "update", "--label-add", f"fieldgate.gateway={fleet.placed}", swarm).returncode == 0
        started = time.monotonic()
        deployed = fleet.run("deploy", str(fleet.repo))
        assert deployed.returncode == 0, deployed.stderr
        assert f"{fleet.unplaced}: unplaced: no node carries the label fieldgate.gateway={fleet.unplaced}" \
            in deployed.stdout
        topic = f"fieldgate/{fleet.placed}/press-1/counter"
        sub.wait_for(lambda m: m.topic == topic, timeout=120)
        first_reading = time.monotonic() - started
        assert not [m for m in sub.messages if m.topic.startswith(f"fieldgate/{fleet.unplaced}/")]
        table = fleet.wait_status(
            lambda t: t[(fleet.placed, "modbus")]["HEALTH"] == "healthy"
            and t[(fleet.placed, "forwarder")]["HEALTH"] == "healthy", 60, "both healthy")
        row = table[(fleet.placed, "modbus")]
        assert row["REPLICAS"] == "1/1" and row["IMAGE"] == MODBUS and row["NODE"] not in ("-", "")
        assert float(table[(fleet.placed, "forwarder")]["READINGS/S"]) > 0
        assert table[(fleet.unplaced, "*")]["NODE"].startswith("unplaced")
        assert table[(fleet.unplaced, "modbus")]["REPLICAS"] == "0/1"
        serial = table[(fleet.unplaced, "meter-9 (serial)")]
        assert serial["NODE"] == "local supervisor" and serial["UPDATE"].startswith("fieldgate up local/")
        assert f"{fleet.unplaced}: serial devices meter-9 are not on the swarm: on its node run `fieldgate up " \
            in deployed.stdout
        print(f"\ndeploy -> first reading on the broker: {first_reading:.1f} s")
        print(subprocess.run(fieldgate("fleet", "status", str(fleet.repo)), capture_output=True, text=True,
                             cwd=ROOT).stdout)

        # A config change (the poll interval, in the shared model) rolls out as a new Swarm config,
        # gateway by gateway: deploy returns once the placed gateway's rollout is done.
        model = fleet.repo / "models" / "press.yaml"
        model.write_text(model.read_text().replace("poll: 250ms", "poll: 200ms"))
        sub.clear()
        rollout = time.monotonic()
        redeployed = fleet.run("deploy", str(fleet.repo))
        rolled = time.monotonic() - rollout
        assert redeployed.returncode == 0, redeployed.stdout + redeployed.stderr
        assert f"{fleet.placed}: modbus: updated" in redeployed.stdout, redeployed.stdout
        assert f"{fleet.placed}: forwarder:" not in redeployed.stdout  # its slice did not change
        table = fleet.status()
        assert table[(fleet.placed, "modbus")]["UPDATE"] == "updated"
        assert table[(fleet.placed, "forwarder")]["UPDATE"] == "-"
        configs = docker("config", "ls", "--format", "{{.Name}}", "--filter", f"name={fleet.stack}-").stdout.split()
        assert len([c for c in configs if f"-{fleet.placed}-modbus-" in c]) == 1, configs  # the old one pruned
        time.sleep(3)
        times = [m.at for m in sub.on_topic(topic)]
        gap = widest_gap(times)
        print(f"config rollout: deploy returned after {rolled:.1f} s (rollout done), widest gap in {topic}: "
              f"{gap:.2f} s")
        assert times and gap < 60

        # An image that never turns healthy, for both gateways: Swarm rolls the first one back, the
        # deploy stops there (exit 1) and the second keeps its image; readings come back.
        built = subprocess.run(["docker", "build", "-q", "-t", unhealthy, "-"], text=True, capture_output=True,
                               input=f'FROM {MODBUS}\nENTRYPOINT ["python3", "-c", '
                                     '"import time; time.sleep(100000)"]\n', timeout=120)
        assert built.returncode == 0, built.stderr
        for gateway_id in (fleet.placed, fleet.unplaced):
            gateway = fleet.repo / "gateways" / gateway_id / "gateway.yaml"
            gateway.write_text(gateway.read_text().replace(f"image: {MODBUS}", f"image: {unhealthy}"))
        sub.clear()
        update = time.monotonic()
        failed = fleet.run("deploy", str(fleet.repo))
        rollback = time.monotonic() - update
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert f"{fleet.placed}: modbus: rolled back" in failed.stdout, failed.stdout
        assert f"rollout stopped at {fleet.placed}; not updated: {fleet.unplaced}" in failed.stdout
        table = fleet.status()
        assert table[(fleet.placed, "modbus")]["UPDATE"] == "rolled back"
        assert table[(fleet.placed, "modbus")]["IMAGE"] == MODBUS
        assert table[(fleet.unplaced, "modbus")]["IMAGE"] == MODBUS
        back = time.time()
        sub.wait_for(lambda m: m.topic == topic and m.at > back, timeout=60)
        times = [m.at for m in sub.on_topic(topic)]
        print(f"failed update: rolled back, deploy returned after {rollback:.1f} s; widest gap "
              f"{widest_gap(times):.1f} s; readings continue")
        print(failed.stdout)
    finally:
        sub.close()
        fleet.close()
        with contextlib.suppress(Exception):
            docker("image", "rm", unhealthy)
        broker.stop()
