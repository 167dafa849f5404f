"""Sparkplug B 3.0 datatypes: which protobuf field carries each, and Python values to and from them.

Pure functions and tables (Sparkplug 3.0, Payloads: datatype details), with no state: the
edge node (sparkplug.py) asks them whether a value fits a metric's datatype, which datatype
a value carries when the catalog does not say, and what a received command's value means.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from collectors.core.errors import WriteError
from collectors.core.model import iso_ms
from collectors.core.writes import as_bool
from collectors.forwarder import sparkplug_b_pb2 as pb


class DoesNotFit(ValueError):
    """A value cannot be carried by a metric's datatype."""


Coerce = Callable[[Any], Any]


def _integer(lo: int, hi: int, bits: int) -> Coerce:
    mask = (1 << bits) - 1

    def coerce(value: Any) -> int:
        if isinstance(value, float):
            if not value.is_integer():
                raise DoesNotFit(value)
            value = int(value)
        elif not isinstance(value, int):  # bool is an int: True -> 1
            raise DoesNotFit(value)
        if not lo <= value <= hi:
            raise DoesNotFit(value)
        # Signed types travel as two's complement in the unsigned field (Sparkplug 3.0, Payloads:
        # datatype details); hosts cast back to the type's width.
        return int(value) & mask

    return coerce


