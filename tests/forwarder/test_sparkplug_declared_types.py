"""Datatypes a collector declares for a device (hand-off `types`: OPC UA nodes' DataType attributes)
decide the Sparkplug births, and the codec carries the types that brings in (pure, no I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.core.model import DeviceTypes, Reading
from collectors.forwarder import sparkplug_b_pb2 as pb
from collectors.forwarder.sparkplug import SparkplugFormat
from collectors.forwarder.sparkplug_types import TYPE_RULES, DoesNotFit, convert_for_tag
from tests.forwarder.test_sparkplug import T0, config, device_births, kind, started
from tests.support import sparkplug as sp

pytestmark = pytest.mark.unit


def test_declared_types_are_born_as_declared_and_the_catalog_keeps_its_own(tmp_path: Path) -> None:
    fmt = SparkplugFormat(config(tmp_path), settle=0)
    assert fmt.datatypes(DeviceTypes("oven-2", {"setpoint": "float", "batch": "int16"})) == []  # not born yet
    fmt.datatypes(DeviceTypes("press-1", {"count": "double"}))  # the catalog says int16: it stays
    fmt.observe([Reading("oven-2", "setpoint", 180.0, T0), Reading("oven-2", "batch", 7, T0)])
    fmt.will()
    births = device_births(fmt.connected())
    oven = births["oven-2"]
    assert [(m.name, m.datatype) for m in oven.metrics] == [("setpoint", sp.FLOAT), ("batch", sp.INT16)]
    assert oven.metric("setpoint").value == 180.0 and oven.metric("batch").value == 7
    assert births["press-1"].metric("count").datatype == sp.INT16
    assert fmt.node.type_changes == 0
    out = fmt.encode([Reading("oven-2", "batch", -3, T0 + 1)], False)
    assert [kind(m) for m in out] == ["DDATA"]
    assert sp.signed(sp.decode(out[0].payload).metrics[0].value, sp.INT16) == -3


def test_a_declared_type_the_host_was_not_told_makes_the_node_born_again(tmp_path: Path) -> None:
    fmt, _ = started(tmp_path)
    fmt.encode([Reading("oven-2", "batch", 7, T0)], False)  # inferred from the value: Int64
    again = fmt.datatypes(DeviceTypes("oven-2", {"batch": "int16", "setpoint": "double"}))
    assert [kind(m) for m in again] == ["NBIRTH", "DBIRTH", "DBIRTH"]
    oven = device_births(again)["oven-2"]
    assert {m.name: m.datatype for m in oven.metrics} == {"batch": sp.INT16, "setpoint": sp.DOUBLE}
    assert fmt.datatypes(DeviceTypes("oven-2", {"batch": "int16", "setpoint": "double"})) == []  # no news
    # a declared type the values do not fit (a server that says Int16 and sends arrays): the values win
    fmt.encode([Reading("oven-2", "setpoint", [1.5, 2.5], T0 + 1)], False)
    assert fmt.datatypes(DeviceTypes("oven-2", {"setpoint": "double"})) == []
    # unknown devices, tags and type names are ignored
    assert fmt.datatypes(DeviceTypes("nowhere", {"x": "int16"})) == []
    assert fmt.datatypes(DeviceTypes("oven-2", {"nope": "int16", "batch": "Quaternion"})) == []


@pytest.mark.parametrize(
    ("datatype", "value", "wire"),
    [
        (pb.DateTime, "2026-11-28T08:00:00.123Z", 1_795_852_800_123),
        (pb.DateTime, 1_795_852_800_123, 1_795_852_800_123),
        (pb.Int16Array, [1, -2, 3], b"\x01\x00\xfe\xff\x03\x00"),
        (pb.UInt8Array, [1, 255], b"\x01\xff"),
        (pb.FloatArray, [0.5], b"\x00\x00\x00\x3f"),
    ],
)
def test_declared_types_carry_their_values(datatype: int, value: object, wire: object) -> None:
    assert TYPE_RULES[datatype].coerce(value) == wire


@pytest.mark.parametrize(
    ("datatype", "value"),
    [(pb.DateTime, "not a date"), (pb.DateTime, "1960-01-01T00:00:00Z"), (pb.Int16Array, [40000]),
     (pb.UInt32Array, [-1]), (pb.FloatArray, [1e300]), (pb.Int8Array, [True])],
)
def test_values_outside_a_declared_type_do_not_fit(datatype: int, value: object) -> None:
    with pytest.raises(DoesNotFit):
        TYPE_RULES[datatype].coerce(value)


def test_a_dcmd_to_a_datetime_tag_reaches_the_collector_as_iso_8601() -> None:
    assert convert_for_tag(1_795_852_800_123, pb.DateTime) == "2026-11-28T08:00:00.123Z"
    with pytest.raises(DoesNotFit):
        convert_for_tag(2**63, pb.DateTime)
