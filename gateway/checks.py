"""Checks that need more than one file: what each device file cannot know about the others.

Each check returns problems at the position of the second claimant, naming the first one's
file and line, so the engineer sees both places. Things that run but look like a copy-paste
slip (two devices polling one TCP unit, a file not named after its device) are warnings.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePath

from pydantic import BaseModel

from collectors.core.yamlnodes import Loc, Problem, Source
from collectors.modbus.config import ModbusDevice, ModbusTag
from collectors.opcua.config import OpcuaDevice

AnyDevice = ModbusDevice | OpcuaDevice


@dataclass(frozen=True, slots=True)
class _Claim:
    source: Source
    device: AnyDevice
    loc: Loc

    def at(self) -> str:
        position = self.source.where(self.loc)
        line = f":{position.line}" if position else ""
        return f"{self.source.file}{line}"


def cross_file(
    gateway_source: Source,
    gateway: object,
    loaded: list[tuple[Source, AnyDevice]],
    warnings: list[Problem],
) -> list[Problem]:
    """Every cross-file problem; warnings are appended to `warnings`."""
    problems: list[Problem] = []
    problems.extend(_unique_names(loaded))
    problems.extend(_serial_ports(loaded))
    problems.extend(_tcp_framers(loaded))
    problems.extend(_writable_overlaps(loaded))
    problems.extend(_start_first_serial(gateway_source, gateway, loaded))
    problems.extend(_sandboxed_serial(gateway_source, gateway, loaded))
    problems.extend(_reserved_names(loaded))
    problems.extend(_topics_and_ports(gateway_source, gateway))
    warnings.extend(_shared_units(loaded))
    warnings.extend(_file_names(loaded))
    warnings.extend(_unreadable_files(gateway_source, gateway, loaded))
    warnings.extend(_sandbox_without_containers(gateway_source, gateway))
    return problems


def _problem(source: Source, loc: Loc, message: str) -> Problem:
    return Problem(source.file, source.where(loc), message)


def _unique_names(loaded: list[tuple[Source, AnyDevice]]) -> Iterator[Problem]:
    first: dict[str, _Claim] = {}
    for source, device in loaded:
        claim = _Claim(source, device, ("name",))
        if device.name in first:
            yield _problem(
                source, ("name",),
                f"device {device.name}: name is already used by {first[device.name].at()}; device names "
                "must be unique in a gateway (they are MQTT topic levels)",
            )
        else:
            first[device.name] = claim


def _serial_ports(loaded: list[tuple[Source, AnyDevice]]) -> Iterator[Problem]:
    """Devices on one RS-485 line share its settings; the collector opens the port once."""
    first: dict[str, _Claim] = {}
    for source, device in loaded:
        if not isinstance(device, ModbusDevice) or device.connection.rtu is None:
            continue
        rtu = device.connection.rtu
        loc = ("connection", "rtu")
        if rtu.port not in first:
            first[rtu.port] = _Claim(source, device, loc)
            continue
        other = first[rtu.port]
        assert isinstance(other.device, ModbusDevice) and other.device.connection.rtu is not None
        theirs = other.device.connection.rtu
        differs = [
            f"{key} {getattr(rtu, key)} (there: {getattr(theirs, key)})"
            for key in ("baudrate", "parity", "stopbits", "bytesize")
            if getattr(rtu, key) != getattr(theirs, key)
        ]
        if differs:
            yield _problem(
                source, loc,
                f"device {device.name}: serial port {rtu.port} is also used by {other.device.name} "
                f"({other.at()}) with other settings: {', '.join(differs)}; devices on one port must "
                "share baudrate, parity, stopbits and bytesize",
            )
        if device.unit == other.device.unit:
            yield _problem(
                source, ("unit",) if ("unit",) in source.values else loc,
                f"device {device.name}: unit {device.unit} on serial port {rtu.port} is also "
                f"{other.device.name}'s ({_Claim(other.source, other.device, ('unit',)).at()}); "
                "each device on a line needs its own unit id",
            )


def _tcp_framers(loaded: list[tuple[Source, AnyDevice]]) -> Iterator[Problem]:
    """One TCP endpoint speaks one framing: Modbus TCP, or RTU frames through a serial server."""
    first: dict[str, _Claim] = {}
    for source, device in loaded:
        if not isinstance(device, ModbusDevice) or device.connection.tcp is None:
            continue
        tcp = device.connection.tcp
        key = device.connection.link_key
        other = first.setdefault(key, _Claim(source, device, ("connection", "tcp")))
        assert isinstance(other.device, ModbusDevice) and other.device.connection.tcp is not None
        if other.device.connection.tcp.framer != tcp.framer:
            yield _problem(
                source, ("connection", "tcp"),
                f"device {device.name}: {tcp.host}:{tcp.port} is also used by {other.device.name} "
                f"({other.at()}) with framer {other.device.connection.tcp.framer}, here {tcp.framer}; "
                "one endpoint speaks one framing",
            )


def _link_unit(device: ModbusDevice) -> tuple[str, int]:
    return device.connection.link_key, device.unit


def _shared_units(loaded: list[tuple[Source, AnyDevice]]) -> Iterator[Problem]:
    """Two device files on one TCP endpoint and unit: allowed (one PLC split in two), but said."""
    first: dict[tuple[str, int], _Claim] = {}
    for source, device in loaded:
        if not isinstance(device, ModbusDevice) or device.connection.tcp is None:
            continue
        key = _link_unit(device)
        if key not in first:
            first[key] = _Claim(source, device, ("connection", "tcp"))
            continue
        other = first[key]
        yield _problem(
            source, ("connection", "tcp"),
            f"warning: device {device.name} polls the same endpoint and unit ({key[0].removeprefix('tcp:')} "
            f"unit {key[1]}) as {other.device.name} ({other.at()}); fine when they split one PLC's "
            "registers, otherwise a copied file",
        )


Span = tuple[str, int, int, int | None]  # table, first address, last address, bit


def _writable_ranges(device: ModbusDevice) -> Iterator[tuple[int, ModbusTag, Span]]:
    """(index, tag, (table, first, last, bit)) of each writable tag."""
    for i, tag in enumerate(device.tags):
        if tag.writable:
            yield i, tag, (tag.table.value, tag.address, tag.address + tag.registers - 1, tag.bit)


def _writable_overlaps(loaded: list[tuple[Source, AnyDevice]]) -> Iterator[Problem]:
    """Two writable tags on the same registers: two topics would fight over one value.

    Checked within a device and between devices on one link and unit; each tag is reported once,
    against the first tag met that it overlaps. Indexed by register (not every pair compared), so
    18,000 writable tags take milliseconds, not 18 s.
    """
    Claimed = tuple[int, _Claim, ModbusTag, Span]  # (order met, ...)
    whole: dict[tuple[str, int, str, int], Claimed] = {}  # first tag on a register, any bit
    by_bit: dict[tuple[str, int, str, int, int | None], Claimed] = {}  # first tag on a register and bit
    order = 0
    for source, device in loaded:
        if not isinstance(device, ModbusDevice):
            continue
        link, unit = _link_unit(device)
        for i, tag, span in _writable_ranges(device):
            table, first_reg, last_reg, bit = span
            if bit is None:  # the whole register(s): any earlier tag on them overlaps
                found = [whole.get((link, unit, table, reg)) for reg in range(first_reg, last_reg + 1)]
            else:  # one bit: an earlier whole-register tag, or one on the same bit
                found = [by_bit.get((link, unit, table, first_reg, b)) for b in (None, bit)]
            earlier = min((c for c in found if c is not None), key=lambda c: c[0], default=None)
            if earlier is not None:
                _, claim, other_tag, other_span = earlier
                same = claim.device is device
                owner = f"tag {other_tag.name}" if same else f"{claim.device.name} tag {other_tag.name}"
                yield _problem(
                    source, ("tags", i, "address"),
                    f"device {device.name}, tag {tag.name}: writable {span[0]} {_span(span)} overlaps "
                    f"writable {owner} ({claim.at()}, {other_span[0]} {_span(other_span)}); "
                    "give each writable register one tag",
                )
            claimed = (order, _Claim(source, device, ("tags", i)), tag, span)
            order += 1
            for reg in range(first_reg, last_reg + 1):
                whole.setdefault((link, unit, table, reg), claimed)
                by_bit.setdefault((link, unit, table, reg, bit), claimed)


def _span(span: Span) -> str:
    where = f"{span[1]}" if span[1] == span[2] else f"{span[1]}..{span[2]}"
    return where + (f" bit {span[3]}" if span[3] is not None else "")


def _rtu_ports(loaded: list[tuple[Source, AnyDevice]]) -> list[str]:
    """The serial ports the Modbus devices name, sorted."""
    return sorted({
        d.connection.rtu.port for _, d in loaded
        if isinstance(d, ModbusDevice) and d.connection.rtu is not None
    })


def _start_first_serial(
    gateway_source: Source, gateway: object, loaded: list[tuple[Source, AnyDevice]]
) -> Iterator[Problem]:
    """start-first, asked for in gateway.yaml, would run two Modbus collectors at once: two owners
    of one serial port. The default (start-first) is not refused: the planner updates a collector
    with serial ports stop-first by itself (gateway.plan.update_order)."""
    collectors = getattr(gateway, "collectors", None)
    modbus = getattr(collectors, "modbus", None)
    if getattr(modbus, "update", None) != "start-first" or "update" not in getattr(modbus, "model_fields_set", ()):
        return
    ports = _rtu_ports(loaded)
    if ports:
        yield _problem(
            gateway_source, ("collectors", "modbus", "update"),
            f"collectors.modbus.update: start-first would open serial port {', '.join(ports)} from two "
            "collectors during an update; use stop-first while Modbus RTU devices are configured",
        )


def sandboxed(gateway: object) -> list[tuple[str, ...]]:
    """The gateway.yaml keys of every service that asks for `sandbox: gvisor`."""
    keys: list[tuple[str, ...]] = []
    if getattr(getattr(gateway, "forwarder", None), "sandbox", "none") == "gvisor":
        keys.append(("forwarder", "sandbox"))
    collectors = getattr(gateway, "collectors", None)
    for protocol in ("modbus", "opcua"):
        if getattr(getattr(collectors, protocol, None), "sandbox", "none") == "gvisor":
            keys.append(("collectors", protocol, "sandbox"))
    return keys


def _sandboxed_serial(
    gateway_source: Source, gateway: object, loaded: list[tuple[Source, AnyDevice]]
) -> Iterator[Problem]:
    """gVisor's kernel passes no ttys through: a sandboxed Modbus collector could not open its ports."""
    if ("collectors", "modbus", "sandbox") not in sandboxed(gateway):
        return
    ports = _rtu_ports(loaded)
    if ports:
        yield _problem(
            gateway_source, ("collectors", "modbus", "sandbox"),
            f"collectors.modbus.sandbox: gvisor cannot run a collector with serial ports: gVisor passes "
            f"no ttys into its sandbox, so {', '.join(ports)} could not be opened; use sandbox: none "
            "while Modbus RTU devices are configured",
        )


