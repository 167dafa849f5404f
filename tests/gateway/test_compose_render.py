"""`fieldgate render`: the compose project a plant engineer reads and runs by hand.

No engine needed: these check the written files. The schema is a compose-spec subset written
for these tests (compose_schema.json): the spec's key names and types, objects closed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from gateway.compose import render, write
from tests.docker.stack import (
    ROOT,
    fieldgate,
    gateway_yaml,
    modbus_rtu_device,
    modbus_tcp_device,
    opcua_device,
)

pytestmark = pytest.mark.unit

SCHEMA = json.loads((Path(__file__).parent / "compose_schema.json").read_text())


def plant(tmp_path: Path, network: str = "host", rtu_port: str | None = None, extra: str = "") -> Path:
    root = tmp_path / "plant"
    (root / "devices").mkdir(parents=True)
    (root / "gateway.yaml").write_text(gateway_yaml("line3", 1883, 9108, network) + extra)
    (root / "devices" / "press-1.yaml").write_text(modbus_tcp_device("press-1", 5020))
    (root / "devices" / "oven-2.yaml").write_text(opcua_device("oven-2", 4840))
    if rtu_port is not None:
        (root / "devices" / "drive-3.yaml").write_text(modbus_rtu_device("drive-3", rtu_port))
    return root


def compose(out: Path) -> dict:
    return yaml.safe_load((out / "docker-compose.yml").read_text())


def test_same_input_same_bytes_and_valid_compose_spec(tmp_path: Path) -> None:
    config_dir = plant(tmp_path)
    first, second = tmp_path / "a", tmp_path / "b"
    write(render(config_dir), first)
    write(render(config_dir), second)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == [Path(f"config/{name}/config.yaml") for name in ("forwarder", "modbus", "opcua")] + [
        Path("docker-compose.yml")]
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    jsonschema.Draft7Validator(SCHEMA).validate(compose(first))
    # Writing again changes nothing on disk: running containers keep their bind-mounted files.
    assert write(render(config_dir), first) == []


def test_schema_catches_what_compose_would_refuse() -> None:
    validator = jsonschema.Draft7Validator(SCHEMA)
    assert list(validator.iter_errors({"services": {"a": {"image": "x", "mem_limt": "1m"}}}))
    assert list(validator.iter_errors({"services": {"a": {"image": "x", "cap_drop": "ALL"}}}))
    assert list(validator.iter_errors({"services": {"a": {"restart": "sometimes"}}}))


def test_every_service_is_locked_down(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(render(plant(tmp_path)), out)
    text = (out / "docker-compose.yml").read_text()
    assert "privileged" not in text
    model = compose(out)
    assert model["name"] == "fieldgate-line3"
    assert set(model["services"]) == {"forwarder", "modbus", "opcua"}
    assert {"handoff", "buffer", "state-modbus", "state-opcua"} <= set(model["volumes"])
    for name, svc in model["services"].items():
        assert svc["read_only"] is True and svc["tmpfs"], name
        assert svc["cap_drop"] == ["ALL"], name
        assert svc["security_opt"] == ["no-new-privileges:true"], name
        assert svc["user"] == "10001:10001", name
        assert svc["restart"] == "unless-stopped", name
        assert svc["pids_limit"] > 0 and svc["cpus"] == 0.5, name
        assert svc["network_mode"] == "host", name
        assert svc["labels"]["com.docker.compose.project"] == "fieldgate-line3"
        assert svc["labels"]["com.docker.compose.service"] == name
        assert len(svc["labels"]["io.fieldgate.config-hash"]) == 16
        assert "devices" not in svc and "device_cgroup_rules" not in svc, name
        volumes = {v["target"]: v for v in svc["volumes"]}
        assert volumes["/etc/fieldgate"]["source"] == f"./config/{name}"  # the directory: see CONFIG_DIR_IN_CONTAINER
        assert volumes["/etc/fieldgate"]["read_only"] is True
        assert volumes["/run/fieldgate"]["source"] == "handoff"
    ports = {name: svc["healthcheck"]["test"][-1] for name, svc in model["services"].items()}
    assert "127.0.0.1:9108/healthz" in ports["forwarder"]
    assert "127.0.0.1:9109/healthz" in ports["modbus"]
    assert "127.0.0.1:9110/healthz" in ports["opcua"]
    assert model["services"]["forwarder"]["mem_limit"] == "128m"
    assert model["services"]["opcua"]["mem_limit"] == "192m"
    slice_ = yaml.safe_load((out / "config" / "modbus" / "config.yaml").read_text())
    assert slice_["handoff"]["socket"] == "/run/fieldgate/handoff.sock"
    assert [d["name"] for d in slice_["devices"]] == ["press-1"]


def test_a_device_edit_changes_only_its_collectors_hash(tmp_path: Path) -> None:
    config_dir = plant(tmp_path)
    before = {n: s.config_hash for n, s in render(config_dir).services.items()}
    device = config_dir / "devices" / "press-1.yaml"
    device.write_text(device.read_text().replace("poll: 250ms", "poll: 1s"))
    after = {n: s.config_hash for n, s in render(config_dir).services.items()}
    assert after["modbus"] != before["modbus"]
    assert after["forwarder"] == before["forwarder"]
    assert after["opcua"] == before["opcua"]


def test_a_simulate_edit_recreates_nothing(tmp_path: Path) -> None:
    """Only `fieldgate simulate` reads `simulate:`; the collectors' slices leave it out."""
    config_dir = plant(tmp_path)
    before = {n: s.config_hash for n, s in render(config_dir).services.items()}
    device = config_dir / "devices" / "press-1.yaml"
    text = device.read_text()
    assert "simulate: {kind: constant, value: 21.5}" in text
    device.write_text(text.replace("simulate: {kind: constant, value: 21.5}", "simulate: {kind: sine}"))
    assert {n: s.config_hash for n, s in render(config_dir).services.items()} == before


