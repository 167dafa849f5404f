"""Both runtimes build their desired services with one builder (`gateway.services`): for the
same config they run the same services, on the same slices (but for where the hand-off socket
and the state live), with the same metrics ports, health checks and secrets.

What legitimately differs is how each runs a service: a command line or an image, where the
slice file goes, what the config hash covers, and the update order (a process cannot run
beside its replacement: always stop-first).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.compose import BUFFER_DIR, HANDOFF_SOCKET, STATE_DIR
from gateway.config import load_config
from gateway.plan import ServiceSpec
from gateway.runtime.common import RunDir
from gateway.runtime.docker import DockerRuntime
from gateway.runtime.process import ProcessRuntime

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"


def both(config_dir: Path, state: Path) -> tuple[dict[str, ServiceSpec], dict[str, ServiceSpec], DockerRuntime]:
    """The process runtime's specs and the docker runtime's, for one config directory."""
    config = load_config(config_dir, env={})
    run_dir = RunDir.for_config(config_dir, state)
    process = ProcessRuntime(run_dir).desired(config, config_dir)
    docker = DockerRuntime(config_dir, run_dir, client=object(), printer=lambda _: None)  # type: ignore[arg-type]
    return process, docker.desired(config, config_dir), docker


def slice_data(spec: ServiceSpec, placement: dict[str, str]) -> Any:
    """A spec's slice as data, with the runtime's paths for the shared things made the container's."""
    header, body = spec.config_text.split("\n", 1)
    for path, container_path in placement.items():
        body = body.replace(json.dumps(path)[1:-1], container_path)
    return header, json.loads(body)


def assert_agree(process: dict[str, ServiceSpec], docker: dict[str, ServiceSpec], run_dir: RunDir) -> None:
    placement = {str(run_dir.handoff_socket): HANDOFF_SOCKET, str(run_dir.state): STATE_DIR,
                 str(run_dir.buffer): BUFFER_DIR}
    def seen(specs: dict[str, ServiceSpec]) -> dict[str, tuple[Any, ...]]:
        return {n: (s.metrics_port, s.metrics_host, s.secrets, s.host_network) for n, s in specs.items()}

    assert seen(process) == seen(docker)
    for name in process:
        assert slice_data(process[name], placement) == slice_data(docker[name], {}), name


def test_both_runtimes_build_the_same_services_for_the_example_plant(tmp_path: Path) -> None:
    process, docker, runtime = both(EXAMPLE, tmp_path / "state")
    assert_agree(process, docker, RunDir(tmp_path / "state"))
    assert {n: s.metrics_port for n, s in process.items()} == {"forwarder": 9108, "modbus": 9109, "opcua": 9110}
    assert runtime.project is not None
    for name, svc in runtime.project.services.items():
        assert "disable" not in svc.compose["healthcheck"], name  # each one's /healthz is checked
    assert process["opcua"].update == "stop-first" and docker["opcua"].update == "start-first"


def test_without_a_metrics_port_no_service_has_one_under_either_runtime(tmp_path: Path) -> None:
    """`metrics.port: null`: no /metrics, no /healthz, no health check, for every service (the
    docker runtime used to give the collectors 9109 and 9110 and the forwarder none)."""
    config_dir = tmp_path / "plant"
    shutil.copytree(EXAMPLE, config_dir)
    gateway = config_dir / "gateway.yaml"
    gateway.write_text(gateway.read_text().replace("  port: 9108 ", "  port: null "))
    process, docker, runtime = both(config_dir, tmp_path / "state")
    assert_agree(process, docker, RunDir(tmp_path / "state"))
    assert {n: s.metrics_port for n, s in docker.items()} == {"forwarder": None, "modbus": None, "opcua": None}
    assert runtime.project is not None
    for name, svc in runtime.project.services.items():
        assert svc.compose["healthcheck"] == {"disable": True}, name
        assert svc.compose["environment"]["FIELDGATE_METRICS_PORT"] == "", name
