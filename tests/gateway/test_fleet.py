"""`fieldgate fleet validate|render`: a plant's gateways from one repository, as one Swarm stack.

No engine needed: these check the verbs' output and the written files. The compose-spec schema
is read from the project's shared specs (skipped where absent).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.docker.stack import ROOT, fieldgate

pytestmark = pytest.mark.unit

EXAMPLE = ROOT / "examples" / "fleet"
SPEC = next((p for p in (ROOT.parent / "shared/specs/compose-spec.json",
                         ROOT.parent.parent / "shared/specs/compose-spec.json") if p.is_file()), None)


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(fieldgate(*args), capture_output=True, text=True, cwd=cwd, timeout=60)


def repo(tmp_path: Path) -> Path:
    copy = tmp_path / "fleet"
    shutil.copytree(EXAMPLE, copy)
    return copy


def test_example_fleet_is_valid_and_names_the_shared_model() -> None:
    result = run("fleet", "validate", str(EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "line3: 2 devices (press-1, press-2), 6 tags" in result.stdout
    assert "model examples/fleet/models/press-v2.yaml: line3/press-1, line3/press-2, line4/press-7" in \
        result.stdout.replace(str(ROOT) + "/", "")
    assert "on serial ports, run by the node's own supervisor: meter-9" in result.stdout


def test_errors_name_the_file_that_wrote_the_key(tmp_path: Path) -> None:
    fleet = repo(tmp_path)
    model = fleet / "models" / "press-v2.yaml"
    model.write_text(model.read_text().replace("type: uint32", "type: uint33"))
    gateway = fleet / "gateways" / "line3" / "gateway.yaml"
    gateway.write_text(gateway.read_text().replace("id: line3", "id: line9"))
    line4 = fleet / "gateways" / "line4" / "gateway.yaml"
    line4.write_text(line4.read_text().replace("password_file: secrets/mqtt-password", "password: hunter2"))
    missing = fleet / "gateways" / "line4" / "devices" / "press-7.yaml"
    missing.write_text(missing.read_text().replace("press-v2.yaml", "press-v3.yaml"))
    result = run("fleet", "validate", str(fleet))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    # the bad tag type is in the model, reported at its line there, once per device including it
    bad = [line for line in lines if "models/press-v2.yaml:17:11:" in line]
    assert len(bad) == 2 and "uint33" in bad[0], result.stdout
    assert any("gateways/line3/gateway.yaml:3:7: gateway.id: line9 is not the name of its directory" in line
               for line in lines), result.stdout
    assert any("gateways/line4/gateway.yaml:10:3: mqtt.password: in a fleet a password is given as "
               "password_file" in line for line in lines), result.stdout
    assert "hunter2" not in result.stdout + result.stderr
    assert any("gateways/line4/devices/press-7.yaml:1:8: model: ../../../models/press-v3.yaml: no such file"
               in line for line in lines), result.stdout


def test_render_same_bytes_valid_compose_spec_serial_left_to_the_node(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    result = run("fleet", "render", str(EXAMPLE), "-o", str(first))
    assert result.returncode == 0, result.stderr
    assert run("fleet", "render", str(EXAMPLE), "-o", str(second)).returncode == 0
    files = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert files == ["config/line3/forwarder.yaml", "config/line3/modbus.yaml", "config/line4/forwarder.yaml",
                     "config/line4/modbus.yaml", "local/line4/devices/meter-9.yaml", "local/line4/gateway.yaml",
                     "stack.yml"]
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    # the serial device is said to be off the swarm, with what to run instead
    assert ("line4: serial devices meter-9 are NOT on the swarm (Swarm cannot pass a serial port): on the node "
            f"of line4 run `fieldgate up {first}/local/line4 --runtime docker`") in result.stdout
    text = (first / "stack.yml").read_text()
    assert "privileged" not in text and "devices:" not in text and "change-me" not in text
    stack = yaml.safe_load(text)
    assert "version" not in stack
    assert set(stack["services"]) == {"line3-forwarder", "line3-modbus", "line4-forwarder", "line4-modbus"}
    for name, svc in stack["services"].items():
        gateway = name.split("-")[0]
        assert svc["deploy"]["placement"]["constraints"] == [f"node.labels.fieldgate.gateway == {gateway}"]
        assert svc["networks"] == ["hostnet"]
        update = svc["deploy"]["update_config"]
        assert (update["parallelism"], update["failure_action"], update["monitor"]) == (1, "rollback", "30s")
        assert svc["deploy"]["resources"]["limits"] == {"pids": 128, "cpus": "0.5", "memory": "128m"}
        assert svc["healthcheck"]["test"][0] == "CMD"
        assert list(svc["environment"]) == ["FIELDGATE_METRICS_PORT"]  # no password in the environment
        [config] = svc["configs"]
        slice_text = (first / stack["configs"][config["source"]]["file"]).read_text()
        assert config["source"].endswith(__import__("hashlib").sha256(slice_text.encode()).hexdigest()[:12])
    assert stack["networks"]["hostnet"] == {"external": True, "name": "host"}
    [secret] = stack["services"]["line4-forwarder"]["secrets"]
    assert (first / stack["secrets"][secret["source"]]["file"]).resolve() == (
        EXAMPLE / "gateways/line4/secrets/mqtt-password").resolve()
    forwarder = json.loads(yaml.safe_load(json.dumps((first / "config/line4/forwarder.yaml").read_text()))
                           .split("\n", 1)[1])
    assert forwarder["mqtt"]["password_file"] == secret["target"]
    modbus = (first / "config/line4/modbus.yaml").read_text()
    assert "press-7" in modbus and "meter-9" not in modbus
    local = yaml.safe_load((first / "local/line4/gateway.yaml").read_text())
    assert local["mqtt"]["client_id"] == "fieldgate-line4-serial" and local["metrics"]["port"] == 9118
    meter = yaml.safe_load((first / "local/line4/devices/meter-9.yaml").read_text())
    assert meter["connection"]["rtu"]["port"].startswith("/dev/serial/by-id/")
    if SPEC is None:
        pytest.skip("compose-spec.json not in ../shared/specs: schema check skipped")
    schema = json.loads(SPEC.read_text())
    jsonschema.Draft7Validator(schema).validate(stack)


def test_local_directory_is_a_valid_config_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run("fleet", "render", str(EXAMPLE), "-o", str(out)).returncode == 0
    result = run("validate", str(out / "local" / "line4"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 device (meter-9)" in result.stdout


def test_a_device_file_with_a_model_runs_outside_a_fleet_too(tmp_path: Path) -> None:
    """`fieldgate validate` on one gateway directory of the repository reads the model the same way."""
    result = run("validate", str(EXAMPLE / "gateways" / "line3"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 devices (press-1, press-2), 6 tags" in result.stdout
