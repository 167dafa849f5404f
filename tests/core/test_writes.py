"""The rules every write obeys (collectors/core/writes.py), and where the collectors and the
Sparkplug format apply them: pure checks, no I/O."""

from __future__ import annotations

import re
from typing import Any

import pytest
from asyncua import ua
from pydantic import ValidationError

from collectors.core.errors import WriteError
from collectors.core.model import WriteRequest, now_ms
from collectors.core.writes import (
    Busy,
    Expired,
    PendingWrites,
    as_bool,
    check_deadline,
    check_limits,
)
from collectors.forwarder import sparkplug_b_pb2 as pb
from collectors.forwarder.sparkplug_types import DoesNotFit, convert_for_tag, metric_value
from collectors.modbus.codec import encode
from collectors.modbus.config import ModbusDevice, ModbusTag
from collectors.opcua.codec import to_variant
from collectors.opcua.config import OpcuaTag

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("value", "expected"), [(True, True), (False, False), (1, True), (0, False),
                                                 (1.0, True), (0.0, False)])
def test_a_boolean_takes_true_false_1_and_0(value: Any, expected: bool) -> None:
    assert as_bool("run", value) is expected


@pytest.mark.parametrize("value", [2, -1, 0.5, "true", "1", None, [1]])
def test_a_boolean_refuses_anything_else(value: Any) -> None:
    with pytest.raises(WriteError, match=r"^run is a bool: write true, false, 1 or 0, not "):
        as_bool("run", value)


def test_limits_refuse_with_the_limit_in_the_message() -> None:
    check_limits("limit", 150, 0, 150)
    check_limits("limit", 5, None, None)
    check_limits("limit", [1, 2], 0, 150)
    with pytest.raises(WriteError, match=r"^limit: 150.5 is above its write_max 150$"):
        check_limits("limit", 150.5, 0, 150)
    with pytest.raises(WriteError, match=r"^limit: -0.1 is below its write_min 0$"):
        check_limits("limit", -0.1, 0, None)
    with pytest.raises(WriteError, match=r"is above its write_max"):
        check_limits("limit", [1, 200], 0, 150)
    with pytest.raises(WriteError, match=r"^limit has write limits: write a number, not 'x'$"):
        check_limits("limit", "x", 0, 150)
    with pytest.raises(WriteError, match="write a number"):
        check_limits("limit", True, 0, 150)


def request(deadline_in: float | None) -> WriteRequest:
    deadline = None if deadline_in is None else now_ms() + round(deadline_in * 1000)
    return WriteRequest("w", "press-1", "limit", 1, deadline)


def test_a_write_is_refused_when_it_cannot_be_done_before_its_deadline() -> None:
    check_deadline(request(None), needs=100.0)  # an older forwarder's write: no deadline
    check_deadline(request(5.0), needs=1.0)
    with pytest.raises(Expired, match=r"^expired: not written, its deadline passed"):
        check_deadline(request(-0.5))
    with pytest.raises(Expired, match=r"^expired: not written, .* the device may take 2s to answer$"):
        check_deadline(request(1.0), needs=2.0)


def test_pending_writes_are_capped_per_tag_and_per_link() -> None:
    pending = PendingWrites(per_link=3, per_tag=2)
    with pending.admit("tcp:a", "press-1", "sp0"), pending.admit("tcp:a", "press-1", "sp0"):
        with pytest.raises(Busy, match=r"^busy: too many pending writes to press-1/sp0 \(2\)"), \
                pending.admit("tcp:a", "press-1", "sp0"):
            pass
        with pending.admit("tcp:a", "press-1", "sp1"):
            with pytest.raises(Busy, match=r"^busy: too many pending writes on tcp:a \(3\)"), \
                    pending.admit("tcp:a", "press-1", "sp2"):
                pass
            with pending.admit("tcp:b", "press-2", "sp0"):  # another link has its own room
                assert len(pending) == 4
    assert len(pending) == 0 and pending.busy == 2
    with pending.admit("tcp:a", "press-1", "sp0"):  # room again once they are done
        pass


# ------------------------------------------------------------------ where the collectors apply them

def modbus_tag(**keys: Any) -> ModbusTag:
    return ModbusTag.model_validate({"name": "limit", "table": "holding", "address": 0, "type": "int16",
                                     "writable": True, **keys})


