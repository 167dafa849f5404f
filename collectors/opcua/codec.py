"""OPC UA values <-> fieldgate readings: pure functions, no I/O.

- `to_json(value)`: a decoded Variant value (any built-in type, or an array of them) as a
  JSON value: numbers and booleans as they are, DateTime as ISO 8601 UTC with ms, ByteString
  as base64, NodeId / QualifiedName as their string forms, LocalizedText as its text,
  XmlElement as its XML text, DiagnosticInfo as an object of the fields it carries,
  structures as objects, NaN/Inf as null (JSON has no spelling for them).
- `quality_of(status)`: the StatusCode's severity bits (Part 4, 7.39: 00 good, 01 uncertain,
  10/11 bad) as our quality, with the code's symbolic name as the reason.
- `reading_of(...)`: one DataValue as a Reading, stamped with its source timestamp.
- `to_variant(value, variant_type, array)`: a JSON value from a `/set` command converted to
  the node's DataType, range-checked, or a `WriteError` that says what the node takes.
- `handoff_type(variant_type, value_rank)`: the datatype a node's readings are declared with
  to the forwarder (hand-off `types`), so a Sparkplug host learns the node's own type.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import math
import uuid
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from collectors.core.errors import WriteError
from collectors.core.model import Quality, Reading, Value, now_ms
from collectors.core.writes import as_bool, finite

_SEVERITY = 3 << 30
_UNCERTAIN = 1 << 30

# variant type -> (lowest, highest) for the integer types a write is range-checked against
INT_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}
FLOAT_TYPES = (ua.VariantType.Float, ua.VariantType.Double)

# DataTypes of namespace 0 that are not built-in but common as a variable's DataType, and the
# built-in type they are encoded as (Part 3, 8 / Part 5). Enumerations travel as Int32.
DATATYPE_ALIASES: dict[int, ua.VariantType] = {
    290: ua.VariantType.Double,  # Duration
    294: ua.VariantType.DateTime,  # UtcTime
    295: ua.VariantType.String,  # LocaleId
    288: ua.VariantType.UInt32,  # IntegerId
    289: ua.VariantType.UInt32,  # Counter
    29: ua.VariantType.Int32,  # Enumeration
    307: ua.VariantType.Int32,  # ApplicationType (enum)
    852: ua.VariantType.Int32,  # ServerState (enum)
}


def to_json(value: Any) -> Value:
    """A decoded Variant value as JSON (see the module docstring)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, ua.XmlElement):
        return value.Value
    if isinstance(value, ua.NodeId | ua.QualifiedName):
        return str(value.to_string())
    if isinstance(value, ua.StatusCode):
        return str(value.name)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if isinstance(value, ua.Variant):
        return to_json(value.Value)
    if isinstance(value, ua.DataValue):
        return to_json(value.Value.Value if value.Value is not None else None)
    if isinstance(value, ua.DiagnosticInfo):  # the fields it carries; Encoding is their mask on the wire
        fields = (f.name for f in dataclasses.fields(value) if f.name != "Encoding")
        return {name: to_json(getattr(value, name)) for name in fields if getattr(value, name) is not None}  # type: ignore[return-value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}  # type: ignore[return-value]
    return str(value)