def test_each_slice_is_json_that_reads_the_same_as_yaml(tmp_path: Path) -> None:
    from collectors.core.config import read_slice
    from collectors.core.validation import load_slice
    from collectors.forwarder.config import ForwarderConfig
    from collectors.modbus.config import ModbusCollectorConfig
    from collectors.opcua.config import OpcuaCollectorConfig

    out = tmp_path / "out"
    write(render(plant(tmp_path)), out)
    models = {"forwarder": ForwarderConfig, "modbus": ModbusCollectorConfig, "opcua": OpcuaCollectorConfig}
    for name, model in models.items():
        path = out / "config" / name / "config.yaml"
        header, body = path.read_text().split("\n", 1)
        assert header == "# Generated by fieldgate from the config directory; do not edit."
        data = json.loads(body)
        assert data == yaml.safe_load(path.read_text()) == read_slice(path), name
        assert data["handoff"]["socket"] == "/run/fieldgate/handoff.sock"
        load_slice(path, model)  # what the container's entry point does
    for name in ("modbus", "opcua"):
        devices = read_slice(out / "config" / name / "config.yaml")["devices"]
        assert devices and all(d["tags"] for d in devices)
        assert not any("simulate" in t for d in devices for t in d["tags"]), name


def test_a_pty_becomes_a_bind_mount_with_a_cgroup_rule(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        link = tmp_path / "ttyV0"
        link.symlink_to(os.ttyname(slave))
        out = tmp_path / "out"
        write(render(plant(tmp_path, rtu_port=str(link))), out)
        modbus = compose(out)["services"]["modbus"]
        rdev = os.stat(os.ttyname(slave)).st_rdev
        assert modbus["device_cgroup_rules"] == [f"c {os.major(rdev)}:{os.minor(rdev)} rwm"]
        assert {"type": "bind", "source": os.ttyname(slave), "target": str(link)} in modbus["volumes"]
        assert "devices" not in modbus
        assert "device_cgroup_rules" not in compose(out)["services"]["opcua"]
    finally:
        os.close(master)
        os.close(slave)


def test_a_serial_port_is_passed_by_its_stable_by_id_name(tmp_path: Path) -> None:
    from gateway.compose import render_loaded
    from gateway.config import load_config

    by_id = tmp_path / "by-id"
    by_id.mkdir()
    # /dev/null stands in for /dev/ttyUSB0: a character device that is not a pty.
    (by_id / "usb-FTDI_FT232R_A10K1234-if00-port0").symlink_to("/dev/null")
    config = load_config(plant(tmp_path, rtu_port="/dev/null"))
    project = render_loaded(config, config.dir, by_id=by_id)
    modbus = project.services["modbus"].compose
    assert modbus["devices"] == [f"{by_id}/usb-FTDI_FT232R_A10K1234-if00-port0:/dev/null:rwm"]
    assert "device_cgroup_rules" not in modbus
    assert "devices" not in project.services["forwarder"].compose


def test_a_port_missing_now_is_still_declared_with_a_warning(tmp_path: Path) -> None:
    project = render(plant(tmp_path, rtu_port="/dev/ttyUSB9"))
    assert project.services["modbus"].compose["devices"] == ["/dev/ttyUSB9:/dev/ttyUSB9:rwm"]
    assert "dialout" in project.services["modbus"].compose["group_add"]
    assert any("/dev/ttyUSB9" in w for w in project.warnings)


def test_bridge_network_reaches_the_gateway_pc_through_the_host_gateway(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(render(plant(tmp_path, network="bridge")), out)
    model = compose(out)
    for svc in model["services"].values():
        assert "network_mode" not in svc
        assert svc["extra_hosts"] == ["host.docker.internal:host-gateway"]
    forwarder = yaml.safe_load((out / "config" / "forwarder" / "config.yaml").read_text())
    modbus = yaml.safe_load((out / "config" / "modbus" / "config.yaml").read_text())
    opcua = yaml.safe_load((out / "config" / "opcua" / "config.yaml").read_text())
    assert forwarder["mqtt"]["host"] == "host.docker.internal"
    assert modbus["devices"][0]["connection"]["tcp"]["host"] == "host.docker.internal"
    assert opcua["devices"][0]["endpoint"].startswith("opc.tcp://host.docker.internal:")
    assert model["x-fieldgate"]["network"] == "bridge"


def test_secrets_stay_out_of_every_written_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_PASSWORD", "s3cret-Pa55")
    config_dir = plant(tmp_path)
    text = (config_dir / "gateway.yaml").read_text().replace(
        "  qos: 1\n", "  qos: 1\n  username: plant\n  password: ${MQTT_PASSWORD}\n")
    (config_dir / "gateway.yaml").write_text(text)
    out = tmp_path / "out"
    project = render(config_dir)
    write(project, out)
    for path in out.rglob("*"):
        if path.is_file():
            assert "s3cret-Pa55" not in path.read_text(), path
    forwarder = compose(out)["services"]["forwarder"]
    assert forwarder["environment"]["MQTT_PASSWORD"] == "${MQTT_PASSWORD}"
    assert project.secrets == {"MQTT_PASSWORD": "s3cret-Pa55"}


def test_render_cli_writes_the_project_or_lists_every_error(tmp_path: Path) -> None:
    config_dir = plant(tmp_path)
    out = tmp_path / "out"
    result = subprocess.run(fieldgate("render", str(config_dir), "-o", str(out)), capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (out / "docker-compose.yml").is_file()
    (config_dir / "devices" / "press-1.yaml").write_text(
        modbus_tcp_device("press-1", 5020).replace("type: uint16", "type: uint17"))
    bad_out = tmp_path / "bad"
    result = subprocess.run(fieldgate("render", str(config_dir), "-o", str(bad_out)), capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1
    assert "press-1.yaml:" in result.stderr and "uint17" in result.stderr
    assert not bad_out.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="makes root-owned files and chowns them to 10001")
def test_render_of_a_relative_dir_mounts_every_named_file_read_only_at_an_absolute_path(
    tmp_path: Path,
) -> None:
    """The README's form, `fieldgate render plant/ -o out/`, run in the directory holding plant/."""
    config_dir = plant(tmp_path)
    certs = config_dir / "certs"
    certs.mkdir()
    for name in ("ca.pem", "client.pem", "client.key", "mqtt.secret"):
        (certs / name).write_text(f"-- {name} --\n")
        (certs / name).chmod(0o644)
    (certs / "client.key").chmod(0o600)  # root-only: the containers' uid 10001 cannot read it
    text = (config_dir / "gateway.yaml").read_text().replace("  qos: 1\n", (
        "  qos: 1\n  username: plant\n  password_file: certs/mqtt.secret\n"
        "  tls: {ca_file: certs/ca.pem, cert_file: certs/client.pem, key_file: certs/client.key}\n"))
    (config_dir / "gateway.yaml").write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(fieldgate("render", "plant/", "-o", "out/"), capture_output=True, text=True,
                            cwd=tmp_path, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    forwarder_slice = yaml.safe_load((out / "config" / "forwarder" / "config.yaml").read_text())
    absolute = certs.resolve()
    assert forwarder_slice["mqtt"]["tls"] == {
        "ca_file": f"{absolute}/ca.pem", "cert_file": f"{absolute}/client.pem",
        "key_file": f"{absolute}/client.key", "verify_hostname": True}
    assert forwarder_slice["mqtt"]["password_file"] == f"{absolute}/mqtt.secret"
    mounts = [v for v in compose(out)["services"]["forwarder"]["volumes"] if str(v["source"]).startswith(str(absolute))]
    assert mounts == [
        {"type": "bind", "source": f"{absolute}/{name}", "target": f"{absolute}/{name}", "read_only": True}
        for name in ("ca.pem", "client.key", "client.pem", "mqtt.secret")]
    # The one file uid 10001 cannot read is named, with what to do; the others are not.
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: forwarder: {absolute}/client.key (owner 0, group 0, mode 0600) cannot be read by uid "
        "10001, the user the containers run as: make it readable by group 10001 (chgrp 10001 FILE; "
        "chmod 0640 FILE) or owned by that user (chown 10001 FILE; chmod 0600 FILE)"]
    # validate says so too, at the key's position, and still succeeds
    result = subprocess.run(fieldgate("validate", "plant"), capture_output=True, text=True, cwd=tmp_path,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "plant/gateway.yaml:" in result.stdout and "warning: mqtt.tls.key_file: " in result.stdout
    # Group-readable by 10001 is enough
    os.chown(certs / "client.key", 0, 10001)
    (certs / "client.key").chmod(0o640)
    result = subprocess.run(fieldgate("render", "plant/", "-o", "out/"), capture_output=True, text=True,
                            cwd=tmp_path, timeout=60, env=env)
    assert result.returncode == 0 and "warning:" not in result.stderr, result.stderr


def test_metrics_listen_where_metrics_host_says_and_bridge_publishes_only_there(tmp_path: Path) -> None:
    project = render(plant(tmp_path / "host"))
    modbus = yaml.safe_load(project.services["modbus"].config_text)
    assert modbus["metrics_host"] == "127.0.0.1"  # host networking: loopback unless configured
    assert "ports" not in project.services["modbus"].compose
    project = render(plant(tmp_path / "bridge", network="bridge"))
    services = project.services
    # The container's own namespace: it listens on all its addresses; the host publishes on loopback.
    assert yaml.safe_load(services["forwarder"].config_text)["metrics"]["host"] == "0.0.0.0"
    assert services["forwarder"].compose["ports"] == ["127.0.0.1:9108:9108"]
    assert services["opcua"].compose["ports"] == ["127.0.0.1:9110:9110"]
