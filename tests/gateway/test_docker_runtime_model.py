"""The docker runtime's two translations, without an engine: the rendered compose service ->
Engine API create arguments, and the Engine's container JSON -> the planner's Observed.

Fakes stand in only for the Engine's answers (container JSON as `docker inspect` prints it);
the stack tests run the same code against a real engine.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.compose import render
from gateway.plan import BackoffState, Policy, Recreate, Restart, describe_state, plan
from gateway.runtime.common import RunDir
from gateway.runtime.containers import ContainerFactory
from gateway.runtime.docker import DockerRuntime, parse_time, specs_of
from gateway.runtime.engine_api import APIClient, Transport
from tests.gateway.test_compose_render import plant

pytestmark = pytest.mark.unit


def api() -> APIClient:
    # An explicit version: the client builds host configs without asking an engine.
    return APIClient(Transport("/nonexistent.sock"), version="1.41")


def test_create_args_carry_every_limit_of_the_compose_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MQTT_PASSWORD", "pw-from-env")
    config_dir = plant(tmp_path, rtu_port="/dev/ttyUSB9")
    gateway = config_dir / "gateway.yaml"
    secret = "  qos: 1\n  username: u\n  password: ${MQTT_PASSWORD}\n"
    gateway.write_text(gateway.read_text().replace("  qos: 1\n", secret))
    project = render(config_dir)
    factory = ContainerFactory(api(), project, tmp_path / "out")
    args = factory.create_args("modbus", "fieldgate-line3-modbus-1")
    host = args["host_config"]
    assert args["image"] == "fieldgate/collector-modbus:0.1.0"
    assert args["user"] == "10001:10001"
    assert args["command"] == ["--config", "/etc/fieldgate/config.yaml"]
    assert args["labels"]["io.fieldgate.config-hash"] == project.services["modbus"].config_hash
    assert args["labels"]["com.docker.compose.project"] == "fieldgate-line3"
    assert args["stop_timeout"] == 10
    assert args["healthcheck"]["interval"] == 10 * 10**9 and args["healthcheck"]["retries"] == 3
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 128 * 2**20 and host["MemorySwap"] == 128 * 2**20
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["RestartPolicy"] == {"Name": "unless-stopped"}
    assert host["NetworkMode"] == "host"
    assert host["Init"] is True
    assert host["Tmpfs"] == {"/tmp": "size=16m,mode=1777"}
    assert host["Devices"] == [{"PathOnHost": "/dev/ttyUSB9", "PathInContainer": "/dev/ttyUSB9",
                                "CgroupPermissions": "rwm"}]
    mounts = {m["Target"]: m for m in host["Mounts"]}
    assert mounts["/etc/fieldgate"]["Source"] == str(tmp_path / "out" / "config" / "modbus")
    assert mounts["/etc/fieldgate"]["ReadOnly"] is True
    assert mounts["/run/fieldgate"]["Source"] == "fieldgate-line3_handoff"
    assert "Privileged" not in host or host["Privileged"] is False
    forwarder = factory.create_args("forwarder", "fieldgate-line3-forwarder-1")
    assert forwarder["environment"]["MQTT_PASSWORD"] == "pw-from-env"
    assert forwarder["stop_timeout"] == 30


@pytest.mark.parametrize("network", ["host", "bridge"])
def test_the_create_request_is_the_one_docker_py_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, network: str
) -> None:
    """Our Engine client translates the create arguments as docker-py did (its create_host_config
    and ContainerConfig, the reference): the same HostConfig and the same body of POST
    /containers/create for every service, with a serial port, a sandbox runtime, a standby port
    and a password from the environment."""
    import docker  # the reference translation; the supervisor no longer imports it

    from tests.gateway.test_sandbox import sandboxed

    monkeypatch.setenv("MQTT_PASSWORD", "pw-from-env")
    config_dir = sandboxed(plant(tmp_path, network=network, rtu_port="/dev/ttyUSB9"), key="opcua")
    project = render(config_dir)
    reference = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")
    ours, theirs = (ContainerFactory(client, project, tmp_path / "out") for client in (api(), reference))

    def body(config: dict[str, Any]) -> Any:  # as sent: top-level nulls left out, JSON
        return json.loads(json.dumps({key: value for key, value in config.items() if value is not None}))

    compared = 0
    for service in project.services:
        for standby in (None, 0, 9200):
            args = ours.create_args(service, "x", standby_port=standby)
            expected = theirs.create_args(service, "x", standby_port=standby)
            assert args["host_config"] == expected["host_config"], service
            del args["name"], expected["name"]
            assert body(APIClient.container_config(**args)) == body(reference.create_container_config(**expected))
            compared += 1
    assert compared == 3 * len(project.services) >= 9
    assert any(svc.compose.get("devices") for svc in project.services.values())
    assert any(svc.compose.get("runtime") for svc in project.services.values())


@dataclass
class FakeContainer:
    """What the Engine client's Container exposes that the runtime reads."""

    name: str
    attrs: dict[str, Any]
    id: str = "c0ffee"
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def status(self) -> str:
        return str(self.attrs["State"]["Status"])


