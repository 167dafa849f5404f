"""The catalog's Modbus types are the types of the values the Modbus codec really hands off.

A Sparkplug host is told each metric's datatype at birth from the catalog; if the codec then
hands off a value of another type (a scaled uint16 reading 198.97), the edge node has to be
born again. So every combination of register type, scale and offset is decoded by the real
codec at the ends of its raw range and checked against the catalog's type.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from collectors.forwarder.sparkplug_types import CATALOG_TYPES, TYPE_RULES, DoesNotFit
from collectors.modbus.codec import compile_tag
from collectors.modbus.config import ModbusTag
from gateway.config import modbus_value_type

pytestmark = pytest.mark.unit

# type -> (struct code, raw values to decode: the ends of the range and some in between)
RAWS: dict[str, tuple[str, list[Any]]] = {
    "int16": ("h", [-(2**15), -1, 0, 7, 2**15 - 1]),
    "uint16": ("H", [0, 1, 19897, 20000, 2**16 - 1]),
    "int32": ("i", [-(2**31), -3, 0, 2**31 - 1]),
    "uint32": ("I", [0, 5, 2**32 - 1]),
    "int64": ("q", [-(2**63), 0, 2**63 - 1]),
    "uint64": ("Q", [0, 9, 2**64 - 1]),
    "float32": ("f", [0.0, 21.3, -1.5e38, 3.4e38]),
    "float64": ("d", [0.0, 21.3, -1e300, 1e300]),
}
SCALINGS = [(1.0, 0.0), (0.01, 0.0), (0.1, -40.0), (1.0, 0.5), (10.0, 0.0), (1.0, -100.0),
            (-1.0, 0.0), (2.0, 3.0), (1e20, 0.0)]  # scale 0 is refused (every write would divide by it)


def _words(code: str, raw: Any) -> list[int]:
    data = struct.pack(">" + code, raw)
    return list(struct.unpack(f">{len(data) // 2}H", data))


@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: f"scale{s[0]:g}-offset{s[1]:g}")
@pytest.mark.parametrize("kind", list(RAWS))
def test_every_decoded_value_fits_the_catalog_type_and_is_its_python_type(
    kind: str, scaling: tuple[float, float]
) -> None:
    scale, offset = scaling
    tag = ModbusTag(name="t", table="holding", address=0, type=kind, scale=scale, offset=offset)
    name = modbus_value_type(tag)
    rule = TYPE_RULES[CATALOG_TYPES[name]]
    codec = compile_tag(tag, "big", "big")
    code, raws = RAWS[kind]
    expected_python = float if name in ("float32", "float64") else int
    for raw in raws:
        value = codec.decode(_words(code, raw))
        # A whole scale whose range is past every integer type gives ints only Double can carry.
        past_ints = kind not in ("float32", "float64") and scale.is_integer() and offset.is_integer()
        assert type(value) is expected_python or (past_ints and type(value) is int), (name, raw, value)
        try:
            rule.coerce(value)
        except DoesNotFit:
            pytest.fail(f"{kind} scale {scale:g} offset {offset:g}: {value!r} does not fit {name}")


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ({"type": "uint16", "scale": 0.01}, "float64"),  # 198.97, and 200.0 is a float too
        ({"type": "int16", "scale": 1.0, "offset": 0.5}, "float64"),
        ({"type": "uint16", "scale": 10.0}, "int32"),  # 655350 is past uint16
        ({"type": "int16", "offset": 2.0}, "int32"),  # 32767 + 2 is past int16
        ({"type": "uint16", "offset": -100.0}, "int32"),  # -100 .. 65435
        ({"type": "int64", "scale": 2.0}, "float64"),  # past every integer type: Python int -> Double
        ({"type": "uint32"}, "uint32"),
        ({"type": "float32"}, "float32"),
        ({"type": "float32", "scale": 0.1}, "float64"),  # computed in double precision
        ({"type": "int16", "bit": 3}, "bool"),
        ({"type": "string", "length": 4}, "string"),
    ],
)
def test_catalog_types_of_typical_tags(tag: dict[str, Any], expected: str) -> None:
    assert modbus_value_type(ModbusTag(name="t", table="holding", address=0, **tag)) == expected


def test_a_coil_is_a_bool() -> None:
    assert modbus_value_type(ModbusTag(name="t", table="coil", address=0, type="bool")) == "bool"
