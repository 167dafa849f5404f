"""Sparkplug interop with hosts (issue 9, item 12): value fields as Eclipse Tahu maps them, and
Quality codes a host documents (Ignition MQTT Engine: 192 good, 0 bad, 500 stale).

Payloads are decoded with tests/support/sparkplug.py (the wire format by hand), and DCMDs are
built field by field, so what is checked is the bytes a host reads and writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.core.model import DeviceState, Reading
from collectors.forwarder.config import ForwarderConfig
from collectors.forwarder.sparkplug import SparkplugFormat
from tests.support import sparkplug as sp

pytestmark = pytest.mark.unit

T0 = 1_790_000_000_000
INT_VALUE, LONG_VALUE = 10, 11  # Metric field numbers (Sparkplug 3.0 schema)

# Eclipse Tahu's codec (SparkplugBPayloadEncoder/Decoder): which field carries each integer type.
TAHU = {
    "int8": (sp.INT8, INT_VALUE), "int16": (sp.INT16, INT_VALUE), "int32": (sp.INT32, INT_VALUE),
    "uint8": (sp.UINT8, INT_VALUE), "uint16": (sp.UINT16, INT_VALUE),
    "uint32": (sp.UINT32, LONG_VALUE), "int64": (sp.INT64, LONG_VALUE), "uint64": (sp.UINT64, LONG_VALUE),
}
LARGEST = {"int8": 127, "int16": 32767, "int32": 2**31 - 1, "uint8": 255, "uint16": 65535,
           "uint32": 4_000_000_000, "int64": 2**63 - 1, "uint64": 2**64 - 1}


def fmt_with(tmp_path: Path) -> SparkplugFormat:
    config = ForwarderConfig.model_validate({
        "gateway": {"id": "line3", "group": "plant1"},
        "mqtt": {"format": "sparkplug"},
        "buffer": {"dir": str(tmp_path / "buffer")},
        "metrics": {"port": None},
        "devices": [{"name": "meter", "collector": "modbus", "tags": [
            {"name": name, "type": name, "writable": True} for name in TAHU
        ]}],
    })
    fmt = SparkplugFormat(config, settle=0)
    fmt.will()
    fmt.connected()
    return fmt


@pytest.mark.parametrize("type_name", list(TAHU))
def test_integer_types_travel_in_the_field_tahu_reads(tmp_path: Path, type_name: str) -> None:
    datatype, field = TAHU[type_name]
    fmt = fmt_with(tmp_path)
    (data,) = fmt.encode([Reading("meter", type_name, LARGEST[type_name], T0)], False)
    (metric,) = sp.decode(data.payload).metrics
    assert metric.value_field == field, f"{type_name} in field {metric.value_field}, Tahu reads {field}"
    assert sp.signed(metric.value, datatype) == LARGEST[type_name]
    birth = next(m for m in fmt.node.births(0, new_session=False) if "/DBIRTH/" in m.topic)
    born = sp.decode(birth.payload).metric(type_name)
    assert (born.datatype, born.value_field) == (datatype, field)


def dcmd(metric: bytes) -> bytes:
    return sp.command([metric])


def uint32_metric(value: int, field: int) -> bytes:
    """A UInt32 DCMD metric with its value in `field` (Tahu: long_value; some hosts: int_value)."""
    body = sp._bytes(1, b"uint32") + sp._key(4, 0) + sp._varint(sp.UINT32)
    return body + sp._key(field, 0) + sp._varint(value)


@pytest.mark.parametrize("field", [LONG_VALUE, INT_VALUE])
def test_a_uint32_dcmd_is_read_from_long_value_as_tahu_writes_it_and_from_int_value(
    tmp_path: Path, field: int
) -> None:
    fmt = fmt_with(tmp_path)
    incoming = fmt.handle_incoming("spBv1.0/plant1/DCMD/line3/meter", dcmd(uint32_metric(4_000_000_000, field)))
    assert [(w.tag, w.value) for w in incoming.writes] == [("uint32", 4_000_000_000)]


def test_a_uint32_dcmd_past_32_bits_is_refused(tmp_path: Path) -> None:
    fmt = fmt_with(tmp_path)
    incoming = fmt.handle_incoming("spBv1.0/plant1/DCMD/line3/meter", dcmd(uint32_metric(2**32, LONG_VALUE)))
    assert incoming.writes == [] and fmt.stats.commands_refused == 1


def test_quality_codes_are_the_ones_a_host_documents(tmp_path: Path) -> None:
    """192 good, 0 bad, 500 stale (Ignition MQTT Engine); 64 (uncertain) is none of them."""
    fmt = fmt_with(tmp_path)
    births = fmt.node.births(0)
    born = sp.decode(next(m for m in births if "/DBIRTH/" in m.topic).payload)
    assert {m.properties["Quality"] for m in born.metrics} == {500}  # born null: no value yet
    out = fmt.encode([
        Reading("meter", "uint16", 1, T0, "uncertain"),
        Reading("meter", "uint16", 2, T0 + 1, "bad", "timeout"),
        Reading("meter", "uint16", 3, T0 + 2),
    ], False)
    qualities = [m.properties.get("Quality") for message in out for m in sp.decode(message.payload).metrics]
    assert qualities == [500, 0, 192]


def test_a_device_state_whose_name_is_no_topic_level_is_not_born(tmp_path: Path) -> None:
    """Else every later birth carries a DBIRTH on `.../x/#`, which the MQTT client refuses."""
    fmt = fmt_with(tmp_path)
    fmt.node.births(0)
    assert fmt.device_state(DeviceState("x/#", False, "timeout")) == []
    assert all("#" not in m.topic for m in fmt.node.births(0, new_session=False))


def test_a_bad_reading_seen_before_a_session_never_reaches_its_births(tmp_path: Path) -> None:
    """Readings are observed before they are screened: the next session's DBIRTHs must not take them."""
    fmt = fmt_with(tmp_path)
    fmt.observe([Reading("meter", "uint16", 7, "soon"),  # type: ignore[arg-type]
                 Reading("meter", "int16", 5, T0, ["good"])])  # type: ignore[arg-type]
    births = fmt.node.births(0)  # raised TypeError before
    born = sp.decode(next(m for m in births if "/DBIRTH/" in m.topic).payload)
    assert born.metric("uint16").is_null and born.metric("int16").is_null
