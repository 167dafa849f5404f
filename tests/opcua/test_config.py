"""The OPC UA device model refuses what cannot run, and says what is allowed."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from collectors.opcua.config import OpcuaDevice

pytestmark = pytest.mark.unit


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
        (_device(endpoint="http://h"), "String should match pattern"),
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