class FakeImages:
    def __init__(self, ids: dict[str, str]) -> None:
        self.ids = ids

    def get(self, name: str) -> Any:
        return type("Image", (), {"id": self.ids[name]})()


class FakeClient:
    def __init__(self, containers: list[FakeContainer], image_ids: dict[str, str]) -> None:
        self._containers = containers
        self.images = FakeImages(image_ids)
        self.containers = self
        self.closed = False

    def list(self, all: bool, filters: dict[str, str]) -> list[FakeContainer]:
        return self._containers

    def close(self) -> None:
        self.closed = True


def container(service: str, config_hash: str, status: str = "running", health: str | None = "healthy",
              restarts: int = 0, image_id: str = "sha256:" + "a" * 64) -> FakeContainer:
    state: dict[str, Any] = {"Status": status, "StartedAt": "2026-11-28T08:00:00.123456789Z",
                             "FinishedAt": "0001-01-01T00:00:00Z", "ExitCode": 0}
    if health is not None:
        state["Health"] = {"Status": health}
    labels = {"com.docker.compose.project": "fieldgate-line3", "com.docker.compose.service": service,
              "io.fieldgate.config-hash": config_hash}
    image = "fieldgate/forwarder:0.1.0" if service == "forwarder" else f"fieldgate/collector-{service}:0.1.0"
    return FakeContainer(
        name=f"fieldgate-line3-{service}-1", id=f"{service}-container-id", labels=labels,
        attrs={"State": state, "RestartCount": restarts, "Image": image_id, "Config": {"Image": image}})


def runtime_for(tmp_path: Path) -> Any:
    config_dir = plant(tmp_path)
    runtime = DockerRuntime(config_dir, RunDir.for_config(config_dir), client=FakeClient([], {}),
                            printer=lambda _: None)
    runtime.project = render(config_dir)
    return runtime, specs_of(runtime.project, tmp_path / "out")


def test_unhealthy_container_is_observed_so_and_the_planner_restarts_it(tmp_path: Path) -> None:
    runtime, specs = runtime_for(tmp_path)
    hashes = {name: spec.config_hash for name, spec in specs.items()}
    runtime._client = FakeClient(
        [container("forwarder", hashes["forwarder"]),
         container("modbus", hashes["modbus"], health="unhealthy"),
         container("opcua", hashes["opcua"])],
        {spec.image: "sha256:" + "a" * 64 for spec in specs.values()})
    observed = runtime._observe()
    assert observed["modbus"].state == "running" and observed["modbus"].health == "unhealthy"
    assert observed["modbus"].config_hash == hashes["modbus"]
    assert observed["modbus"].image == "fieldgate/collector-modbus:0.1.0"
    policy = Policy(unhealthy_grace=30)
    later = observed["modbus"].health_since + 31
    steps = plan(specs, observed, later, BackoffState(policy))
    assert [type(s) for s in steps] == [Restart] and steps[0].name == "modbus"


