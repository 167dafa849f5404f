"""OPC UA values <-> readings: table-driven, no I/O."""
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from asyncua import ua

from collectors.core.errors import WriteError
from collectors.core.model import Quality
from collectors.opcua.codec import quality_of, reading_of, to_json, to_variant, variant_type_of

pytestmark = pytest.mark.unit

VT = ua.VariantType


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (-7, -7),
        (2**64 - 1, 2**64 - 1),
        (1.25, 1.25),
        (math.nan, None),
        (math.inf, None),
        ("text", "text"),
        (datetime(2026, 11, 28, 8, 0, 0, 123456, tzinfo=UTC), "2026-11-28T08:00:00.123Z"),
        (datetime(2026, 11, 28, 8, 0, 0, 999900), "2026-11-28T08:00:01.000Z"),  # naive = UTC, rounded
        (b"\x01\x02", "AQI="),
        (ua.LocalizedText("Ofen", "de"), "Ofen"),
        (ua.NodeId("Oven.T", 2), "ns=2;s=Oven.T"),
        (ua.QualifiedName("Name", 3), "3:Name"),
        (ua.StatusCode(ua.StatusCodes.BadTimeout), "BadTimeout"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        ([1, 2, [3, math.nan]], [1, 2, [3, None]]),
        (ua.Range(0.0, 100.0), {"Low": 0.0, "High": 100.0}),
        (None, None),
    ],
)
def test_to_json(value: Any, expected: Any) -> None:
    assert to_json(value) == expected


@pytest.mark.parametrize(
    ("code", "quality", "reason"),
    [
        (ua.StatusCodes.Good, Quality.GOOD, None),
        (ua.StatusCodes.GoodClamped, Quality.GOOD, None),
        (ua.StatusCodes.UncertainSensorNotAccurate, Quality.UNCERTAIN, "UncertainSensorNotAccurate"),
        (ua.StatusCodes.BadNodeIdUnknown, Quality.BAD, "BadNodeIdUnknown"),
        (ua.StatusCodes.BadCommunicationError | 0x0400, Quality.BAD, "BadCommunicationError"),  # info bits
        (0xC0FF0000, Quality.BAD, "Bad"),  # unknown code, reserved severity 11: bad (Part 4, 7.39)
    ],
)
def test_quality_of_status_code(code: int, quality: Quality, reason: str | None) -> None:
    assert quality_of(ua.StatusCode(code)) == (quality, reason)


def test_reading_takes_the_source_timestamp_else_the_server_timestamp() -> None:
    source = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    server = datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)
    dv = ua.DataValue(ua.Variant(1.5, VT.Double), SourceTimestamp=source, ServerTimestamp=server)
    assert reading_of("d", "t", dv).ts_ms == int(source.timestamp() * 1000)
    dv = ua.DataValue(ua.Variant(1.5, VT.Double), ServerTimestamp=server)
    assert reading_of("d", "t", dv).ts_ms == int(server.timestamp() * 1000)


@pytest.mark.parametrize(
    ("value", "vt", "array", "expected"),
    [
        (1, VT.Boolean, False, True),
        (0, VT.Boolean, False, False),
        (12.0, VT.Int16, False, 12),
        ("0x10", VT.UInt16, False, 16),
        (2**64 - 1, VT.UInt64, False, 2**64 - 1),
        (3, VT.Float, False, 3.0),
        (2.5, VT.Double, False, 2.5),
        ("abc", VT.String, False, "abc"),
        ("2026-11-28T08:00:00Z", VT.DateTime, False, datetime(2026, 11, 28, 8, tzinfo=UTC)),
        ("AQI=", VT.ByteString, False, b"\x01\x02"),
        ([1, 2], VT.Int32, True, [1, 2]),
    ],
)
def test_to_variant_converts_to_the_node_type(
    value: Any, vt: ua.VariantType, array: bool, expected: Any
) -> None:
    variant = to_variant(value, vt, array)
    assert variant.VariantType == vt
    assert variant.Value == expected


@pytest.mark.parametrize(
    ("value", "vt", "array", "message"),
    [
        (2, VT.Boolean, False, "Boolean"),
        (128, VT.SByte, False, "128 is out of range for SByte (-128..127)"),
        (-1, VT.UInt32, False, "out of range for UInt32"),
        (1.5, VT.Int32, False, "integer (Int32)"),
        ("x", VT.Double, False, "number (Double)"),
        (True, VT.Double, False, "number (Double)"),
        (1e39, VT.Float, False, "out of range for Float"),
        (5, VT.String, False, "String, got int"),
        ([1], VT.Int32, False, "one Int32, got an array"),
        (1, VT.Int32, True, "array of Int32"),
        ("yesterday", VT.DateTime, False, "ISO 8601"),
    ],
)
def test_to_variant_refuses_what_the_node_cannot_take(
    value: Any, vt: ua.VariantType, array: bool, message: str
) -> None:
    with pytest.raises(WriteError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        to_variant(value, vt, array)


def test_variant_type_of_builtin_and_aliased_datatypes() -> None:
    assert variant_type_of(ua.NodeId(11)) is VT.Double
    assert variant_type_of(ua.NodeId(290)) is VT.Double  # Duration
    assert variant_type_of(ua.NodeId(294)) is VT.DateTime  # UtcTime
    assert variant_type_of(ua.NodeId(3001, 2)) is None  # a vendor type: the session browses its supertype
