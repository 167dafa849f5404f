"""`sandbox: gvisor`: a service's container runs under the gVisor runtime the engine declares.

Pure checks: what validate refuses or warns about, what render writes, what the docker runtime
asks the Engine for, and how a runtime the engine does not declare shows in `fieldgate status`
(against the fake Engine of test_failed_steps). The run under runsc itself is
tests/docker/test_gvisor.py.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from collectors.core.validation import ConfigErrors
from gateway.compose import render, write
from gateway.config import load_config
from gateway.runtime.containers import ContainerFactory
from gateway.runtime.docker import DockerRuntime
from gateway.runtime.engine_api import APIError
from gateway.runtime.process import RunDir
from gateway.supervisor import Supervisor, load
from tests.gateway.test_compose_render import SCHEMA, plant
from tests.gateway.test_failed_steps import POLICY, FakeEngine, _Api, run_for, state_of

pytestmark = pytest.mark.unit


def sandboxed(config_dir: Path, key: str = "modbus", extra: str = "") -> Path:
    """gateway.yaml of `plant` with `sandbox: gvisor` under collectors.KEY (or the forwarder)."""
    path = config_dir / "gateway.yaml"
    data = yaml.safe_load(path.read_text())
    section = data["forwarder"] if key == "forwarder" else data["collectors"][key]
    section["sandbox"] = "gvisor"
    path.write_text(yaml.safe_dump(data, sort_keys=False) + extra)
    return config_dir


def test_a_sandboxed_collector_with_serial_ports_is_refused_at_its_key(tmp_path: Path) -> None:
    config_dir = sandboxed(plant(tmp_path, rtu_port="/dev/ttyUSB3"))
    with pytest.raises(ConfigErrors) as caught:
        load_config(config_dir)
    [problem] = caught.value.problems
    text = str(problem)
    lines = (config_dir / "gateway.yaml").read_text().splitlines()
    line = next(i for i, t in enumerate(lines, 1) if t.strip() == "sandbox: gvisor")
    assert text.startswith(f"{config_dir / 'gateway.yaml'}:{line}:"), text
    assert "collectors.modbus.sandbox: gvisor cannot run a collector with serial ports" in text
    assert "gVisor passes no ttys" in text and "/dev/ttyUSB3" in text
    assert "use sandbox: none" in text


def test_the_opcua_collector_and_the_forwarder_may_be_sandboxed_beside_serial_ports(tmp_path: Path) -> None:
    config_dir = sandboxed(sandboxed(plant(tmp_path, rtu_port="/dev/ttyUSB3"), "opcua"), "forwarder")
    config = load_config(config_dir)
    assert config.collectors.opcua.sandbox == "gvisor" and config.forwarder.sandbox == "gvisor"


def test_an_unknown_sandbox_is_refused_with_what_is_allowed(tmp_path: Path) -> None:
    config_dir = plant(tmp_path)
    path = config_dir / "gateway.yaml"
    path.write_text(path.read_text().replace("update: stop-first", "update: stop-first\n    sandbox: kata"))
    with pytest.raises(ConfigErrors) as caught:
        load_config(config_dir)
    text = "\n".join(map(str, caught.value.problems))
    assert "collectors.modbus.sandbox: 'kata' is not one of none, gvisor" in text, text


def test_render_names_the_runtime_and_the_engine_gets_it(tmp_path: Path) -> None:
    config_dir = sandboxed(plant(tmp_path))
    project = render(config_dir)
    out = tmp_path / "out"
    write(project, out)
    compose = yaml.safe_load((out / "docker-compose.yml").read_text())
    import jsonschema

    jsonschema.Draft7Validator(SCHEMA).validate(compose)
    assert compose["services"]["modbus"]["runtime"] == "runsc"
    assert "runtime" not in compose["services"]["opcua"]
    assert "runtime" not in compose["services"]["forwarder"]
    factory = ContainerFactory(_Api(FakeEngine()), project, out)
    assert factory.create_args("modbus", "m")["host_config"]["Runtime"] == "runsc"
    assert "Runtime" not in factory.create_args("opcua", "o")["host_config"]


def test_the_runtime_name_is_gateway_yaml_s_and_a_change_recreates(tmp_path: Path) -> None:
    config_dir = sandboxed(plant(tmp_path))
    before = render(config_dir).services["modbus"].config_hash
    sandboxed(config_dir, extra="gvisor_runtime: runsc-kvm\n")
    project = render(config_dir)
    assert project.services["modbus"].compose["runtime"] == "runsc-kvm"
    assert project.services["modbus"].config_hash != before


def test_with_the_process_runtime_validate_warns_that_nothing_is_sandboxed(tmp_path: Path) -> None:
    config_dir = sandboxed(plant(tmp_path), "opcua")
    path = config_dir / "gateway.yaml"
    path.write_text(path.read_text().replace("runtime: docker", "runtime: process"))
    config = load_config(config_dir)
    [warning] = [w for w in config.warnings if "sandbox" in w]
    assert ":" in warning.split("gateway.yaml", 1)[1][:8]  # file:line:column
    assert "collectors.opcua.sandbox: gvisor applies to the docker runtime only" in warning
    assert "not sandboxed" in warning


class EngineWithoutRunsc(FakeEngine):
    """Every image is present; the engine declares only runc."""

    def answer(self, call: str, *args: Any, **kwargs: Any) -> Any:
        if call == "images.list":
            self.calls[call] += 1
            return [type("Image", (), {"id": "sha256:" + "ab" * 32})()]
        if call == "api.create_container":
            self.calls[call] += 1
            raise APIError("the fake engine creates nothing")
        return super().answer(call, *args, **kwargs)

    def info(self) -> dict[str, Any]:
        self.calls["info"] += 1
        return {"Runtimes": {"runc": {"path": "runc"}}}


async def test_a_runtime_the_engine_lacks_is_a_status_reason_not_a_crash(tmp_path: Path) -> None:
    config_dir = sandboxed(plant(tmp_path))
    config, errors = load(config_dir)
    assert config is not None, errors
    run_dir = RunDir.for_config(config_dir)
    engine = EngineWithoutRunsc()
    out = io.StringIO()
    async with DockerRuntime(config_dir, run_dir, client=engine, printer=lambda _: None,  # type: ignore[arg-type]
                             stats_interval=3600) as runtime:
        supervisor = Supervisor(config_dir, runtime, run_dir, runtime.desired(config, config_dir), POLICY, out=out)
        await run_for(supervisor, 1.0)
    state = state_of(run_dir, "modbus")
    assert state.startswith("runtime missing (the Docker engine has no runtime 'runsc' (it has: runc)"), state
    assert "/etc/docker/daemon.json" in state and "next try in" in state
    # Only the sandboxed service is held back; the others were created as usual.
    assert engine.calls["api.create_container"] >= 2
    assert not state_of(run_dir, "opcua").startswith("runtime missing")


def test_fleet_render_says_swarm_services_are_not_sandboxed(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from tests.docker.stack import ROOT, fieldgate

    fleet = tmp_path / "fleet"
    shutil.copytree(ROOT / "examples" / "fleet", fleet)
    gateway = fleet / "gateways" / "line3" / "gateway.yaml"
    gateway.write_text(gateway.read_text() + "    sandbox: gvisor\n")
    result = subprocess.run(fieldgate("fleet", "render", str(fleet), "-o", str(tmp_path / "out")),
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "warning: line3: modbus: sandbox: gvisor is not applied to Swarm services" in result.stderr


@pytest.mark.parametrize(("key", "admitted"), [("modbus", True), ("opcua", True), ("forwarder", False), (None, False)])
def test_the_forwarder_admits_gvisor_s_gofer_only_when_a_collector_is_sandboxed(
    tmp_path: Path, key: str | None, admitted: bool
) -> None:
    """runsc's gofer connects a sandboxed collector to the hand-off socket as root (uid 0 in
    SO_PEERCRED): the forwarder's slice says to admit root exactly when a collector is sandboxed."""
    config_dir = plant(tmp_path) if key is None else sandboxed(plant(tmp_path), key)
    forwarder = yaml.safe_load(render(config_dir).services["forwarder"].config_text)  # what the container reads
    assert forwarder["handoff"].get("root_peers") is (True if admitted else None)