def _iso(value: datetime) -> str:
    if value.tzinfo is None:  # asyncua decodes DateTime as UTC; a naive one is UTC too
        value = value.replace(tzinfo=UTC)
    ms = round(value.timestamp() * 1000)
    seconds, rest = divmod(ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{rest:03d}Z"


def quality_of(status: ua.StatusCode | int | None) -> tuple[str, str | None]:
    """(quality, reason): reason is None for Good, else the StatusCode's name, e.g. BadNodeIdUnknown."""
    code = 0 if status is None else (status if isinstance(status, int) else status.value)
    severity = code & _SEVERITY
    if severity == 0:
        return Quality.GOOD, None
    name, _ = ua.status_codes.get_name_and_doc(code & 0xFFFF0000)  # low 16 bits are info bits
    if severity == _UNCERTAIN:
        return Quality.UNCERTAIN, name
    return Quality.BAD, name


def status_name(status: ua.StatusCode | int) -> str:
    code = status if isinstance(status, int) else status.value
    return str(ua.status_codes.get_name_and_doc(code & 0xFFFF0000)[0])


def ts_ms_of(dt: datetime | None) -> int:
    if dt is None:
        return now_ms()
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def reading_of(device: str, tag: str, data_value: ua.DataValue) -> Reading:
    """One DataValue as a Reading: source timestamp (else server timestamp, else now)."""
    status = data_value.StatusCode
    quality: str
    reason: str | None
    if status is None or status.value == 0:  # the common case, on the hot path
        quality, reason = Quality.GOOD, None
    else:
        quality, reason = quality_of(status)
    variant = data_value.Value
    raw = variant.Value if variant is not None else None
    value = raw if type(raw) is float and math.isfinite(raw) else to_json(raw)
    stamp = data_value.SourceTimestamp or data_value.ServerTimestamp
    return Reading(device, tag, value, ts_ms_of(stamp), quality, reason)


def variant_type_of(datatype: ua.NodeId) -> ua.VariantType | None:
    """The built-in type a node of this DataType is written as, when it can be told without a browse."""
    if datatype.NamespaceIndex != 0 or not isinstance(datatype.Identifier, int):
        return None
    ident = datatype.Identifier
    if 1 <= ident <= 21:
        return ua.VariantType(ident)
    return DATATYPE_ALIASES.get(ident)


def to_variant(value: Any, variant_type: ua.VariantType, array: bool = False) -> ua.Variant:
    """A JSON value converted to `variant_type` (and an array of it when `array`), or WriteError."""
    if array:
        if not isinstance(value, list):
            raise WriteError(f"this node takes an array of {variant_type.name}, got {_kind(value)}")
        return ua.Variant([_scalar(v, variant_type) for v in value], variant_type, is_array=True)
    if isinstance(value, list):
        raise WriteError(f"this node takes one {variant_type.name}, got an array")
    return ua.Variant(_scalar(value, variant_type), variant_type)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _scalar(value: Any, vt: ua.VariantType) -> Any:
    if vt is ua.VariantType.Boolean:
        try:  # the one rule of every collector: true/false or 0/1 (not 2, not "true")
            return as_bool("this node", value)
        except WriteError:
            raise WriteError(f"this node takes a Boolean (true/false, 0/1), got {value!r}") from None
    if vt in INT_RANGES:
        number = _integer(value, vt)
        low, high = INT_RANGES[vt]
        if not low <= number <= high:
            raise WriteError(f"{number} is out of range for {vt.name} ({low}..{high})")
        return number
    if vt in FLOAT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WriteError(f"this node takes a number ({vt.name}), got {_kind(value)}")
        try:
            real = finite("this node", float(value))
        except OverflowError:  # an integer past any float
            raise WriteError(f"{vt.name}: the number is out of range") from None
        if vt is ua.VariantType.Float and abs(real) > 3.4028234663852886e38:
            raise WriteError(f"{value} is out of range for Float")
        return real
    if vt is ua.VariantType.String:
        if not isinstance(value, str):
            raise WriteError(f"this node takes a String, got {_kind(value)}")
        return value
    if vt is ua.VariantType.LocalizedText:
        if not isinstance(value, str):
            raise WriteError(f"this node takes a LocalizedText (a string), got {_kind(value)}")
        return ua.LocalizedText(value)
    if vt is ua.VariantType.DateTime:
        if not isinstance(value, str):
            raise WriteError("this node takes a DateTime, written as ISO 8601, e.g. 2026-11-28T08:00:00Z")
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise WriteError(f"{value!r} is not an ISO 8601 date and time") from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if vt is ua.VariantType.ByteString:
        if not isinstance(value, str):
            raise WriteError("this node takes a ByteString, written as base64")
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise WriteError("this node takes a ByteString, written as base64") from exc
    if vt is ua.VariantType.Guid:
        try:
            return uuid.UUID(str(value))
        except ValueError as exc:
            raise WriteError(f"{value!r} is not a Guid") from exc
    if vt is ua.VariantType.NodeId:
        try:
            return ua.NodeId.from_string(str(value))
        except (ValueError, ua.UaStringParsingError) as exc:
            raise WriteError(f"{value!r} is not a NodeId") from exc
    if vt is ua.VariantType.QualifiedName:
        return ua.QualifiedName.from_string(str(value))
    raise WriteError(f"writing {vt.name} values is not supported")


def _integer(value: Any, vt: ua.VariantType) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    raise WriteError(f"this node takes an integer ({vt.name}), got {value!r}")


V = ua.VariantType
# Built-in type -> the datatype name readings of it are declared with (the catalog's names). The
# types JSON carries as text (see to_json) are strings; Variant (BaseDataType), DataValue and
# DiagnosticInfo are told by their values.
HANDOFF_TYPES: dict[ua.VariantType, str] = {
    V.Boolean: "boolean", V.SByte: "sbyte", V.Byte: "byte", V.Int16: "int16", V.UInt16: "uint16",
    V.Int32: "int32", V.UInt32: "uint32", V.Int64: "int64", V.UInt64: "uint64",
    V.Float: "float", V.Double: "double", V.String: "string", V.DateTime: "datetime",
    V.Guid: "string", V.ByteString: "string", V.XmlElement: "string", V.NodeId: "string",
    V.ExpandedNodeId: "string", V.StatusCode: "string", V.QualifiedName: "string",
    V.LocalizedText: "string", V.ExtensionObject: "string",
}
# Element types whose one-dimensional arrays have a declared array type (a list of them in JSON)
_ARRAY_ELEMENTS = frozenset(
    {"boolean", "sbyte", "byte", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float", "double"}
)


def handoff_type(variant_type: ua.VariantType, value_rank: int) -> str | None:
    """The declared datatype of a node's readings: a scalar's (ValueRank -1), `name[]` for a
    one-dimensional array (ValueRank 1, Part 3, 5.6.2); None when only the values can tell (any
    rank, several dimensions, or a type JSON has no single shape for)."""
    name = HANDOFF_TYPES.get(variant_type)
    if name is None:
        return None
    if value_rank == -1:
        return name
    if value_rank == 1 and (name in _ARRAY_ELEMENTS or variant_type is V.String):
        return f"{name}[]"
    return None
