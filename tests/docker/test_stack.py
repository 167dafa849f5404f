"""`fieldgate up --runtime docker` on a real engine: a Modbus and an OPC UA simulator on the host,
the three containers, readings at a real Mosquitto, and what a plant engineer checks with
`docker inspect`, `docker kill` and an edited device file.

One stack serves the tests of this module in order (starting one costs ~15 s of a 2-core CI).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.docker.stack import Stack, after, image, modbus_tcp_device, opcua_device, readings
from tests.support.broker import Mosquitto, free_port
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.docker

SERVICES = {"forwarder", "modbus", "opcua"}


@pytest.fixture(scope="module")
def stack(
    engine: docker.DockerClient, module_broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("stack"), module_broker.port)
    try:
        stack.add_device("press-1", modbus_tcp_device("press-1", free_port()))
        stack.add_device("oven-2", opcua_device("oven-2", free_port()))
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def sub(module_broker: Mosquitto) -> Iterator[Subscriber]:
    subscriber = Subscriber(module_broker.host, module_broker.port)
    try:
        yield subscriber
    finally:
        subscriber.close()


def test_up_brings_readings_from_both_collectors(stack: Stack, sub: Subscriber) -> None:
    started = time.time()
    stack.up()
    counter = sub.wait_for(readings(stack.topic_prefix, "press-1", "counter"), timeout=120)[0]
    oven = sub.wait_for(readings(stack.topic_prefix, "oven-2", "temperature"), timeout=60)[0]
    temperature = sub.wait_for(readings(stack.topic_prefix, "press-1", "temperature"), timeout=30)[0]
    print(f"\nup -> first reading at the broker: {counter.at - started:.1f}s")
    assert isinstance(counter.json()["value"], int)
    assert counter.json()["quality"] == "good"
    assert temperature.json()["value"] == pytest.approx(21.5)
    assert temperature.json()["unit"] == "degC"
    assert oven.json()["value"] == pytest.approx(180.5)
    assert oven.json()["quality"] == "good"
    assert set(stack.containers()) == SERVICES


def test_containers_are_locked_down(stack: Stack) -> None:
    containers = stack.wait_containers(lambda c: set(c) == SERVICES, 30, "three containers")
    limits = {"forwarder": (0.5, 128), "modbus": (0.5, 128), "opcua": (0.5, 192)}
    for service, container in containers.items():
        attrs = container.attrs
        host = attrs["HostConfig"]
        cpus, mib = limits[service]
        assert host["NanoCpus"] == int(cpus * 1e9), service
        assert host["Memory"] == mib * 1024 * 1024, service
        assert host["MemorySwap"] == mib * 1024 * 1024, service
        assert host["PidsLimit"] and host["PidsLimit"] > 0, service
        assert host["ReadonlyRootfs"] is True, service
        assert host["CapDrop"] == ["ALL"], service
        assert not host["CapAdd"], service
        assert "no-new-privileges:true" in host["SecurityOpt"], service
        assert host["Privileged"] is False, service
        assert attrs["Config"]["User"] == "10001:10001", service
        assert not host["Devices"], f"{service} has devices it did not declare: {host['Devices']}"
        assert not host["DeviceCgroupRules"], service
        assert host["RestartPolicy"]["Name"] == "unless-stopped", service
        assert attrs["Config"]["Healthcheck"]["Test"][0] == "CMD", service
        assert attrs["Config"]["Labels"]["com.docker.compose.service"] == service
        assert attrs["Config"]["Labels"]["io.fieldgate.config-hash"]
    # The user is real inside: the process runs as 10001, not root.
    top = containers["modbus"].top(ps_args="-o user,pid,args")
    users = {row[0] for row in top["Processes"]}
    assert "root" not in users, top


def test_services_turn_healthy_and_status_shows_them(stack: Stack) -> None:
    stack.wait_containers(
        lambda c: set(c) == SERVICES
        and all((x.attrs["State"].get("Health") or {}).get("Status") == "healthy" for x in c.values()),
        90, "all three healthy")
    deadline = time.monotonic() + 30
    while True:
        result = stack.status()
        rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:] if line.strip()}
        if set(rows) >= SERVICES and all("healthy" in rows[s] for s in SERVICES) and all(
                "MiB" in rows[s] or "MB" in rows[s] for s in SERVICES):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"status never showed every service healthy with memory:\n{result.stdout}")
        time.sleep(1)
    assert result.returncode == 0
    assert image("collector-modbus") in rows["modbus"]
    assert "running" in rows["opcua"]
    # status.json (what `status --json` prints) names the figure: the Engine's, in bytes
    services = {svc["name"]: svc for svc in stack.status_json()["services"]}
    assert {name: (svc.get("memory_source"), (svc.get("memory") or 0) > 2**20) for name, svc in services.items()} == {
        name: ("engine", True) for name in SERVICES}


# Run inside a container: the extension modules of pydantic and PyYAML any of its processes maps.
HEAVY_MAPPED = ("import glob; print(sorted({line.split()[-1] for maps in glob.glob('/proc/[0-9]*/maps') "
                "for line in open(maps) if '/pydantic_core/' in line or '/_yaml' in line}))")


def test_the_components_in_containers_build_their_slices_without_pydantic(stack: Stack) -> None:
    # The mounted slice is the one the supervisor rendered (and validated): the components build it
    # with collectors.core.lite, as under the process runtime (docs/runtime.md, "Memory").
    containers = stack.wait_containers(lambda c: set(c) == SERVICES, 30, "three containers")
    for service, container in containers.items():
        result = container.exec_run(["python3", "-c", HEAVY_MAPPED], user="10001")
        assert result.exit_code == 0, result.output
        assert result.output.decode().strip() == "[]", f"{service}: {result.output.decode()}"


def test_the_supervisor_takes_at_most_20_mib(stack: Stack) -> None:
    """Issue 10: the docker runtime's supervisor <= 20 MiB PSS (26.5 with docker-py as its Engine
    client); the figure `fieldgate status` prints in its first line, read from its own /proc."""
    line = stack.status().stdout.splitlines()[0]
    match = re.fullmatch(r"supervisor pid \d+ \(docker runtime, (\d+\.\d)MiB PSS\), updated \d+s ago", line)
    assert match, line
    print(f"\n{line}")
    assert float(match.group(1)) <= 20.0, line


def test_device_edit_reloads_the_modbus_service_in_place(stack: Stack, sub: Subscriber) -> None:
    """Needs images built from this tree: an older collector image ends on SIGHUP (exit 129) and
    is restarted by the engine, which this test reports as a restart."""
    containers = stack.containers()
    before = {name: c.id for name, c in containers.items()}
    started = containers["modbus"].attrs["State"]["StartedAt"]
    device = stack.plant / "devices" / "press-1.yaml"
    device.write_text(device.read_text().replace("poll: 250ms", "poll: 500ms"))
    edited = time.time()
    deadline = time.monotonic() + 60
    while not (stack.supervisor and "reload modbus in place" in stack.supervisor.text()):
        assert time.monotonic() < deadline, stack.supervisor.text()[-3000:] if stack.supervisor else "not up"
        time.sleep(0.5)
    sub.wait_for(after(edited + 2, readings(stack.topic_prefix, "press-1", "counter")), timeout=60)
    now = stack.containers()
    assert {name: c.id for name, c in now.items()} == before, "a container was recreated"
    state = now["modbus"].attrs["State"]
    assert (state["Status"], state["StartedAt"], now["modbus"].attrs["RestartCount"]) == ("running", started, 0)
    assert "new config applied in place" in now["modbus"].logs().decode()
    assert "config change applied: modbus" in stack.supervisor.text() if stack.supervisor else False


def test_tag_added_reloads_the_forwarder_in_place_too(
    stack: Stack, sub: Subscriber, module_broker: Mosquitto
) -> None:
    """A tag added changes the forwarder's catalog as well: it takes it in place (the same
    container, the same MQTT session: no second CONNECT, no `offline`) and publishes the new tag.
    Needs images built from this tree (FIELDGATE_TEST_IMAGE_TAG): an older forwarder image
    ends on SIGHUP."""
    containers = stack.containers()
    before = {name: c.id for name, c in containers.items()}
    started = containers["forwarder"].attrs["State"]["StartedAt"]
    client_id = f" as fieldgate-{stack.gateway_id} ("
    connects = module_broker.log.read_text(errors="replace").count(client_id)
    device = stack.plant / "devices" / "press-1.yaml"
    device.write_text(device.read_text() + "  - name: raw\n    table: holding\n    address: 0\n"
                      "    type: uint16\n    unit: cnt\n")
    edited = time.time()
    raw = sub.wait_for(after(edited, readings(stack.topic_prefix, "press-1", "raw")), timeout=120)[0]
    assert raw.json()["unit"] == "cnt"
    sub.wait_for(after(raw.at + 1, readings(stack.topic_prefix, "press-1", "counter")), timeout=60)
    log = stack.supervisor.text() if stack.supervisor else ""
    assert "reload forwarder in place" in log and "recreate forwarder" not in log
    now = stack.containers()
    assert {name: c.id for name, c in now.items()} == before, "a container was recreated"
    state = now["forwarder"].attrs["State"]
    assert (state["Status"], state["StartedAt"], now["forwarder"].attrs["RestartCount"]) == ("running", started, 0)
    assert "new catalog applied in place" in now["forwarder"].logs().decode()
    assert module_broker.log.read_text(errors="replace").count(client_id) == connects
    status = f"{stack.topic_prefix}/status"
    assert [m.payload for m in list(sub.messages) if m.topic == status and m.at > edited] == []


def test_killed_container_is_restarted_and_readings_resume(stack: Stack, sub: Subscriber) -> None:
    container = stack.containers()["modbus"]
    started_before = container.attrs["State"]["StartedAt"]
    sub.wait_for(readings(stack.topic_prefix, "press-1", "counter"), timeout=30)
    container.kill()
    killed = time.time()
    resumed = sub.wait_for(after(killed + 0.5, readings(stack.topic_prefix, "press-1", "counter")),
                           timeout=90)[0]
    print(f"\ndocker kill -> readings resume: {resumed.at - killed:.1f}s")
    container.reload()
    assert container.status == "running"
    assert container.attrs["State"]["StartedAt"] != started_before
    assert "restart modbus" in (stack.supervisor.text() if stack.supervisor else "")


IN_CONTAINER_PID = (
    "import os; print(*[p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()"
    " and open(f'/proc/{p}/cmdline', 'rb').read().split(b'\\0')[1:3] == [b'-m', b'collectors.opcua']])"
)


@pytest.mark.timeout(300)
def test_a_hung_collector_turns_unhealthy_and_the_supervisor_restarts_it(stack: Stack, sub: Subscriber) -> None:
    """The OPC UA collector's process is frozen (SIGSTOP: a hang, its /healthz stops answering);
    Docker's HEALTHCHECK marks it unhealthy, which the Engine never acts on; the supervisor
    restarts it after its grace, readings resume and `fieldgate status` counts the restart."""
    container = stack.wait_containers(
        lambda c: (c["opcua"].attrs["State"].get("Health") or {}).get("Status") == "healthy", 90,
        "the opcua collector healthy")["opcua"]
    restarts_before = int(stack.status_table()["opcua"]["RESTARTS"])
    started_before = container.attrs["State"]["StartedAt"]
    code, out = container.exec_run(["python3", "-c", IN_CONTAINER_PID])
    assert code == 0, out
    (pid,) = out.decode().split()
    assert container.exec_run(["python3", "-c", f"import os, signal; os.kill({pid}, signal.SIGSTOP)"])[0] == 0
    frozen = time.time()
    stack.wait_containers(
        lambda c: (c["opcua"].attrs["State"].get("Health") or {}).get("Status") == "unhealthy", 90,
        "Docker's health check reporting the hung collector unhealthy")
    unhealthy = time.time()
    deadline = time.monotonic() + 15  # the supervisor looks every second and writes its status file
    while (row := stack.status_table()["opcua"])["STATE"] != "unhealthy":
        assert time.monotonic() < deadline, row
        time.sleep(0.5)
    restarted = stack.wait_containers(
        lambda c: c["opcua"].attrs["State"]["StartedAt"] != started_before and c["opcua"].status == "running",
        120, "the supervisor restarting the unhealthy collector")["opcua"]
    assert restarted.id == container.id  # restarted, not recreated: nothing in its config changed
    log = stack.supervisor.text() if stack.supervisor else ""
    assert "restart opcua (unhealthy for" in log, log[-3000:]
    resumed = sub.wait_for(after(time.time(), readings(stack.topic_prefix, "oven-2", "temperature")),
                           timeout=60)[0]
    assert resumed.json()["quality"] == "good"
    print(f"\nSIGSTOP -> unhealthy {unhealthy - frozen:.0f}s -> readings resume {resumed.at - frozen:.0f}s")
    deadline = time.monotonic() + 30
    while (row := stack.status_table()["opcua"])["RESTARTS"] != str(restarts_before + 1):
        assert time.monotonic() < deadline, row
        time.sleep(1)
    assert row["STATE"] in ("running", "starting"), row


def test_supervisor_stop_stops_the_containers(stack: Stack, tmp_path: Path) -> None:
    assert stack.supervisor is not None
    assert stack.supervisor.stop() == 0
    containers = stack.containers()
    assert set(containers) == SERVICES
    states = {name: c.status for name, c in containers.items()}
    assert set(states.values()) == {"exited"}, states
