"""The Sparkplug datatype tables: inference, what fits, and commanded values, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from collectors.forwarder import sparkplug_b_pb2 as pb
from collectors.forwarder.sparkplug_types import (
    TYPE_RULES,
    DoesNotFit,
    convert_for_tag,
    infer_datatype,
    metric_value,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "datatype"),
    [
        (True, pb.Boolean), (5, pb.Int64), (-(2**63), pb.Int64), (2**63, pb.UInt64), (2**64, pb.Double),
        (1.5, pb.Double), ("x", pb.String), ([1, 2], pb.Int64Array), ([1, 2.5], pb.DoubleArray),
        ([True], pb.BooleanArray), (["a"], pb.StringArray), ([], pb.String), ([{"a": 1}], pb.String),
        ({"a": 1}, pb.String), (["a\0b"], pb.String),
    ],
)
def test_infer_datatype(value: Any, datatype: int) -> None:
    assert infer_datatype(value) == datatype
    TYPE_RULES[datatype].coerce(value)  # what is inferred always fits


@pytest.mark.parametrize(
    ("datatype", "value", "wire"),
    [
        (pb.Int16, -1, 0xFFFFFFFF), (pb.Int16, 32767, 32767), (pb.Int16, 3.0, 3), (pb.Int16, True, 1),
        (pb.UInt16, 65535, 65535), (pb.Int8, -128, 0xFFFFFF80), (pb.Int64, -1, 2**64 - 1),
        (pb.Float, 2, 2.0), (pb.Double, float("inf"), float("inf")), (pb.Boolean, 1, True),
        (pb.String, "x", "x"), (pb.String, [1, 2], "[1,2]"),
    ],
)
def test_values_that_fit(datatype: int, value: Any, wire: Any) -> None:
    assert TYPE_RULES[datatype].coerce(value) == wire


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        (pb.Int16, 32768), (pb.Int16, 1.5), (pb.Int16, "1"), (pb.UInt16, -1), (pb.UInt32, 2**32),
        (pb.Float, 1e39), (pb.Float, True), (pb.Double, "1.0"), (pb.Boolean, 2), (pb.Boolean, "true"),
        (pb.String, 5), (pb.Int64Array, [1.5]), (pb.BooleanArray, [1]),
    ],
)
def test_values_that_do_not_fit(datatype: int, value: Any) -> None:
    with pytest.raises(DoesNotFit):
        TYPE_RULES[datatype].coerce(value)


@pytest.mark.parametrize(
    ("value", "datatype", "converted"),
    [
        (1, pb.Boolean, True), (False, pb.Boolean, False), (7.0, pb.Int16, 7), (True, pb.Int32, 1),
        (3, pb.Double, 3.0), (3, pb.Float, 3.0), ("R-9", pb.String, "R-9"),
    ],
)
def test_commanded_values_become_the_tags_type(value: Any, datatype: int, converted: Any) -> None:
    result = convert_for_tag(value, datatype)
    assert result == converted and type(result) is type(converted)


@pytest.mark.parametrize(("value", "datatype"), [(1.5, pb.Int16), (70000, pb.Int16), ("1", pb.Double),
                                                 ([1], pb.Int64Array)])
def test_commanded_values_that_do_not_fit_are_refused(value: Any, datatype: int) -> None:
    with pytest.raises(DoesNotFit):
        convert_for_tag(value, datatype)


def test_received_signed_ints_are_read_back_as_their_datatype() -> None:
    metric = pb.Payload.Metric(datatype=pb.Int16, int_value=0xFFFE)
    assert metric_value(metric, pb.Int16) == -2
    assert metric_value(pb.Payload.Metric(int_value=0xFFFFFFFF), pb.Int32) == -1  # datatype from the birth
    assert metric_value(pb.Payload.Metric(int_value=1), pb.Boolean) is True
    assert metric_value(pb.Payload.Metric(is_null=True, int_value=1), pb.Int32) is None
    with pytest.raises(DoesNotFit):
        metric_value(pb.Payload.Metric(bytes_value=b"x"), pb.Bytes)
