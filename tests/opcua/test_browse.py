"""`fieldgate opcua browse` against the simulator: entries that paste into a device file and work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from collectors.opcua.browse import render, tag_name
from collectors.opcua.config import OpcuaDevice
from collectors.opcua.session import BrowsedVariable
from gateway.cli import main


@pytest.mark.sim
def test_browse_prints_tag_entries_that_make_a_valid_device_file(
    plain_sim: tuple[Any, dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, device = plain_sim
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert main(["opcua", "browse", device["endpoint"], "--depth", "3"]) == 0
    out = capsys.readouterr().out
    tags = yaml.safe_load(out)["tags"]
    by_name = {t["name"]: t for t in tags}
    assert set(by_name) == {"temperature", "setpoint", "running", "recipe", "batch"}
    assert by_name["recipe"]["node"] == "nsu=urn:plant:recipes;s=Active"
    assert by_name["temperature"]["node"] == "nsu=urn:fieldgate:simulator:ns2;s=Oven.Temperature"
    assert by_name["setpoint"].get("writable") is True and "writable" not in by_name["temperature"]
    assert "(Double" in out and "(Boolean" in out and "(String" in out
    # pasted as printed below a device file's first lines, `fieldgate validate` accepts it
    OpcuaDevice.model_validate(
        {"name": "pasted", "protocol": "opcua", "endpoint": device["endpoint"], "tags": tags}
    )
    plant = tmp_path / "plant"
    (plant / "devices").mkdir(parents=True)
    (plant / "gateway.yaml").write_text("gateway: {id: line3}\nmetrics: {port: null}\n")
    (plant / "devices" / "pasted.yaml").write_text(
        f"name: pasted\nprotocol: opcua\nendpoint: {device['endpoint']}\n" + out
    )
    capsys.readouterr()
    assert main(["validate", str(plant)]) == 0, capsys.readouterr()


@pytest.mark.sim
def test_browse_of_a_server_that_is_not_there_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.broker import free_port

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}"
    assert main(["opcua", "browse", endpoint]) == 1
    assert capsys.readouterr().err.strip() == f"fieldgate opcua browse: {endpoint}: connection refused"


@pytest.mark.unit
def test_render_names_are_topic_safe_and_unique() -> None:
    found = [
        BrowsedVariable("ns=2;s=A.T", "Line 1.Oven A.Temperature", "Double", False, None),
        BrowsedVariable("ns=2;s=B.T", "Line 1.Oven B.Temperature", "Double", True, "zone B"),
        BrowsedVariable('ns=2;s=Odd"Name', "Line 1.Speed #1", "Float", False, None),
    ]
    tags = yaml.safe_load(render(found, "opc.tcp://x:4840", "i=85", 5))["tags"]
    assert [t["name"] for t in tags] == ["Line_1.Oven_A.Temperature", "Line_1.Oven_B.Temperature", "Speed_1"]
    assert tags[2]["node"] == 'ns=2;s=Odd"Name'
    assert tag_name("/+#") == "tag"