def _sandbox_without_containers(gateway_source: Source, gateway: object) -> Iterator[Problem]:
    """`sandbox` is a property of a container; child processes of `fieldgate up` run without it."""
    if getattr(gateway, "runtime", "docker") != "process":
        return
    for key in sandboxed(gateway):
        yield _problem(
            gateway_source, key,
            f"warning: {'.'.join(key)}: gvisor applies to the docker runtime only; with runtime: process "
            "this service runs as an ordinary child process, not sandboxed",
        )


# `{topic_prefix}/status` carries the gateway's retained online/offline (docs/config.md, docs/mqtt.md);
# a device of that name would publish on it with `layout: device`, and confuse subscribers either way.
RESERVED_DEVICE_NAMES = frozenset({"status"})


def _reserved_names(loaded: list[tuple[Source, AnyDevice]]) -> Iterator[Problem]:
    for source, device in loaded:
        if device.name.lower() in RESERVED_DEVICE_NAMES:
            yield _problem(
                source, ("name",),
                f"device {device.name}: the name is reserved: {{topic_prefix}}/{device.name} carries the "
                "gateway's online/offline state; choose another name",
            )


def _topics_and_ports(gateway_source: Source, gateway: object) -> Iterator[Problem]:
    # mqtt.topic_prefix: checked by MqttConfig itself
    port = getattr(getattr(gateway, "metrics", None), "port", None)
    if port is not None and not 1 <= port <= 65535 - 2:
        yield _problem(
            gateway_source, ("metrics", "port"),
            f"metrics.port: {port} leaves no room for the collectors' ports (port+1, port+2): "
            "choose 1..65533",
        )