def test_engine_restarts_show_as_a_crash_loop_and_a_rebuilt_tag_is_rolled_out(tmp_path: Path) -> None:
    runtime, specs = runtime_for(tmp_path)
    hashes = {name: spec.config_hash for name, spec in specs.items()}
    new_id = "sha256:" + "b" * 64
    modbus = container("modbus", hashes["modbus"], status="restarting", health=None, restarts=0)
    images = {spec.image: "sha256:" + "a" * 64 for spec in specs.values()}
    images["fieldgate/collector-modbus:0.1.0"] = new_id  # rebuilt under the same tag
    runtime._client = FakeClient([container("forwarder", hashes["forwarder"]), modbus,
                                  container("opcua", hashes["opcua"])], images)
    backoff = BackoffState().settle(runtime._observe(), 0.0)
    for count in (1, 2, 3):
        modbus.attrs["RestartCount"] = count
        observed = runtime._observe()
        backoff = backoff.settle(observed, 0.0)
    assert observed["modbus"].state == "restarting"  # the Engine is restarting it: nothing to plan
    assert observed["modbus"].restarts == 3 and observed["modbus"].restart_count == 3
    assert describe_state("modbus", observed["modbus"], backoff, 0.0).startswith("crash-looping")
    assert "state" not in runtime.details()["modbus"]  # the status word is the planner's
    assert runtime.details()["modbus"]["memory_limit"] == 128 * 2**20
    modbus.attrs["State"]["Status"] = "running"
    observed = runtime._observe()
    assert observed["modbus"].image == "fieldgate/collector-modbus:0.1.0@aaaaaaaaaaaa"
    steps = plan(specs, observed, observed["modbus"].since + 1, BackoffState())
    assert [(type(s), s.name) for s in steps] == [(Recreate, "modbus")]


def test_a_container_crash_looping_on_an_old_config_is_recreated_at_once(tmp_path: Path) -> None:
    runtime, specs = runtime_for(tmp_path)
    hashes = {name: spec.config_hash for name, spec in specs.items()}
    stale = container("modbus", "0123456789abcdef", status="restarting", health=None, restarts=5)
    runtime._client = FakeClient([container("forwarder", hashes["forwarder"]), stale,
                                  container("opcua", hashes["opcua"])],
                                 {spec.image: "sha256:" + "a" * 64 for spec in specs.values()})
    observed = runtime._observe()
    assert observed["modbus"].state == "restarting"
    steps = plan(specs, observed, observed["modbus"].since, BackoffState())
    assert [(type(s), s.name) for s in steps] == [(Recreate, "modbus")]


def test_docker_timestamps() -> None:
    assert parse_time("0001-01-01T00:00:00Z") is None
    assert parse_time("2026-11-28T08:00:00.123456789Z") == pytest.approx(1795852800.123456, abs=1e-6)
    assert parse_time("2026-11-28T08:00:00Z") == pytest.approx(1795852800.0)
    assert os.environ.get("DOCKER_HOST") != "unix:///nonexistent.sock"