def _real(limit: float) -> Coerce:
    def coerce(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DoesNotFit(value)
        value = float(value)
        if math.isfinite(value) and abs(value) > limit:  # NaN and infinities travel as they are
            raise DoesNotFit(value)
        return value

    return coerce


_DATETIME_INT = _integer(0, 2**64 - 1, 64)


def _datetime(value: Any) -> int:
    """Sparkplug DateTime: ms since the epoch, UTC; from a number of ms, or from ISO 8601 text (the
    form OPC UA DateTime values travel in)."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise DoesNotFit(value) from exc
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        value = round(parsed.timestamp() * 1000)
    return int(_DATETIME_INT(value))


def _boolean(value: Any) -> bool:
    try:  # the rule every write obeys (json `/set` too): true/false or 0/1, not 2
        return as_bool("", value)
    except WriteError:
        raise DoesNotFit(value) from None


def _string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):  # an array the array types cannot carry: JSON text
        return orjson.dumps(value).decode()
    raise DoesNotFit(value)


def _packed(code: str, check: Callable[[Any], bool]) -> Coerce:
    def coerce(value: Any) -> bytes:
        if not isinstance(value, list) or not all(check(item) for item in value):
            raise DoesNotFit(value)
        try:
            return struct.pack(f"<{len(value)}{code}", *value)
        except (struct.error, OverflowError) as exc:  # out of the element type's range
            raise DoesNotFit(value) from exc

    return coerce


def _boolean_array(value: Any) -> bytes:
    """Sparkplug 3.0 BooleanArray: u32 LE count, then the bits packed MSB first."""
    if not isinstance(value, list) or not all(isinstance(item, bool) for item in value):
        raise DoesNotFit(value)
    packed = bytearray((len(value) + 7) // 8)
    for i, item in enumerate(value):
        if item:
            packed[i // 8] |= 0x80 >> (i % 8)
    return struct.pack("<I", len(value)) + bytes(packed)


def _string_array(value: Any) -> bytes:
    """Sparkplug 3.0 StringArray: UTF-8 strings, each ended by a NUL."""
    if not isinstance(value, list) or not all(isinstance(item, str) and "\0" not in item for item in value):
        raise DoesNotFit(value)
    return b"".join(item.encode() + b"\0" for item in value)


def _is_int(item: Any) -> bool:
    return isinstance(item, int) and not isinstance(item, bool)


def _is_number(item: Any) -> bool:
    return isinstance(item, int | float) and not isinstance(item, bool)


@dataclass(frozen=True, slots=True)
class TypeRule:
    """How one Sparkplug datatype travels: the protobuf value field and the value's conversion."""

    datatype: int
    field: str
    coerce: Coerce
    exact: type | None = None  # values of exactly this Python type travel as they are (the hot path)


_I32, _I64 = 2**31, 2**63
# Which value field carries each integer type follows Eclipse Tahu, the reference codec most
# hosts build on: Int8/16/32 and UInt8/16 in int_value; Int64, UInt32, UInt64 and DateTime in
# long_value (a UInt32 in int_value is read as nothing by a Tahu-based host). Received
# commands are read from whichever field is set, so a host that sends a UInt32 in int_value
# is understood too (metric_value).
TYPE_RULES: dict[int, TypeRule] = {
    rule.datatype: rule
    for rule in (
        TypeRule(pb.Int8, "int_value", _integer(-128, 127, 32)),
        TypeRule(pb.Int16, "int_value", _integer(-32768, 32767, 32)),
        TypeRule(pb.Int32, "int_value", _integer(-_I32, _I32 - 1, 32)),
        TypeRule(pb.Int64, "long_value", _integer(-_I64, _I64 - 1, 64)),
        TypeRule(pb.UInt8, "int_value", _integer(0, 255, 32)),
        TypeRule(pb.UInt16, "int_value", _integer(0, 65535, 32)),
        TypeRule(pb.UInt32, "long_value", _integer(0, 2**32 - 1, 64)),
        TypeRule(pb.UInt64, "long_value", _integer(0, 2**64 - 1, 64)),
        TypeRule(pb.DateTime, "long_value", _datetime),
        TypeRule(pb.Float, "float_value", _real(3.4028234663852886e38)),
        TypeRule(pb.Double, "double_value", _real(float("inf")), float),
        TypeRule(pb.Boolean, "boolean_value", _boolean, bool),
        TypeRule(pb.String, "string_value", _string, str),
        TypeRule(pb.Int64Array, "bytes_value", _packed("q", _is_int)),
        TypeRule(pb.DoubleArray, "bytes_value", _packed("d", _is_number)),
        TypeRule(pb.BooleanArray, "bytes_value", _boolean_array),
        TypeRule(pb.StringArray, "bytes_value", _string_array),
    )
}

# The other array types of Sparkplug 3.0 (Payloads: datatype details), packed little-endian: a
# collector declares them for arrays of a known element type (OPC UA, hand-off `types`).
TYPE_RULES.update({
    rule.datatype: rule
    for rule in (
        TypeRule(pb.Int8Array, "bytes_value", _packed("b", _is_int)),
        TypeRule(pb.Int16Array, "bytes_value", _packed("h", _is_int)),
        TypeRule(pb.Int32Array, "bytes_value", _packed("i", _is_int)),
        TypeRule(pb.UInt8Array, "bytes_value", _packed("B", _is_int)),
        TypeRule(pb.UInt16Array, "bytes_value", _packed("H", _is_int)),
        TypeRule(pb.UInt32Array, "bytes_value", _packed("I", _is_int)),
        TypeRule(pb.UInt64Array, "bytes_value", _packed("Q", _is_int)),
        TypeRule(pb.FloatArray, "bytes_value", _packed("f", _is_number)),
    )
})


def _untyped(value: Any) -> Any:
    raise DoesNotFit(value)


# A metric whose datatype neither the catalog nor any value has told yet: nothing fits it, so
# its first value always takes the slow path that settles the datatype (and births it).
UNTYPED = TypeRule(pb.Unknown, "", _untyped)

# The catalog's types (Modbus register types, and the usual OPC UA built-in type names).
CATALOG_TYPES: dict[str, int] = {
    "bool": pb.Boolean, "boolean": pb.Boolean,
    "int8": pb.Int8, "sbyte": pb.Int8, "uint8": pb.UInt8, "byte": pb.UInt8,
    "int16": pb.Int16, "uint16": pb.UInt16, "int32": pb.Int32, "uint32": pb.UInt32,
    "int64": pb.Int64, "uint64": pb.UInt64,
    "float32": pb.Float, "float": pb.Float, "float64": pb.Double, "double": pb.Double,
    "string": pb.String,
}
# ... and what a collector declares for a device (hand-off `types`): those, DateTime, and arrays.
CATALOG_TYPES.update({
    "datetime": pb.DateTime,
    "boolean[]": pb.BooleanArray, "sbyte[]": pb.Int8Array, "byte[]": pb.UInt8Array,
    "int16[]": pb.Int16Array, "uint16[]": pb.UInt16Array, "int32[]": pb.Int32Array,
    "uint32[]": pb.UInt32Array, "int64[]": pb.Int64Array, "uint64[]": pb.UInt64Array,
    "float[]": pb.FloatArray, "double[]": pb.DoubleArray, "string[]": pb.StringArray,
})


def infer_datatype(value: Any) -> int:
    """The datatype a value carries when the catalog does not say (OPC UA)."""
    if isinstance(value, bool):
        return pb.Boolean
    if isinstance(value, int):
        if -_I64 <= value < _I64:
            return pb.Int64
        return pb.UInt64 if 0 <= value < 2 * _I64 else pb.Double
    if isinstance(value, float):
        return pb.Double
    if isinstance(value, list) and value:
        if all(isinstance(item, bool) for item in value):
            return pb.BooleanArray
        if all(_is_int(item) and -_I64 <= item < _I64 for item in value):
            return pb.Int64Array
        if all(_is_number(item) for item in value):
            return pb.DoubleArray
        if all(isinstance(item, str) and "\0" not in item for item in value):
            return pb.StringArray
    return pb.String


_SIGNED_BITS: dict[int, int] = {pb.Int8: 8, pb.Int16: 16, pb.Int32: 32, pb.Int64: 64}


def metric_value(metric: pb.Payload.Metric, datatype: int) -> Any:
    """The Python value of a received metric (NCMD/DCMD), read as `datatype` when it gives none."""
    datatype = metric.datatype or datatype
    kind = metric.WhichOneof("value")
    if metric.is_null or kind is None:
        return None
    raw = getattr(metric, kind)
    if kind in ("int_value", "long_value") and isinstance(raw, int):
        bits = _SIGNED_BITS.get(datatype)
        if bits is not None:  # two's complement back to the signed type
            raw &= (1 << bits) - 1
            if raw >= 1 << (bits - 1):
                raw -= 1 << bits
        elif datatype == pb.Boolean:
            if raw not in (0, 1):  # 2 is not true: json `/set` refuses it too
                raise DoesNotFit(raw)
            return bool(raw)
    if kind in ("dataset_value", "template_value", "extension_value", "bytes_value"):
        raise DoesNotFit(kind)
    return raw


def convert_for_tag(value: Any, datatype: int) -> Any:
    """A commanded value as the tag's Python type (bool, int, float, str); DoesNotFit otherwise."""
    rule = TYPE_RULES.get(datatype)
    if rule is None or rule.field == "bytes_value":
        raise DoesNotFit(value)
    if datatype == pb.DateTime:  # the collector takes a date and time as ISO 8601 (OPC UA DateTime)
        try:
            return iso_ms(rule.coerce(value))
        except (OverflowError, ValueError, OSError) as exc:  # past the year 9999
            raise DoesNotFit(value) from exc
    if rule.field in ("int_value", "long_value"):
        rule.coerce(value)  # range and integrality
        return int(value)
    if datatype in (pb.Float, pb.Double):
        return float(rule.coerce(value))
    return rule.coerce(value)