def _file_names(loaded: list[tuple[Source, AnyDevice]]) -> Iterator[Problem]:
    for source, device in loaded:
        if source.file.stem != device.name:
            yield _problem(
                source, ("name",),
                f"warning: file {source.file.name} describes device {device.name}; naming the file "
                f"{device.name}.yaml helps find it",
            )


# The user and group every image runs as (compose/*.Dockerfile; gateway.compose.USER).
CONTAINER_UID = CONTAINER_GID = 10001
# The files a component opens itself (certificates, keys, password files, the strict trust dir).
READ_FILES = frozenset({"password_file", "ca_file", "cert_file", "key_file", "user_certificate",
                        "user_private_key", "trust_dir"})


def _read_files(model: object, loc: Loc) -> Iterator[tuple[Loc, PurePath]]:
    if not isinstance(model, BaseModel):
        return
    for name in type(model).model_fields:
        value = getattr(model, name)
        if name in READ_FILES and isinstance(value, PurePath):
            yield (*loc, name), value
        elif isinstance(value, BaseModel):
            yield from _read_files(value, (*loc, name))


def can_read(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    """Whether `uid` with groups `gids` may read what `st` describes (list it, for a directory)."""
    need = 0o5 if stat.S_ISDIR(st.st_mode) else 0o4
    if uid == 0:
        return True
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid in gids:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & need == need


def container_cannot_read(path: PurePath) -> str | None:
    """Why uid 10001 (the containers' user) cannot read `path`, or None when it can (or it is gone)."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # a missing file is an error of its own
    if can_read(st, CONTAINER_UID, {CONTAINER_GID}):
        return None
    return (f"{path} (owner {st.st_uid}, group {st.st_gid}, mode {stat.S_IMODE(st.st_mode):04o}) cannot be "
            f"read by uid {CONTAINER_UID}, the user the containers run as: make it readable by group "
            f"{CONTAINER_GID} (chgrp {CONTAINER_GID} FILE; chmod 0640 FILE) or owned by that user "
            f"(chown {CONTAINER_UID} FILE; chmod 0600 FILE)")


def _unreadable_files(
    gateway_source: Source, gateway: object, loaded: list[tuple[Source, AnyDevice]]
) -> Iterator[Problem]:
    """A warning for each certificate, key or password file the component cannot read where it runs:
    as uid 10001 in a container (docker runtime), as this user in a child process (process runtime)."""
    docker = getattr(gateway, "runtime", "docker") == "docker"
    owners = [(gateway_source, gateway), *loaded]
    for source, model in owners:
        for at, path in _read_files(model, ()):
            key = ".".join(str(part) for part in at)
            if docker:
                why = container_cannot_read(path)
            elif os.path.exists(path) and not os.access(path, os.R_OK):
                why = f"{path} cannot be read by uid {os.getuid()}, the user `fieldgate up` runs the components as"
            else:
                why = None
            if why is not None:
                yield _problem(source, at, f"warning: {key}: {why}")
