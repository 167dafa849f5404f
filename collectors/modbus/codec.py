"""Register words <-> engineering values, both directions, as pure functions.

A tag's raw value sits in a run of 16-bit registers. Modbus sends every register high byte
first, so the bytes on the wire of a float32 whose big-endian bytes are A B C D are::

    byte_order  word_order   registers      wire bytes   read as
    big         big          AB CD          A B C D      ">" on the wire bytes
    little      little       DC BA          D C B A      "<" on the wire bytes
    big         little       CD AB          C D A B      "<" on the byte-swapped stream
    little      big          BA DC          B A D C      ">" on the byte-swapped stream

(the byte-swapped stream is every register's two bytes exchanged: `struct.pack("<nH")`).
So every order is one `struct` read on one of two byte strings of the block, which is how the
block path decodes all tags of a request with one `struct.unpack` call per layout, instead of
one call per register (FIELD-NOTES: where pymodbus' own decoding spends its time). 64-bit
values generalise the same way: word_order little reverses all four registers.

Scaling: value = raw * scale + offset. Scaled integers are rounded to the decimals of scale
and offset (215 * 0.1 gives 21.5, not 21.500000000000004); float32 values are given as the
shortest decimal that is the same float32 (21.3, not 21.299999237060547).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

from collectors.core.errors import WriteError
from collectors.core.model import Value
from collectors.core.writes import as_bool, finite
from collectors.modbus.config import DataType, ModbusDevice, ModbusTag, Order, Table

# type -> (struct code, bytes, smallest raw, largest raw) for the numeric types
_NUMERIC: dict[DataType, tuple[str, int, float, float]] = {
    DataType.INT16: ("h", 2, -(2**15), 2**15 - 1),
    DataType.UINT16: ("H", 2, 0, 2**16 - 1),
    DataType.INT32: ("i", 4, -(2**31), 2**31 - 1),
    DataType.UINT32: ("I", 4, 0, 2**32 - 1),
    DataType.INT64: ("q", 8, -(2**63), 2**63 - 1),
    DataType.UINT64: ("Q", 8, 0, 2**64 - 1),
    DataType.FLOAT32: ("f", 4, -3.4028234663852886e38, 3.4028234663852886e38),
    DataType.FLOAT64: ("d", 8, -math.inf, math.inf),
}
_FLOATS = (DataType.FLOAT32, DataType.FLOAT64)
_F32 = struct.Struct(">f")

Converter = Callable[[object], Value]


def _decimals(number: float) -> int:
    exponent = Decimal(repr(number)).as_tuple().exponent
    return min(-exponent, 15) if isinstance(exponent, int) and exponent < 0 else 0


# float32 -> its short decimal, for values seen recently: plant values repeat (setpoints, states,
# slow measurements) and formatting is the codec's dearest step. Bounded: cleared when full.
_SHORT_CACHE: dict[float, float] = {}
_SHORT_CACHE_MAX = 8192


def shortest_float32(value: float) -> float:
    """A short decimal that packs to the same float32 as `value` (which is one).

    7 significant digits suffice for most values a device shows (21.3, 0.1), 9 for any.
    """
    if value == 0.0 or not math.isfinite(value):
        return value  # before the cache: -0.0 == 0.0 as a key, but they are two float32s
    cached = _SHORT_CACHE.get(value)
    if cached is not None:
        return cached
    packed = _F32.pack(value)
    for digits in (7, 8):
        short = float(f"{value:.{digits}g}")
        if _F32.pack(short) == packed:
            break
    else:
        short = float(f"{value:.9g}")
    if len(_SHORT_CACHE) >= _SHORT_CACHE_MAX:
        _SHORT_CACHE.clear()
    _SHORT_CACHE[value] = short
    return short


@dataclass(frozen=True, slots=True)
class TagCodec:
    """How one tag's value is laid out in its registers, compiled once from tag and device.

    `swapped`: read from the byte-swapped stream; `fmt`: struct format without the endian
    character; `endian`: ">" or "<"; `convert`: raw -> engineering value (None: raw as is).
    """

    tag: ModbusTag
    bits: bool
    swapped: bool
    endian: str
    fmt: str
    size: int
    convert: Converter | None

    # ---------------------------------------------------------------- decoding

    def decode(self, words: Sequence[int]) -> Value:
        if self.bits:
            return bool(words[0])
        if len(words) < self.tag.registers:
            raise ValueError(f"{self.tag.name}: needs {self.tag.registers} registers, got {len(words)}")
        count = self.tag.registers
        stream = struct.pack(f"{'<' if self.swapped else '>'}{count}H", *words[:count])
        (raw,) = struct.unpack_from(self.endian + self.fmt, stream, 0)
        return raw if self.convert is None else self.convert(raw)

    # ---------------------------------------------------------------- encoding

    def encode(self, value: object, current: Sequence[int] | None = None) -> list[int]:
        """Engineering value -> register words (bits: [0|1]); raises WriteError when it cannot.

        A bit-of-register tag needs the register's `current` word: only its bit changes.
        """
        tag = self.tag
        if self.bits or tag.type is DataType.BOOL:
            return [int(_as_bool(tag, value))]
        if tag.bit is not None:
            on = _as_bool(tag, value)
            word = current[0] if current else 0
            if self.endian == "<":  # the bit counts in the register's value as the device means it
                word = _swap16(word)
            word = word | (1 << tag.bit) if on else word & ~(1 << tag.bit) & 0xFFFF
            return [_swap16(word) if self.endian == "<" else word]
        if tag.type is DataType.STRING:
            data = _as_text(tag, value)
        else:
            data = struct.pack(self.endian + self.fmt, _to_raw(tag, value))
        count = tag.registers
        return list(struct.unpack(f"{'<' if self.swapped else '>'}{count}H", data))


def _swap16(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def _as_bool(tag: ModbusTag, value: object) -> bool:
    return as_bool(tag.name, value)


def _as_text(tag: ModbusTag, value: object) -> bytes:
    if not isinstance(value, str):
        raise WriteError(f"{tag.name} is a string: write a JSON string, not {value!r}")
    data = value.encode("utf-8")
    room = tag.registers * 2
    if len(data) > room:
        raise WriteError(
            f"{tag.name} holds at most {room} bytes ({tag.registers} registers), got {len(data)}"
        )
    if b"\0" in data:
        raise WriteError(f"{tag.name}: a string cannot contain NUL characters")
    return data.ljust(room, b"\0")


def _to_raw(tag: ModbusTag, value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteError(f"{tag.name} is a {tag.type.value}: write a number, not {value!r}")
    if isinstance(value, float):
        finite(tag.name, value)
    _code, _size, low, high = _NUMERIC[tag.type]
    unscaled = tag.scale == 1.0 and tag.offset == 0.0
    try:
        raw: float = value if unscaled else (value - tag.offset) / tag.scale
        if tag.type in _FLOATS:
            raw = float(raw)
    except (OverflowError, ZeroDivisionError):  # an integer past any float; a scale of 0
        raw = math.inf
    if isinstance(raw, float) and not math.isfinite(raw):  # 1e308 / 0.001: a float64 register would hold inf
        after = "" if unscaled else " after scale and offset"
        raise WriteError(f"{tag.name}: {value!r} is out of range for {tag.type.value}{after}")
    if tag.type in _FLOATS:
        if not low <= raw <= high:
            raise WriteError(f"{tag.name}: {value!r} is out of range for {tag.type.value}")
        return float(raw)
    if isinstance(raw, int):
        whole = raw
    else:
        whole = round(raw)
        if abs(raw - whole) > 1e-6 * max(1.0, abs(raw)):
            why = "a whole number" if unscaled else f"a value of (raw * {tag.scale:g} + {tag.offset:g})"
            raise WriteError(f"{tag.name} is a {tag.type.value}: {value!r} is not {why}")
    if not low <= whole <= high:
        lo, hi = low * tag.scale + tag.offset, high * tag.scale + tag.offset
        lo, hi = min(lo, hi), max(lo, hi)
        raise WriteError(f"{tag.name}: {value!r} is out of range for {tag.type.value} ({lo:g} .. {hi:g})")
    return whole


def _string(raw: object) -> Value:
    assert isinstance(raw, bytes)
    # devices pad with NULs (C strings: stop at the first) or with spaces
    return raw.split(b"\0", 1)[0].rstrip(b" ").decode("utf-8", "replace")


def _converter(tag: ModbusTag) -> Converter | None:
    if tag.type is DataType.BOOL:
        return bool
    if tag.bit is not None:
        mask = 1 << tag.bit
        return lambda raw: bool(raw & mask)  # type: ignore[operator]
    if tag.type is DataType.STRING:
        return _string
    scale, offset = tag.scale, tag.offset
    identity = scale == 1.0 and offset == 0.0
    if tag.type is DataType.FLOAT32:
        if identity:
            return shortest_float32  # type: ignore[return-value]
        return lambda raw: shortest_float32(raw) * scale + offset  # type: ignore[arg-type]
    if tag.type is DataType.FLOAT64:
        return None if identity else lambda raw: raw * scale + offset  # type: ignore[operator]
    if identity:
        return None
    if scale.is_integer() and offset.is_integer():
        iscale, ioffset = int(scale), int(offset)
        return lambda raw: raw * iscale + ioffset  # type: ignore[operator]
    digits = max(_decimals(scale), _decimals(offset))
    return lambda raw: round(raw * scale + offset, digits)  # type: ignore[operator]


def compile_tag(tag: ModbusTag, byte_order: Order, word_order: Order) -> TagCodec:
    """Lay out `tag` for the given orders (the tag's own orders win over these)."""
    byte_order = tag.byte_order or byte_order
    word_order = tag.word_order or word_order
    if tag.table.is_bits:
        return TagCodec(tag, True, False, ">", "?", 1, None)
    if tag.type is DataType.STRING:
        return TagCodec(tag, False, byte_order == "little", ">", f"{tag.registers * 2}s",
                        tag.registers * 2, _string)
    code, size = ("H", 2) if tag.type is DataType.BOOL else _NUMERIC[tag.type][:2]
    if size == 2:
        swapped, endian = False, ">" if byte_order == "big" else "<"
    else:
        swapped = byte_order != word_order
        endian = ">" if word_order == "big" else "<"
    return TagCodec(tag, False, swapped, endian, code, size, _converter(tag))


@lru_cache(maxsize=4096)
def _cached(tag: ModbusTag, byte_order: Order, word_order: Order) -> TagCodec:
    return compile_tag(tag, byte_order, word_order)


def codec_for(tag: ModbusTag, device: ModbusDevice) -> TagCodec:
    return _cached(tag, device.byte_order, device.word_order)


def decode(tag: ModbusTag, device: ModbusDevice, words: Sequence[int]) -> Value:
    """The registers (bits, on coil and discrete tables) of `tag` -> its engineering value."""
    return codec_for(tag, device).decode(words)


def encode(
    tag: ModbusTag, device: ModbusDevice, value: object, current: Sequence[int] | None = None
) -> list[int]:
    """Engineering value -> the registers (or bit) to write: the inverse of `decode`.

    Raises WriteError naming the tag for a wrong type, a value out of range, a string too
    long, or a value an integer register cannot hold exactly after scale and offset.
    A bit-of-register tag changes only its bit of `current` (the register as read).
    """
    return codec_for(tag, device).encode(value, current)


class BlockDecoder:
    """Decodes every tag of one block read in one go.

    Tags are grouped by stream and endianness; each group is one precompiled struct whose
    format skips the gaps (`x`) between its tags, so a block costs one `struct.pack` per
    stream and one `unpack` per group, plus each tag's scale/bit/string conversion. Tags
    that overlap another tag of their group (two bit tags of one register) get their own
    struct, since one format cannot read the same bytes twice.
    """

    __slots__ = ("_bits", "_count", "_groups", "_needs_swapped", "size", "table")

    def __init__(self, table: Table, count: int, tags: Sequence[tuple[ModbusTag, int]],
                 device: ModbusDevice) -> None:
        self.table = table
        self.size = len(tags)
        self._count = count
        # one group: (swapped stream?, struct, [(position in result, converter)])
        self._groups: list[tuple[bool, struct.Struct, list[tuple[int, Converter | None]]]] = []
        self._bits: list[tuple[int, int]] = []  # (position in result, offset in block)
        if table.is_bits:
            self._bits = [(i, offset) for i, (_tag, offset) in enumerate(tags)]
            self._needs_swapped = False
            return
        layouts: dict[tuple[bool, str], list[tuple[int, int, TagCodec]]] = {}
        for position, (tag, offset) in enumerate(tags):
            codec = codec_for(tag, device)
            if offset < 0 or offset + tag.registers > count:
                raise ValueError(f"{tag.name} at offset {offset} does not fit a block of {count}")
            layouts.setdefault((codec.swapped, codec.endian), []).append((offset * 2, position, codec))
        for (swapped, endian), members in layouts.items():
            members.sort(key=lambda member: member[0])
            fmt, cursor, group = [endian], 0, []
            for start, position, codec in members:
                if start < cursor:  # overlaps the previous member: a struct of its own
                    single = struct.Struct(f"{endian}{start}x{codec.fmt}")
                    self._groups.append((swapped, single, [(position, codec.convert)]))
                    continue
                if start > cursor:
                    fmt.append(f"{start - cursor}x")
                fmt.append(codec.fmt)
                cursor = start + codec.size
                group.append((position, codec.convert))
            self._groups.append((swapped, struct.Struct("".join(fmt)), group))
        self._needs_swapped = any(swapped for swapped, _s, _g in self._groups)

    def decode(self, words: Sequence[int]) -> list[Value]:
        """The block's words (bits) as read -> one value per tag, in the order given."""
        out: list[Value] = [None] * self.size
        if self._bits:
            for position, offset in self._bits:
                out[position] = bool(words[offset])
            return out
        count = self._count
        if len(words) < count:
            raise ValueError(f"block needs {count} registers, got {len(words)}")
        wire = struct.pack(f">{count}H", *words[:count])
        swapped = struct.pack(f"<{count}H", *words[:count]) if self._needs_swapped else wire
        for use_swapped, layout, group in self._groups:
            raws = layout.unpack_from(swapped if use_swapped else wire)
            for (position, convert), raw in zip(group, raws, strict=True):
                out[position] = raw if convert is None else convert(raw)
        return out
