"""End to end: simulator -> `python -m collectors.opcua` -> `python -m collectors.forwarder` -> Mosquitto."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.broker import Mosquitto
from tests.support.mqtt import Message, Subscriber

pytestmark = pytest.mark.sim

PREFIX = "fieldgate/line3"


@pytest.fixture
def gateway(
    plain_sim: tuple[Any, dict[str, Any]], broker: Mosquitto, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    """The forwarder and the collector as the processes the runtime starts."""
    _, device = plain_sim
    socket = tmp_path / "handoff" / "handoff.sock"
    forwarder_config = {
        "gateway": {"id": "line3", "group": "plant1"},
        "mqtt": {"host": broker.host, "port": broker.port, "qos": 1, "format": "json"},
        "buffer": {"dir": str(tmp_path / "buffer")},
        "metrics": {"port": None},
        "handoff": {"socket": str(socket)},
        "devices": [
            {
                "name": "oven",
                "collector": "opcua",
                "tags": [
                    {"name": t["name"], "unit": t.get("unit"), "writable": t.get("writable", False)}
                    for t in device["tags"]
                ],
            }
        ],
    }
    collector_config = {
        "name": "opcua",
        "handoff": {"socket": str(socket)},
        "state_dir": str(tmp_path / "state"),
        "metrics_port": None,
        "devices": [device],
    }
    (tmp_path / "forwarder.yaml").write_text(yaml.safe_dump(forwarder_config))
    (tmp_path / "opcua.yaml").write_text(yaml.safe_dump(collector_config))
    processes = []
    for module, config in (("collectors.forwarder", "forwarder.yaml"), ("collectors.opcua", "opcua.yaml")):
        with (tmp_path / f"{module}.log").open("ab") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", module, "--config", str(tmp_path / config)], stdout=log, stderr=log
                )
            )
    try:
        yield device
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _on(topic: str) -> Any:
    return lambda m: m.topic == topic


def test_readings_and_writes_through_the_forwarder_and_the_broker(
    gateway: dict[str, Any], subscriber: Subscriber
) -> None:
    temps = subscriber.wait_for(_on(f"{PREFIX}/oven/temperature"), timeout=30, count=3)
    payload = temps[-1].json()
    assert set(payload) == {"value", "ts", "quality", "unit"}
    assert payload["quality"] == "good" and payload["unit"] == "degC"
    assert isinstance(payload["value"], float) and 0 <= payload["value"] <= 100
    assert payload["ts"].endswith("Z") and len(payload["ts"]) == len("2026-11-28T08:00:00.123Z")
    recipe = subscriber.wait_for(_on(f"{PREFIX}/oven/recipe"))[0].json()
    assert (recipe["value"], recipe["quality"]) == ("R-17", "good")

    subscriber.publish(f"{PREFIX}/oven/setpoint/set", json.dumps({"value": 190, "id": "abc"}))
    result = subscriber.wait_for(_on(f"{PREFIX}/oven/setpoint/set/result"), timeout=15)[0]
    assert result.json() == {"id": "abc", "ok": True}

    def setpoint_190(m: Message) -> bool:
        return m.topic == f"{PREFIX}/oven/setpoint" and m.json()["value"] == 190.0

    subscriber.wait_for(setpoint_190, timeout=15)

    subscriber.publish(f"{PREFIX}/oven/temperature/set", json.dumps({"value": 1, "id": "ro"}))
    refused = subscriber.wait_for(_on(f"{PREFIX}/oven/temperature/set/result"), timeout=15)[0].json()
    assert refused["id"] == "ro" and refused["ok"] is False and "not writable" in refused["error"]


def test_the_entrypoint_refuses_a_bad_config_with_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "opcua.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "opcua",
                "devices": [
                    {
                        "name": "oven",
                        "protocol": "opcua",
                        "endpoint": "opc.tcp://h:4840",
                        "tags": [{"name": "t", "node": "Oven.Temperature"}],
                    }
                ],
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "collectors.opcua", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert str(config) in done.stderr and "'Oven.Temperature' is not a NodeId" in done.stderr