def _rfc3339(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_crash_loop_stays_one_while_the_engines_delay_is_long_and_a_stable_run_ends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Engine's restart delay doubles to a minute and stays there; its restarts are then a minute
    apart, yet the service is still crash-looping until it runs `stable_after` seconds. The runtime
    only reports the Engine's RestartCount and the last exit; the planner's backoff counts."""
    import time

    clock = [time.time()]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    runtime, specs = runtime_for(tmp_path)
    hashes = {name: spec.config_hash for name, spec in specs.items()}
    modbus = container("modbus", hashes["modbus"], status="restarting", health=None)
    modbus.attrs["State"].update({"ExitCode": 137, "OOMKilled": True})
    runtime._client = FakeClient([container("forwarder", hashes["forwarder"]), modbus,
                                  container("opcua", hashes["opcua"])],
                                 {spec.image: "sha256:" + "a" * 64 for spec in specs.values()})
    policy = Policy()
    backoff = BackoffState(policy)

    def look() -> str:
        nonlocal backoff
        observed = runtime._observe()
        backoff = backoff.settle(observed, clock[0], specs)
        assert plan(specs, observed, clock[0], backoff) == []  # the Engine restarts it, not us
        return describe_state("modbus", observed["modbus"], backoff, clock[0])

    look()
    modbus.attrs["RestartCount"] = 1
    assert look() == "restarting (last exited with code 137, out of memory)"
    for count in (2, 3, 4):  # the Engine's delay is at its cap: a minute, then a run of two seconds
        clock[0] += 60
        modbus.attrs["State"].update({"Status": "running", "StartedAt": _rfc3339(clock[0])})
        look()
        clock[0] += 2
        modbus.attrs["State"]["Status"] = "restarting"
        modbus.attrs["RestartCount"] = count
        look()
    assert look() == (f"crash-looping (4 failures without a {policy.stable_after:.0f}s stable run; "
                      "last exited with code 137, out of memory)")
    clock[0] += 60
    modbus.attrs["State"].update({"Status": "running", "StartedAt": _rfc3339(clock[0]), "OOMKilled": False})
    clock[0] += 5
    assert look().startswith("crash-looping")  # running, but not for long yet
    clock[0] += policy.stable_after
    assert look() == "running"
    assert not backoff.crash_looping("modbus")


def test_a_changed_password_recreates_only_the_service_that_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compose file names a password (`${MQTT_PASSWORD}`), so its hash alone would not change
    with the password: the forwarder would go on with the old one until something else changed."""
    config_dir = plant(tmp_path)
    gateway = config_dir / "gateway.yaml"
    gateway.write_text(gateway.read_text().replace(
        "  qos: 1\n", "  qos: 1\n  username: plant\n  password: ${MQTT_PASSWORD}\n"))
    out = tmp_path / "out"

    def specs(password: str) -> dict[str, Any]:
        monkeypatch.setenv("MQTT_PASSWORD", password)
        return specs_of(render(config_dir), out)

    first, changed, back = specs("s3cret-Pa55"), specs("n3w-Pa55"), specs("s3cret-Pa55")
    assert changed["forwarder"].config_hash != first["forwarder"].config_hash
    assert changed["forwarder"].reload_hash != first["forwarder"].reload_hash  # no reload: a new session
    assert changed["modbus"].config_hash == first["modbus"].config_hash
    # The same password hashes the same (the key outlives the supervisor, as container labels do),
    # and the hash says nothing of the password.
    assert back["forwarder"].config_hash == first["forwarder"].config_hash
    assert (out / ".secrets.key").stat().st_mode & 0o777 == 0o600
    assert "s3cret" not in repr(first["forwarder"])


def test_a_standby_is_created_from_the_project_the_check_child_hands_back(tmp_path: Path) -> None:
    """The supervisor keeps the rendered project without its config models (the check child,
    gateway.runtime.docker): a start-first standby's health check must be built from that alone."""
    project = render(plant(tmp_path))
    kept = dataclasses.replace(project, services={
        name: dataclasses.replace(svc, config=None) for name, svc in project.services.items()})
    factory = ContainerFactory(api(), kept, tmp_path / "out")
    args = factory.create_args("opcua", "fieldgate-line3-opcua-1-next", standby_port=45123)
    assert args["environment"]["FIELDGATE_STANDBY_PORT"] == "45123"
    assert "http://127.0.0.1:45123/healthz" in " ".join(args["healthcheck"]["test"])