def test_write_limits_are_checked_in_the_device_file() -> None:
    assert modbus_tag(write_min=0, write_max=150).write_max == 150
    assert modbus_tag(write_min=5).write_max is None
    cases: list[tuple[dict[str, Any], str]] = [
        ({"write_min": 10, "write_max": 1}, "write_min (10) is above write_max (1)"),
        ({"write_min": 0, "writable": False}, "write_min and write_max apply only to writable: true tags"),
        ({"write_max": 1, "type": "string", "length": 2}, "apply only to numeric tags, not string"),
        ({"write_max": 1, "bit": 3}, "apply only to numeric tags, not a bit"),
        ({"write_max": 1, "type": "bool"}, "apply only to numeric tags, not bool"),
        ({"write_max": float("inf")}, "finite number"),
    ]
    for keys, message in cases:
        with pytest.raises(ValidationError, match=re.escape(message)):
            modbus_tag(**keys)
    node = {"name": "setpoint", "node": "ns=2;s=Oven.Setpoint"}
    assert OpcuaTag.model_validate({**node, "writable": True, "write_min": 0}).write_min == 0
    with pytest.raises(ValidationError, match="apply only to writable: true tags"):
        OpcuaTag.model_validate({**node, "write_min": 0})
    with pytest.raises(ValidationError, match=r"write_min \(3\) is above write_max \(2\)"):
        OpcuaTag.model_validate({**node, "writable": True, "write_min": 3, "write_max": 2})


def device(**tag: Any) -> ModbusDevice:
    return ModbusDevice.model_validate({
        "name": "press-1", "protocol": "modbus", "connection": {"tcp": {"host": "127.0.0.1"}},
        "tags": [{"name": "speed", "table": "holding", "address": 0, "writable": True, **tag}],
    })


@pytest.mark.parametrize(
    ("tag", "value", "message"),
    [
        ({"type": "float64", "scale": 0.001}, 1e308,
         "speed: 1e+308 is out of range for float64 after scale and offset"),
        ({"type": "float64"}, float("inf"), "speed: inf is not a finite number"),
        ({"type": "float64"}, float("nan"), "speed: nan is not a finite number"),
        ({"type": "float64"}, 10**400, "is out of range for float64"),
        ({"type": "int32", "scale": 1e-300}, 1e10, "out of range for int32 after scale and offset"),
        ({"type": "float32", "scale": 0.5}, 3e38, "out of range for float32"),
    ],
)
def test_a_modbus_write_is_finite_before_and_after_scaling(tag: dict[str, Any], value: Any, message: str) -> None:
    dev = device(**tag)
    with pytest.raises(WriteError) as caught:
        encode(dev.tags[0], dev, value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "vt", "message"),
    [
        (float("inf"), ua.VariantType.Double, "inf is not a finite number"),
        (float("nan"), ua.VariantType.Float, "nan is not a finite number"),
        (10**400, ua.VariantType.Double, "out of range"),
        ("true", ua.VariantType.Boolean, "takes a Boolean (true/false, 0/1), got 'true'"),
        (2, ua.VariantType.Boolean, "takes a Boolean (true/false, 0/1), got 2"),
    ],
)
def test_an_opcua_write_is_finite_and_a_boolean_is_0_or_1(value: Any, vt: ua.VariantType, message: str) -> None:
    with pytest.raises(WriteError) as caught:
        to_variant(value, vt)
    assert message in str(caught.value)


@pytest.mark.parametrize(("field", "raw", "expected"), [("int_value", 1, True), ("int_value", 0, False),
                                                         ("boolean_value", True, True), ("long_value", 1, True)])
def test_a_dcmd_boolean_takes_0_and_1(field: str, raw: Any, expected: bool) -> None:
    metric = pb.Payload.Metric(name="run", datatype=pb.Boolean, **{field: raw})
    assert convert_for_tag(metric_value(metric, pb.Boolean), pb.Boolean) is expected


@pytest.mark.parametrize(("field", "raw"), [("int_value", 2), ("long_value", 7), ("double_value", 0.5)])
def test_a_dcmd_boolean_refuses_other_numbers_as_json_set_does(field: str, raw: Any) -> None:
    metric = pb.Payload.Metric(name="run", datatype=pb.Boolean, **{field: raw})
    with pytest.raises(DoesNotFit):
        convert_for_tag(metric_value(metric, pb.Boolean), pb.Boolean)
