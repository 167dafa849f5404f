"""Register words <-> values: known vectors, round trips over every type and order, the block path."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.core.errors import WriteError
from collectors.modbus.codec import BlockDecoder, decode, encode, shortest_float32
from collectors.modbus.config import DataType, ModbusDevice, ModbusTag, Table

pytestmark = pytest.mark.unit

ORDERS = ("big", "little")
RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}
WIDE = (DataType.INT32, DataType.UINT32, DataType.INT64, DataType.UINT64, DataType.FLOAT32, DataType.FLOAT64)


def device(byte_order: str = "big", word_order: str = "big") -> ModbusDevice:
    return ModbusDevice.model_validate({
        "name": "d", "protocol": "modbus", "connection": {"tcp": {"host": "127.0.0.1"}},
        "byte_order": byte_order, "word_order": word_order,
        "tags": [{"name": "x", "table": "holding", "address": 0, "type": "uint16"}],
    })


def tag(type_: str, table: str = "holding", address: int = 0, name: str = "t", **extra: Any) -> ModbusTag:
    fields = {"name": name, "table": table, "address": address, "type": type_, **extra}
    return ModbusTag.model_validate(fields)


# (type, byte order, word order, extra keys, value, registers): what a user of a PLC manual checks
VECTORS = [
    ("float32", "big", "big", {}, 21.5, [0x41AC, 0x0000]),
    ("float32", "big", "little", {}, 21.5, [0x0000, 0x41AC]),
    ("float32", "little", "big", {}, 21.5, [0xAC41, 0x0000]),
    ("float32", "little", "little", {}, 21.5, [0x0000, 0xAC41]),
    ("float32", "big", "big", {}, 0.1, [0x3DCC, 0xCCCD]),
    ("float32", "big", "big", {}, -1.0, [0xBF80, 0x0000]),
    ("float64", "big", "big", {}, 1.0, [0x3FF0, 0, 0, 0]),
    ("float64", "big", "little", {}, 1.0, [0, 0, 0, 0x3FF0]),
    ("float64", "little", "little", {}, 1.0, [0, 0, 0, 0xF03F]),
    ("float64", "little", "big", {}, 1.0, [0xF03F, 0, 0, 0]),
    ("int16", "big", "big", {}, -2, [0xFFFE]),
    ("int16", "little", "big", {}, -2, [0xFEFF]),
    ("uint16", "big", "big", {}, 513, [0x0201]),
    ("uint16", "little", "big", {}, 513, [0x0102]),
    ("int32", "big", "big", {}, -2, [0xFFFF, 0xFFFE]),
    ("int32", "big", "little", {}, 0x12345678, [0x5678, 0x1234]),
    ("uint32", "little", "big", {}, 0x12345678, [0x3412, 0x7856]),
    ("uint32", "little", "little", {}, 0x12345678, [0x7856, 0x3412]),
    ("int64", "big", "big", {}, -1, [0xFFFF] * 4),
    ("uint64", "big", "little", {}, 0x0001000200030004, [4, 3, 2, 1]),
    ("int16", "big", "big", {"scale": 0.1}, 21.5, [215]),
    ("int16", "big", "big", {"scale": 0.1, "offset": -40}, -18.5, [215]),
    ("uint16", "big", "big", {"scale": 10, "offset": 5}, 2155, [215]),
    ("int32", "big", "big", {"scale": 0.01}, -1234.56, [0xFFFE, 0x1DC0]),
    ("float32", "big", "big", {"scale": 2.0}, 43.0, [0x41AC, 0x0000]),
    ("uint16", "big", "big", {"bit": 3}, True, [0x0008]),
    ("uint16", "little", "big", {"bit": 3}, True, [0x0800]),
    ("int16", "big", "big", {"bit": 15}, True, [0x8000]),
    ("bool", "big", "big", {}, True, [1]),
    ("string", "big", "big", {"length": 3}, "ABCD", [0x4142, 0x4344, 0x0000]),
    ("string", "little", "big", {"length": 2}, "ABC", [0x4241, 0x0043]),
    ("string", "big", "big", {"length": 2}, "Aé", [0x41C3, 0xA900]),
]


@pytest.mark.parametrize(("type_", "byte_order", "word_order", "extra", "value", "words"), VECTORS)
def test_known_vectors(type_: str, byte_order: str, word_order: str, extra: dict[str, Any],
                       value: Any, words: list[int]) -> None:
    dev = device(byte_order, word_order)
    t = tag(type_, **extra)
    decoded = decode(t, dev, words)
    assert decoded == value
    assert type(decoded) is type(value)
    assert encode(t, dev, value, current=[0]) == words


@pytest.mark.parametrize(("type_", "table"), [("bool", "coil"), ("bool", "discrete")])
def test_bit_tables(type_: str, table: str) -> None:
    dev, t = device(), tag(type_, table=table)
    assert decode(t, dev, [1]) is True
    assert decode(t, dev, [0]) is False
    assert encode(t, dev, True) == [1]
    assert encode(t, dev, 0) == [0]


def test_the_tag_order_overrides_the_device_order() -> None:
    t = tag("float32", word_order="little", byte_order="big")
    assert decode(t, device("little", "big"), [0x0000, 0x41AC]) == 21.5


def test_strings_stop_at_nul_and_drop_trailing_spaces() -> None:
    t = tag("string", length=4)
    assert decode(t, device(), [0x4142, 0x2020, 0x2020, 0x2020]) == "AB"
    assert decode(t, device(), [0x4142, 0x0058, 0x5959, 0x0000]) == "AB"
    assert decode(t, device(), [0, 0, 0, 0]) == ""


def test_a_bit_write_changes_only_its_bit() -> None:
    t = tag("uint16", bit=4)
    assert encode(t, device(), True, current=[0x8001]) == [0x8011]
    assert encode(t, device(), False, current=[0xFFFF]) == [0xFFEF]
    assert encode(t, device("little"), True, current=[0x0180]) == [0x1180]


def test_float32_reads_as_the_short_decimal() -> None:
    words = encode(tag("float32"), device(), 21.3)
    assert decode(tag("float32"), device(), words) == 21.3
    assert shortest_float32(struct.unpack(">f", struct.pack(">f", 1 / 3))[0]) == 0.33333334


@pytest.mark.parametrize(
    ("type_", "extra", "value", "message"),
    [
        ("int16", {}, 40000, "out of range for int16"),
        ("uint16", {}, -1, "out of range for uint16"),
        ("uint16", {}, "12", "write a number"),
        ("uint16", {}, True, "write a number"),
        ("int16", {}, 1.5, "not a whole number"),
        ("int16", {"scale": 0.1}, 21.55, "not a value of"),
        ("int16", {"scale": 0.1}, 4000, "out of range for int16 (-3276.8 .. 3276.7)"),
        ("float32", {}, 1e39, "out of range for float32"),
        ("float32", {}, math.nan, "not a finite number"),
        ("float64", {}, None, "write a number"),
        ("string", {"length": 2}, "ABCDE", "holds at most 4 bytes"),
        ("string", {"length": 2}, 12, "write a JSON string"),
        ("bool", {}, 2, "write true, false, 1 or 0"),
        ("uint16", {"bit": 1}, "on", "write true, false, 1 or 0"),
    ],
)
def test_encode_refuses_what_the_register_cannot_hold(type_: str, extra: dict[str, Any], value: Any,
                                                      message: str) -> None:
    with pytest.raises(WriteError, match=r"^t"):
        encode(tag(type_, **extra), device(), value)
    with pytest.raises(WriteError) as caught:
        encode(tag(type_, **extra), device(), value)
    assert message in str(caught.value)


def _orders_for(type_: DataType) -> list[tuple[str, str]]:
    return [(b, w) for b in ORDERS for w in (ORDERS if type_ in WIDE else ("big",))]


INT_CASES = [(t, b, w) for t in RANGES for b, w in _orders_for(t)]
FLOAT_CASES = [(t, b, w) for t in (DataType.FLOAT32, DataType.FLOAT64) for b, w in _orders_for(t)]
word = st.integers(0, 0xFFFF)


@pytest.mark.parametrize(("type_", "byte_order", "word_order"), INT_CASES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_integer_words_round_trip(
    type_: DataType, byte_order: str, word_order: str, data: st.DataObject
) -> None:
    t = tag(type_.value, word_order=word_order if type_ in WIDE else None)
    words = data.draw(st.lists(word, min_size=t.registers, max_size=t.registers))
    value = decode(t, device(byte_order), words)
    low, high = RANGES[type_]
    assert isinstance(value, int) and low <= value <= high
    assert encode(t, device(byte_order), value) == words


@pytest.mark.parametrize(("type_", "byte_order", "word_order"), FLOAT_CASES)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_float_words_round_trip(
    type_: DataType, byte_order: str, word_order: str, data: st.DataObject
) -> None:
    t = tag(type_.value)
    dev = device(byte_order, word_order)
    words = data.draw(st.lists(word, min_size=t.registers, max_size=t.registers))
    value = decode(t, dev, words)
    assert isinstance(value, float)
    if not math.isfinite(value):
        return  # NaN and infinities are read as such, and refused as writes (JSON cannot carry them)
    assert encode(t, dev, value) == words


SCALES = [(0.1, 0.0), (0.01, -40.0), (10.0, 5.0), (0.5, 0.25), (-1.0, 0.0)]


@pytest.mark.parametrize(("scale", "offset"), SCALES)
@pytest.mark.parametrize(("type_", "byte_order", "word_order"), INT_CASES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_scaled_values_round_trip(type_: DataType, byte_order: str, word_order: str, scale: float,
                                  offset: float, data: st.DataObject) -> None:
    low, high = RANGES[type_]
    # a float64 carries 53 bits: scaled values of wider raws are approximate by nature
    raw = data.draw(st.integers(max(low, -(2**40)), min(high, 2**40)))
    t = tag(type_.value, scale=scale, offset=offset, word_order=word_order if type_ in WIDE else None)
    dev = device(byte_order)
    words = encode(tag(type_.value, word_order=word_order if type_ in WIDE else None), dev, raw)
    value = decode(t, dev, words)
    assert value == pytest.approx(raw * scale + offset, rel=1e-12, abs=1e-9)
    assert encode(t, dev, value) == words


@pytest.mark.parametrize(("byte_order", "word_order"), [(b, w) for b in ORDERS for w in ORDERS])
@settings(max_examples=40, deadline=None)
@given(value=st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_values_round_trip(byte_order: str, word_order: str, value: float) -> None:
    dev, t = device(byte_order, word_order), tag("float32")
    decoded = decode(t, dev, encode(t, dev, value))
    assert struct.pack(">f", decoded) == struct.pack(">f", value)


@pytest.mark.parametrize("byte_order", ORDERS)
@settings(max_examples=60, deadline=None)
@given(word_=word, bit=st.integers(0, 15), on=st.booleans())
def test_bits_round_trip(byte_order: str, word_: int, bit: int, on: bool) -> None:
    dev, t = device(byte_order), tag("uint16", bit=bit)
    written = encode(t, dev, on, current=[word_])
    assert decode(t, dev, written) is on
    for other in range(16):  # every other bit is as it was
        if other != bit:
            neighbour = tag("uint16", bit=other)
            assert decode(neighbour, dev, written) == decode(neighbour, dev, [word_])


@pytest.mark.parametrize("byte_order", ORDERS)
@settings(max_examples=80, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=12))
def test_strings_round_trip(byte_order: str, text: str) -> None:
    text = text.rstrip(" ")
    dev, t = device(byte_order), tag("string", length=6)
    if len(text.encode()) > 12:
        with pytest.raises(WriteError):
            encode(t, dev, text)
        return
    words = encode(t, dev, text)
    assert len(words) == 6
    assert decode(t, dev, words) == text


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_block_decodes_like_each_tag(data: st.DataObject) -> None:
    byte_order, word_order = data.draw(st.sampled_from(ORDERS)), data.draw(st.sampled_from(ORDERS))
    dev = device(byte_order, word_order)
    kinds = st.sampled_from(
        ["int16", "uint16", "int32", "float32", "float64", "uint64", "bit", "string", "scaled"]
    )
    tags: list[tuple[ModbusTag, int]] = []
    for i in range(data.draw(st.integers(1, 12))):
        kind = data.draw(kinds)
        address = data.draw(st.integers(0, 30))  # overlaps allowed: two bits of one register, aliases
        extra: dict[str, Any] = {}
        if kind == "bit":
            kind, extra = "uint16", {"bit": data.draw(st.integers(0, 15))}
        elif kind == "string":
            extra = {"length": data.draw(st.integers(1, 4))}
        elif kind == "scaled":
            order = data.draw(st.sampled_from(ORDERS))
            kind, extra = "int32", {"scale": 0.1, "offset": 3, "word_order": order}
        tags.append((tag(kind, address=address, name=f"t{i}", **extra), address))
    count = max(t.address + t.registers for t, _ in tags)
    words = data.draw(st.lists(word, min_size=count, max_size=count))
    block = BlockDecoder(Table.HOLDING, count, tags, dev)
    expected = [decode(t, dev, words[offset:offset + t.registers]) for t, offset in tags]
    got = block.decode(words)
    assert [struct.pack(">d", v) if isinstance(v, float) else v for v in got] == \
        [struct.pack(">d", v) if isinstance(v, float) else v for v in expected]


def test_a_bit_block_decodes_each_coil() -> None:
    tags = [(tag("bool", table="coil", address=a, name=f"c{a}"), a) for a in (0, 3, 17)]
    bits = [0] * 18
    bits[3] = bits[17] = 1
    assert BlockDecoder(Table.COIL, 18, tags, device()).decode(bits) == [False, True, True]
