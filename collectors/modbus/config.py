"""The Modbus device model (docs/config.md), and the Modbus collector's config slice.

Which keys apply to which data type is one table (`TYPE_RULES`) checked in one validator,
so the error says what is allowed instead of failing somewhere at poll time.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from collectors.core.config import (
    HOST_PATTERN,
    CollectorSettings,
    Duration,
    Finite,
    StrictModel,
    check_write_limits,
    read_slice,
)
from collectors.core.modelbase import Field, model_validator
from collectors.core.names import Name
from collectors.core.simulate import Simulate


class Table(StrEnum):
    COIL = "coil"
    DISCRETE = "discrete"
    INPUT = "input"
    HOLDING = "holding"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)

    @property
    def is_writable(self) -> bool:
        return self in (Table.COIL, Table.HOLDING)


class DataType(StrEnum):
    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


Order = Literal["big", "little"]

# The shortest poll interval and request timeout: about one Modbus TCP round trip on a LAN (a
# poll that short means "back to back"; bench_modbus_collector.py polls at 1ms). Below it the
# number only pretends: `poll: 0.0001ms` asks ten million requests a second of one link.
MIN_INTERVAL = 0.001

# type -> (registers it spans, whether `bit`, `length`, `word_order`, scale/offset/deadband apply)
TYPE_RULES: dict[DataType, tuple[int, bool, bool, bool, bool]] = {
    #                 regs  bit    length word_order numeric
    DataType.BOOL:    (1, False, False, False, False),
    DataType.INT16:   (1, True,  False, False, True),
    DataType.UINT16:  (1, True,  False, False, True),
    DataType.INT32:   (2, False, False, True,  True),
    DataType.UINT32:  (2, False, False, True,  True),
    DataType.INT64:   (4, False, False, True,  True),
    DataType.UINT64:  (4, False, False, True,  True),
    DataType.FLOAT32: (2, False, False, True,  True),
    DataType.FLOAT64: (4, False, False, True,  True),
    DataType.STRING:  (0, False, True,  False, False),
}


class TcpLink(StrictModel):
    host: str = Field(pattern=HOST_PATTERN, description="IP address or host name of the device or gateway")
    port: int = Field(502, ge=1, le=65535, description="TCP port")
    framer: Literal["socket", "rtu"] = Field(
        "socket", description="socket: Modbus TCP (MBAP); rtu: RTU frames over TCP (serial servers)"
    )


class RtuLink(StrictModel):
    port: str = Field(
        pattern=r"^[^\s\x00-\x1f\x7f]+$", description="serial port, e.g. /dev/ttyUSB0 or /dev/serial/by-id/..."
    )
    baudrate: int = Field(9600, ge=50, le=4_000_000, description="bits per second, 50..4000000")
    parity: Literal["N", "E", "O"] = Field("N", description="N (none) | E (even) | O (odd)")
    stopbits: Literal[1, 2] = Field(1, description="1 | 2")
    bytesize: Literal[7, 8] = Field(8, description="7 | 8")


class Connection(StrictModel):
    """Exactly one of `tcp` or `rtu`."""

    tcp: TcpLink | None = Field(None, description="Modbus TCP, or RTU over TCP with framer: rtu")
    rtu: RtuLink | None = Field(None, description="Modbus RTU on a serial port")

    @model_validator(mode="after")
    def _exactly_one(self) -> Connection:
        if (self.tcp is None) == (self.rtu is None):
            raise ValueError("give exactly one of tcp or rtu")
        return self

    @property
    def link_key(self) -> str:
        """What identifies the physical link: one owner, one request in flight."""
        if self.rtu is not None:
            return f"serial:{self.rtu.port}"
        assert self.tcp is not None
        return f"tcp:{self.tcp.host}:{self.tcp.port}"


class ModbusTag(StrictModel):
    name: Name = Field(description="tag name, unique within the device; the last topic level")
    table: Table = Field(description="coil | discrete | input | holding")
    address: int = Field(ge=0, le=65535, description="0-based protocol address")
    type: DataType = Field(description="bool int16 uint16 int32 uint32 int64 uint64 float32 float64 string")
    scale: Finite = Field(1.0, description="value = raw * scale + offset (numeric types); a number other than 0")
    offset: Finite = Field(0.0, description="value = raw * scale + offset (numeric types)")
    unit: str | None = Field(None, description="engineering unit, e.g. degC, bar, kWh")
    deadband: Finite = Field(0.0, ge=0, description="publish only when the value moves this much (0 = every poll)")
    max_silence: Duration | None = Field(None, description="publish at least this often; default: the device's")
    poll: Duration | None = Field(
        None, ge=MIN_INTERVAL, description="poll interval of this tag, at least 1ms; default: the device's"
    )
    bit: int | None = Field(None, ge=0, le=15, description="one bit (0 = least significant) of a 16-bit register")
    length: int | None = Field(None, ge=1, le=125, description="string length in registers (2 characters each)")
    byte_order: Order | None = Field(None, description="big | little inside a register; default: the device's")
    word_order: Order | None = Field(None, description="big | little (CDAB) register order; default: the device's")
    writable: bool = Field(False, description="accept writes (coil and holding tables only)")
    write_min: float | None = Field(
        None, allow_inf_nan=False,
        description="lowest value a write may set, in engineering units; lower writes are refused "
        "(writable numeric tags)",
    )
    write_max: float | None = Field(
        None, allow_inf_nan=False,
        description="highest value a write may set, in engineering units; higher writes are refused "
        "(writable numeric tags)",
    )
    description: str | None = Field(None, description="free text for people")
    simulate: Simulate | None = Field(None, description="how `fieldgate simulate` moves this value")

    @model_validator(mode="after")
    def _legal_for_type(self) -> ModbusTag:
        _regs, bit_ok, length_ok, word_ok, numeric = TYPE_RULES[self.type]
        if self.table.is_bits and self.type is not DataType.BOOL:
            raise ValueError(f"a {self.table.value} tag holds one bit: its type must be bool, not {self.type.value}")
        if self.bit is not None and not (bit_ok and not self.table.is_bits):
            raise ValueError("bit applies only to int16 or uint16 tags of the input or holding table")
        if self.length is None and length_ok:
            raise ValueError("a string tag needs length (registers, 2 characters each)")
        if self.length is not None and not length_ok:
            raise ValueError(f"length applies only to string tags, not {self.type.value}")
        if self.word_order is not None and not word_ok:
            raise ValueError("word_order applies only to 32- and 64-bit types")
        if self.scale == 0:
            raise ValueError("scale 0 makes every value 0 and no write possible (a write divides by scale): "
                             "use a number other than 0")
        if not numeric and (self.scale != 1.0 or self.offset != 0.0 or self.deadband):
            raise ValueError(f"scale, offset and deadband apply only to numeric types, not {self.type.value}")
        if self.bit is not None and (self.scale != 1.0 or self.offset != 0.0 or self.deadband):
            raise ValueError("a bit tag is a bool: scale, offset and deadband do not apply")
        if self.writable and not self.table.is_writable:
            raise ValueError(f"the {self.table.value} table is read-only in Modbus: writable must be false")
        if self.address + self.registers - 1 > 65535:
            raise ValueError("the tag runs past address 65535")
        if self.write_min is not None or self.write_max is not None:
            if not self.writable:
                raise ValueError("write_min and write_max apply only to writable: true tags")
            if not numeric or self.bit is not None:
                what = "a bit" if self.bit is not None else self.type.value
                raise ValueError(f"write_min and write_max apply only to numeric tags, not {what}")
            check_write_limits(self.write_min, self.write_max)
        return self

    @property
    def registers(self) -> int:
        """Registers (or bits, on coil/discrete tables) this tag spans."""
        if self.table.is_bits:
            return 1
        if self.type is DataType.STRING:
            assert self.length is not None
            return self.length
        return TYPE_RULES[self.type][0]

    @property
    def is_bool(self) -> bool:
        return self.type is DataType.BOOL or self.bit is not None


class ModbusDevice(StrictModel):
    """One Modbus device: a PLC, a meter, a drive (devices/NAME.yaml)."""

    name: Name = Field(description="device name, unique in the gateway; a topic level")
    protocol: Literal["modbus"] = Field(description="modbus")
    connection: Connection = Field(description="tcp: {host, port} or rtu: {port, baudrate, parity, stopbits, bytesize}")
    unit: int = Field(1, ge=0, le=255, description="unit id (slave id) of the device")
    poll: Duration = Field(
        1.0, ge=MIN_INTERVAL, description="default poll interval of the tags, e.g. 250ms, 1s; at least 1ms"
    )
    timeout: Duration = Field(
        1.0, ge=MIN_INTERVAL, le=600, description="how long to wait for an answer, 1ms..10m"
    )
    retries: int = Field(0, ge=0, le=5, description="extra tries of a timed-out request before the tags go bad")
    byte_order: Order = Field("big", description="big | little: byte order inside a 16-bit register")
    word_order: Order = Field("big", description="big | little: register order in 32/64-bit values (little = CDAB)")
    max_gap: int = Field(
        8, ge=0, le=124,
        description="unused registers a request may read to join two tags into one (bits: x16)",
    )
    max_registers: int = Field(125, ge=1, le=125, description="most registers in one read (some devices take less)")
    max_bits: int = Field(2000, ge=1, le=2000, description="most coils or discrete inputs in one read")
    max_silence: Duration = Field(60.0, gt=0, description="publish every tag at least this often, even unchanged")
    frame_delay: Duration = Field(
        0.0, le=10, description="pause between frames on this link (slow serial devices), at most 10s"
    )
    description: str | None = Field(None, description="free text for people")
    tags: list[ModbusTag] = Field(min_length=1, description="the values to read")

    @model_validator(mode="after")
    def _unique_tags(self) -> ModbusDevice:
        seen: set[str] = set()
        for tag in self.tags:
            if tag.name in seen:
                raise ValueError(f"tag name {tag.name!r} is used twice in this device")
            seen.add(tag.name)
        return self


class ModbusCollectorConfig(CollectorSettings):
    """What `python -m collectors.modbus --config FILE` runs: rendered by the gateway."""

    devices: list[ModbusDevice] = Field(description="the Modbus devices this collector polls")


def load_collector_config(path: Path) -> ModbusCollectorConfig:
    return ModbusCollectorConfig.model_validate(read_slice(path))
