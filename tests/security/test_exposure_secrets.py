"""Each child gets only its own secrets: read from /proc/<pid>/environ of a running `fieldgate up`,
and from the environment the compose file gives each service."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.compose import render
from gateway.config import load_config
from gateway.runtime.process import ProcessRuntime, RunDir
from gateway.supervisor import read_status
from tests.docker.stack import gateway_yaml, modbus_tcp_device, opcua_device
from tests.gateway.test_process_runtime import plant_for, popen_cli, stop, wait_sync
from tests.support.broker import Mosquitto
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.security

MQTT_SECRET = "mqtt-s3cret-Pa55"
OVEN_SECRET = "oven-s3cret-Pa55"


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode("utf-8", "replace").split("\0") if "=" in item)


def test_the_modbus_collector_process_does_not_get_the_broker_password(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MQTT_PASSWORD", MQTT_SECRET)
    extra = ", username: gw, password: '${MQTT_PASSWORD}'"
    with plant_for(tmp_path, broker, mqtt_extra=extra) as plant:
        run_dir = RunDir.for_config(plant)
        up = popen_cli(tmp_path / "up.log", "up", str(plant))
        try:
            # the forwarder still logs in and publishes with its password
            subscriber.wait_for(lambda m: m.topic == "fieldgate/line9/press-1/temperature", 60)

            def pids() -> dict[str, int]:
                services = (read_status(run_dir) or {}).get("services", [])
                found = {s["name"]: s.get("pid") for s in services}
                return found if all(found.get(n) for n in ("forwarder", "modbus")) else {}

            found = wait_sync(pids, what="both services running")
            assert isinstance(found, dict)
            forwarder, modbus = environ(found["forwarder"]), environ(found["modbus"])
        finally:
            assert stop(up) == 0, (tmp_path / "up.log").read_text()
    assert forwarder.get("MQTT_PASSWORD") == MQTT_SECRET
    assert "MQTT_PASSWORD" not in modbus
    assert MQTT_SECRET not in "\0".join(f"{k}={v}" for k, v in modbus.items())


def two_protocol_plant(tmp_path: Path) -> Path:
    root = tmp_path / "plant"
    (root / "devices").mkdir(parents=True)
    gateway = gateway_yaml("line3", 1883, 9108, "host").replace(
        "  qos: 1\n", "  qos: 1\n  username: plant\n  password: ${MQTT_PASSWORD}\n")
    (root / "gateway.yaml").write_text(gateway)
    (root / "devices" / "press-1.yaml").write_text(
        modbus_tcp_device("press-1", 5020).replace("127.0.0.1", '"${PLC_HOST}"'))
    oven = opcua_device("oven-2", 4840)
    assert "security:" not in oven
    oven += ("security:\n  policy: Basic256Sha256\n  mode: SignAndEncrypt\n  username: operator\n"
             "  password: ${OVEN_PASSWORD}\n")
    (root / "devices" / "oven-2.yaml").write_text(oven)
    return root


ENV = {"MQTT_PASSWORD": MQTT_SECRET, "OVEN_PASSWORD": OVEN_SECRET, "PLC_HOST": "127.0.0.1",
       "PATH": "/usr/bin:/bin", "HOME": "/root", "UNRELATED": "kept"}


async def test_each_process_child_gets_only_its_own_passwords(tmp_path: Path) -> None:
    from gateway.runtime.process import service_environment

    config_dir = two_protocol_plant(tmp_path)
    config = load_config(config_dir, env=ENV)
    runtime = ProcessRuntime(RunDir.for_config(config_dir), env=ENV)
    specs = runtime.desired(config, config_dir)
    envs = {name: service_environment(runtime._base_env, runtime._passwords, spec.secrets, runtime._named)
            for name, spec in specs.items()}
    assert envs["forwarder"]["MQTT_PASSWORD"] == MQTT_SECRET
    assert envs["opcua"]["OVEN_PASSWORD"] == OVEN_SECRET
    assert "OVEN_PASSWORD" not in envs["forwarder"] and "OVEN_PASSWORD" not in envs["modbus"]
    assert "MQTT_PASSWORD" not in envs["modbus"] and "MQTT_PASSWORD" not in envs["opcua"]
    for env in envs.values():
        assert "PLC_HOST" not in env  # its value is in the Modbus slice already
        assert env["UNRELATED"] == "kept" and env["PATH"] == "/usr/bin:/bin"


def test_each_compose_service_names_only_its_own_passwords(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    project = render(two_protocol_plant(tmp_path))
    environments = {name: svc.compose["environment"] for name, svc in project.services.items()}
    assert environments["forwarder"] == {"FIELDGATE_METRICS_PORT": "9108", "MQTT_PASSWORD": "${MQTT_PASSWORD}"}
    assert environments["modbus"] == {"FIELDGATE_METRICS_PORT": "9109"}
    assert environments["opcua"] == {"FIELDGATE_METRICS_PORT": "9110", "OVEN_PASSWORD": "${OVEN_PASSWORD}"}
