"""The OPC UA device model refuses what cannot run, and says what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from collectors.opcua.config import OpcuaDevice
from tests.support.entry import run_entry_point

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _device(tag: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "name": "oven",
        "protocol": "opcua",
        "endpoint": "opc.tcp://h:4840",
        "tags": [tag or {"name": "t", "node": "ns=2;s=T"}],
        **extra,
    }


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (
            _device({"name": "t", "node": "Oven.T"}),
            "'Oven.T' is not a NodeId: write it like ns=2;s=Oven.Temperature",
        ),
        (_device({"name": "t", "node": "ns=x;i=1"}), "is not a NodeId"),
        (_device({"name": "t", "node": "ns=2;i=1", "poll": "1s"}), "poll applies to mode: poll tags"),
        (
            _device({"name": "t", "node": "ns=2;i=1", "deadband": 120, "deadband_type": "percent"}),
            "a percent deadband is 0..100",
        ),
        (_device(security={"policy": "Basic256Sha256"}), "mode None does not go with policy Basic256Sha256"),
        (
            _device(security={"username": "u", "password": "p", "password_file": "/f"}),
            "give password or password_file, not both",
        ),
        (_device(security={"password": "p"}), "a password needs a username"),
        (
            _device(security={"user_certificate": "/c.der"}),
            "user_certificate and user_private_key go together",
        ),
        (
            _device(security={"username": "u", "password": "p"}),
            "password with policy None: the password would travel unprotected",
        ),
        (
            _device(security={"username": "u", "password_file": "/f", "policy": "None"}),
            "password_file with policy None",
        ),
        (
            _device(security={"trust": "strict"}),
            "trust: strict checks the server certificate, and policy None exchanges none",
        ),
        (
            _device(security={"trust": "strict", "allow_password_without_encryption": True}),
            "trust: strict checks the server certificate",
        ),
        (_device(endpoint="http://h"), "is not an endpoint"),
        ({**_device(), "tags": [{"name": "t", "node": "i=1"}, {"name": "t", "node": "i=2"}]}, "used twice"),
    ],
)
def test_refused(device: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(".", r"\.")):
        OpcuaDevice.model_validate(device)


@pytest.mark.parametrize(
    "node",
    [
        "i=2258",
        "ns=2;s=Oven.Temperature",
        "ns=2;i=1042",
        "nsu=urn:vendor:plc;s=A;B",
        "ns=3;g=12345678-1234-5678-1234-567812345678",
        "ns=4;b=AAE=",
    ],
)
def test_node_id_forms(node: str) -> None:
    assert OpcuaDevice.model_validate(_device({"name": "t", "node": node})).tags[0].node == node


def test_the_entry_point_refuses_a_bad_config_with_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "opcua.yaml"
    bad.write_text(
        "name: opcua\n"
        "devices:\n"
        "  - name: oven\n"
        "    protocol: opcua\n"
        "    endpoint: opc.tcp://h:4840\n"
        "    tags:\n"
        "      - {name: t, node: Oven.T}\n"
        '      - {name: u, node: "ns=2;i=1", deadband: 120, deadband_type: percent}\n'
        "    security: {password: s3cret-never-shown}\n"
    )
    done = run_entry_point("collectors.opcua", bad)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"{bad}:7:25: devices[0].tags[0].node: 'Oven.T' is not a NodeId: write it like ns=2;s=Oven.Temperature, "
        "ns=2;i=1042, nsu=urn:vendor:plc;s=Name, ns=2;g=<guid> or ns=2;b=<base64>",
        f"{bad}:8:47: devices[0].tags[1].deadband: a percent deadband is 0..100 (of the EURange), not 120",
        f"{bad}:9:26: devices[0].security.password: a password needs a username",
    ]
    assert "s3cret" not in done.stderr


def test_a_password_with_policy_none_needs_the_documented_opt_in() -> None:
    allowed = _device(security={"username": "u", "password": "p", "allow_password_without_encryption": True})
    assert OpcuaDevice.model_validate(allowed).security.allow_password_without_encryption
    # a user name alone sends no secret; an encrypted policy needs no opt-in
    OpcuaDevice.model_validate(_device(security={"username": "u"}))
    OpcuaDevice.model_validate(
        _device(security={"username": "u", "password": "p", "policy": "Basic256Sha256", "mode": "Sign",
                          "trust": "strict"})
    )


def test_validate_points_at_the_password_and_the_trust_key(tmp_path: Path) -> None:
    from gateway.config import load_config

    plant = tmp_path / "plant"
    (plant / "devices").mkdir(parents=True)
    (plant / "gateway.yaml").write_text("gateway: {id: line3}\n")
    (plant / "devices" / "oven.yaml").write_text(
        "name: oven\n"
        "protocol: opcua\n"
        "endpoint: opc.tcp://h:4840\n"
        "security:\n"
        "  username: op\n"
        "  password: s3cret-never-shown\n"
        "tags: [{name: t, node: ns=2;s=T}]\n"
    )
    (plant / "devices" / "press.yaml").write_text(
        "name: press\n"
        "protocol: opcua\n"
        "endpoint: opc.tcp://h:4841\n"
        "security: {policy: None, trust: strict}\n"
        "tags: [{name: t, node: ns=2;s=T}]\n"
    )
    with pytest.raises(ValueError) as refused:
        load_config(plant)
    lines = str(refused.value).splitlines()
    oven, press = plant / "devices" / "oven.yaml", plant / "devices" / "press.yaml"
    assert any(
        line.startswith(f"{oven}:6:13: device oven: security.password: password with policy None")
        and "allow_password_without_encryption: true" in line
        for line in lines
    ), lines
    assert any(
        line.startswith(f"{press}:4:33: device press: security.trust: trust: strict checks the server")
        for line in lines
    ), lines
    assert "s3cret" not in str(refused.value)
