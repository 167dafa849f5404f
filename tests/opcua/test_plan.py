"""`fieldgate plan` lines for an OPC UA device."""

from __future__ import annotations

import pytest

from collectors.opcua.config import OpcuaDevice
from collectors.opcua.subscriptions import plan_device, poll_classes, queue_maxsize

pytestmark = pytest.mark.unit

OVEN = OpcuaDevice.model_validate(
    {
        "name": "oven-2",
        "protocol": "opcua",
        "endpoint": "opc.tcp://10.20.0.7:4840",
        "security": {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", "username": "op", "password": "x"},
        "subscription": {"publishing_interval": "500ms", "sampling_interval": "100ms", "queue_size": 10},
        "tags": [
            {"name": "temperature", "node": "ns=2;s=Oven.Temperature", "deadband": 0.1},
            {"name": "level", "node": "ns=2;s=Oven.Level", "deadband": 2, "deadband_type": "percent"},
            {"name": "setpoint", "node": "ns=2;s=Oven.Setpoint", "writable": True},
            {"name": "batch", "node": "ns=2;i=1042", "mode": "poll", "poll": "5s"},
            {"name": "shift", "node": "ns=2;i=1043", "mode": "poll", "poll": "5s"},
            {"name": "counter", "node": "ns=2;i=1044", "mode": "poll", "max_silence": "10m"},
        ],
    }
)


def test_plan_lists_the_subscription_items_and_one_read_per_poll_class() -> None:
    assert plan_device(OVEN) == [
        "oven-2: opc.tcp://10.20.0.7:4840  security Basic256Sha256,SignAndEncrypt  user op  trust tofu",
        "  subscription: publishing 500ms, 3 monitored items, client queue 10000",
        "    temperature  ns=2;s=Oven.Temperature  sampling 100ms  queue 10"
        "  deadband 0.1 absolute (server DataChangeFilter)",
        "    level        ns=2;s=Oven.Level        sampling 100ms  queue 10"
        "  deadband 2% of EURange (server DataChangeFilter)",
        "    setpoint     ns=2;s=Oven.Setpoint     sampling 100ms  queue 10  every change  writable",
        "  poll every 5s: one Read of 3 nodes",
        "    batch    ns=2;i=1042",
        "    shift    ns=2;i=1043",
        "    counter  ns=2;i=1044",
        "  heartbeat: every tag reported at least every 1m / 10m",
    ]


def test_poll_classes_group_by_interval_with_the_device_default() -> None:
    classes = poll_classes(OVEN)
    assert list(classes) == [5.0]  # batch and shift at 5s, counter at the device's default poll (5s)
    assert [t.name for t in classes[5.0]] == ["batch", "shift", "counter"]


def test_the_client_queue_holds_every_item_queue_twice() -> None:
    many = OVEN.model_copy(
        update={"tags": [OVEN.tags[0].model_copy(update={"name": f"t{i}"}) for i in range(1000)]}
    )
    assert queue_maxsize(many) == 2 * 1000 * 10
    assert queue_maxsize(OVEN) == 10_000


def test_plan_says_when_a_password_goes_without_encryption() -> None:
    security = {"username": "op", "password": "x", "allow_password_without_encryption": True}
    plain = OVEN.model_copy(update={"security": OVEN.security.model_validate(security)})
    assert plan_device(plain)[0] == (
        "oven-2: opc.tcp://10.20.0.7:4840  no security  user op  PASSWORD SENT WITHOUT ENCRYPTION"
    )
