"""An independent Sparkplug B codec for tests: the protobuf wire format by hand.

It shares nothing with the forwarder's encoder (no generated classes, no protobuf
package), so a test that decodes what the forwarder published checks the bytes a host
would read, against the field numbers of the Sparkplug 3.0 schema.

Wire format: each field is a varint key `(number << 3) | wire_type`; wire types are
0 varint, 1 fixed 64-bit, 2 length-delimited, 5 fixed 32-bit.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# Sparkplug 3.0 datatypes used by the tests
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME = 9, 10, 11, 12, 13
INT64_ARRAY, DOUBLE_ARRAY, BOOLEAN_ARRAY, STRING_ARRAY = 25, 31, 32, 33

_SIGNED_BITS = {INT8: 8, INT16: 16, INT32: 32, INT64: 64}


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value): ints for varints, raw bytes for the others."""
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"wire type {wire} at field {number}")
        if pos > len(buf):
            raise ValueError("truncated message")
        yield number, wire, value


@dataclass
class Metric:
    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None
    datatype: int | None = None
    is_historical: bool = False
    is_null: bool = False
    value: Any = None
    value_field: int | None = None
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class Payload:
    timestamp: int | None = None
    seq: int | None = None
    metrics: list[Metric] = field(default_factory=list)

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)


def _scalar(number: int, raw: Any) -> Any:
    """Metric value fields 10..16 (PropertyValue uses the same kinds at 3..8)."""
    if number in (12,):
        return struct.unpack("<f", raw)[0]
    if number in (13,):
        return struct.unpack("<d", raw)[0]
    if number == 14:
        return bool(raw)
    if number == 15:
        return raw.decode()
    return raw


def signed(value: int, datatype: int | None) -> int:
    """An int_value/long_value read as the (signed) datatype a birth declared."""
    bits = _SIGNED_BITS.get(datatype or 0)
    if bits is None:
        return value
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def unpack_array(datatype: int, raw: bytes) -> list[Any]:
    if datatype == INT64_ARRAY:
        return list(struct.unpack(f"<{len(raw) // 8}q", raw))
    if datatype == DOUBLE_ARRAY:
        return list(struct.unpack(f"<{len(raw) // 8}d", raw))
    if datatype == BOOLEAN_ARRAY:
        (count,) = struct.unpack("<I", raw[:4])
        return [bool(raw[4 + i // 8] & (0x80 >> (i % 8))) for i in range(count)]
    if datatype == STRING_ARRAY:
        return [part.decode() for part in raw.split(b"\0")[:-1]]
    raise ValueError(f"datatype {datatype} is not an array")


def _property_value(buf: bytes) -> Any:
    kind, value = None, None
    for number, _, raw in fields(buf):
        if number == 1:
            kind = raw
        elif number == 2 and raw:
            return None
        elif number in (3, 4, 7):
            value = bool(raw) if number == 7 else signed(raw, kind)
        elif number == 5:
            value = struct.unpack("<f", raw)[0]
        elif number == 6:
            value = struct.unpack("<d", raw)[0]
        elif number == 8:
            value = raw.decode()
    return value


def _property_set(buf: bytes) -> dict[str, Any]:
    keys: list[str] = []
    values: list[Any] = []
    for number, _, raw in fields(buf):
        if number == 1:
            keys.append(raw.decode())
        elif number == 2:
            values.append(_property_value(raw))
    return dict(zip(keys, values, strict=True))


def decode_metric(buf: bytes) -> Metric:
    metric = Metric()
    for number, _, raw in fields(buf):
        if number == 1:
            metric.name = raw.decode()
        elif number == 2:
            metric.alias = raw
        elif number == 3:
            metric.timestamp = raw
        elif number == 4:
            metric.datatype = raw
        elif number == 5:
            metric.is_historical = bool(raw)
        elif number == 7:
            metric.is_null = bool(raw)
        elif number == 9:
            metric.properties = _property_set(raw)
        elif 10 <= number <= 16:
            metric.value_field, metric.value = number, _scalar(number, raw)
    if metric.value_field in (10, 11):
        metric.value = signed(metric.value, metric.datatype)
    return metric


def decode(buf: bytes) -> Payload:
    payload = Payload()
    for number, _, raw in fields(buf):
        if number == 1:
            payload.timestamp = raw
        elif number == 2:
            payload.metrics.append(decode_metric(raw))
        elif number == 3:
            payload.seq = raw
    return payload


# --------------------------------------------------------------------------- encoding commands


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def _bytes(number: int, data: bytes) -> bytes:
    return _key(number, 2) + _varint(len(data)) + data


def command_metric(
    value: Any, datatype: int, name: str | None = None, alias: int | None = None, timestamp: int = 0
) -> bytes:
    """One Metric of an NCMD/DCMD."""
    body = b""
    if name is not None:
        body += _bytes(1, name.encode())
    if alias is not None:
        body += _key(2, 0) + _varint(alias)
    body += _key(3, 0) + _varint(timestamp) + _key(4, 0) + _varint(datatype)
    if datatype == BOOLEAN:
        body += _key(14, 0) + _varint(int(bool(value)))
    elif datatype == FLOAT:
        body += _key(12, 5) + struct.pack("<f", value)
    elif datatype == DOUBLE:
        body += _key(13, 1) + struct.pack("<d", value)
    elif datatype == STRING:
        body += _bytes(15, value.encode())
    elif datatype in (INT64, UINT64, DATETIME):
        body += _key(11, 0) + _varint(value)
    else:
        body += _key(10, 0) + _varint(value & 0xFFFFFFFF)
    return body


def command(metrics: list[bytes], timestamp: int = 0) -> bytes:
    """An NCMD/DCMD payload (no seq: commands carry none)."""
    return _key(1, 0) + _varint(timestamp) + b"".join(_bytes(2, m) for m in metrics)
