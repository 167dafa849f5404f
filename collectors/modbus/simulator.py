"""A Modbus device simulator on pymodbus' server, driven by device files.

Each device's tags move as their `simulate:` key says (collectors.core.simulate) and are
written into pymodbus' datastore every `interval`, encoded exactly as the collector decodes
them (collectors.modbus.codec). Devices that share an endpoint (a TCP host:port, or a serial
port) share one server that answers each device's unit id, like a gateway or an RS-485 line.
An RTU device whose serial port does not exist gets a pty pair: the collector opens the
device file's path, the simulator serves the `.sim` end.

A client's write is applied to the datastore, and the tags it touched hold the written value
for `write_hold` seconds before their simulation resumes, so a test or a demo sees it.

    async with ModbusSimulator(devices, host="127.0.0.1", free_ports=True) as sim:
        sim.endpoints        # {"press-1": "127.0.0.1:40123", "drive-2": "/tmp/.../ttyUSB0"}
        sim.client_device("press-1")  # the device, pointed at where the simulator listens
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import os
import shutil
import signal
import struct
import tempfile
import tty
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusBaseServer, ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from collectors.core.errors import FieldgateError, WriteError
from collectors.core.simulate import Signal, bind_problem, signal_for
from collectors.modbus import codec
from collectors.modbus.config import Connection, DataType, ModbusDevice, ModbusTag, RtuLink, Table, TcpLink

log = logging.getLogger(__name__)

# Function codes that write, and the table they write (Modbus application protocol, 6.5-6.17).
_WRITES = {
    5: Table.COIL, 15: Table.COIL, 6: Table.HOLDING, 16: Table.HOLDING, 22: Table.HOLDING, 23: Table.HOLDING,
}
# The function code that addresses each table in pymodbus' datastore (it maps code -> table).
_STORE_FC = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Raw range of each integer type, to keep a simulated value representable.
_INT_RANGE = {
    DataType.INT16: (-(2**15), 2**15 - 1), DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1), DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1), DataType.UINT64: (0, 2**64 - 1),
}


class SimulatorError(FieldgateError):
    """A device file the simulator cannot serve (endpoint taken, unit twice, port not creatable)."""


@dataclass(eq=False)
class _SimTag:
    """One tag's signal and what the simulator last put into the datastore for it."""

    device: ModbusDevice
    tag: ModbusTag
    signal: Signal
    held_until: float = 0.0  # loop time until which a client's (or set()'s) value stays
    last: object = None  # last payload written; None forces the next write

    @property
    def still(self) -> bool:
        """A constant needs writing only once (and again after a write's hold ends)."""
        return self.signal.spec.kind == "constant"

    @property
    def span(self) -> tuple[int, int]:
        return self.tag.address, self.tag.address + self.tag.registers

    def payload(self, t: float) -> list[int] | bool:
        """The registers (or the bit) that hold this tag's simulated value at t."""
        tag = self.tag
        if tag.is_bool:
            return self.signal.bool_at(t)
        if tag.type is DataType.STRING:
            return codec.encode(tag, self.device, str(self.signal.at(t))[: 2 * tag.registers])
        return codec.encode(tag, self.device, representable(tag, self.signal.number_at(t)))


def representable(tag: ModbusTag, value: float) -> float:
    """`value` moved onto the tag's raw grid and into its type's range, so encoding never fails."""
    limits = _INT_RANGE.get(tag.type)
    if limits is None:
        return value
    raw = round((value - tag.offset) / tag.scale)
    raw = min(limits[1], max(limits[0], raw))
    return raw * tag.scale + tag.offset


class _Units(SimCore):
    """pymodbus' datastore, but a unit id nobody answers is 'no such device', not unit 0's.

    On a bus (`silent`) the server then stays silent, as the missing device would; on TCP it
    answers exception 0x0B, gateway target failed to respond (Modbus application protocol,
    7). A lone TCP device also answers the unit ids 0 and 255 that Modbus TCP clients use
    for 'the device itself'.
    """

    def __init__(self, devices: list[SimDevice], aliases: dict[int, int], silent: bool) -> None:
        super().__init__(devices)
        self._aliases = aliases
        self._silent = silent

    def _unit(self, device_id: int) -> int | None:
        unit = self._aliases.get(device_id, device_id)
        if unit in self.devices:
            return unit
        if self._silent:
            raise NoSuchIdException(f"no simulated device answers unit {device_id}")
        return None

    async def async_getValues(self, device_id: int, func_code: int, address: int, count: int = 1) -> Any:
        unit = self._unit(device_id)
        if unit is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        return await super().async_getValues(unit, func_code, address, count)

    async def async_setValues(self, device_id: int, func_code: int, address: int, values: Any) -> Any:
        unit = self._unit(device_id)
        if unit is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        return await super().async_setValues(unit, func_code, address, values)


@dataclass(eq=False)
class _Unit:
    """One simulated device: its unit id on its link, and its tags."""

    device: ModbusDevice
    tags: list[_SimTag]

    @property
    def id(self) -> int:
        return self.device.unit

    def simdevice(self, action: Any) -> SimDevice:
        """pymodbus' model of the device: each table from address 0 to past its last tag."""
        ends = {table: 0 for table in Table}
        for st in self.tags:
            ends[st.tag.table] = max(ends[st.tag.table], st.span[1])
        blocks: dict[Table, list[SimData]] = {}
        for table, end in ends.items():
            if table.is_bits:
                bits = max(16, math.ceil(end / 16) * 16)
                blocks[table] = [SimData(0, values=[False] * bits, datatype=SimType.BITS)]
            elif end:
                blocks[table] = [SimData(0, values=[0] * end, datatype=SimType.REGISTERS)]
            else:  # no tag: every address is illegal, as on a device without that table
                blocks[table] = [SimData(0, datatype=SimType.INVALID)]
        return SimDevice(
            id=self.id,
            simdata=(blocks[Table.COIL], blocks[Table.DISCRETE], blocks[Table.HOLDING], blocks[Table.INPUT]),
            action=action,
        )


class _Pty:
    """A pty pair standing in for a serial cable: the collector opens `client`, we serve `server`.

    socat makes the pair when it is installed (as the docs of every Modbus tool suggest);
    otherwise two pty pairs are bridged in this process, so a machine with nothing but
    Python can still run an RTU demo.
    """

    def __init__(self, client: Path, backend: Literal["auto", "socat", "python"]) -> None:
        self.client = client
        self.server = client.with_name(client.name + ".sim")
        self.backend = "socat" if backend == "auto" and shutil.which("socat") else backend
        self._process: asyncio.subprocess.Process | None = None
        self._fds: list[int] = []

    async def open(self) -> None:
        if self.backend == "socat":
            await self._open_socat()
            return
        try:
            self._open_python()
        except OSError as exc:
            await self.close()
            raise SimulatorError(f"could not create a pty pair at {self.client}: {exc}") from exc

    async def _open_socat(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            "socat", "-d", "-d",
            f"pty,raw,echo=0,link={self.client}", f"pty,raw,echo=0,link={self.server}",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while not (self.client.is_symlink() and self.server.is_symlink()):
            if self._process.returncode is not None or loop.time() > deadline:
                assert self._process.stderr is not None
                await self.close()
                detail = (await self._process.stderr.read()).decode(errors="replace").strip()
                raise SimulatorError(f"socat could not create a pty pair at {self.client}: {detail}")
            await asyncio.sleep(0.02)

    def _open_python(self) -> None:
        pairs = [os.openpty(), os.openpty()]
        for master, slave in pairs:
            tty.setraw(slave)  # raw, no echo: what socat's `raw,echo=0` sets
            os.set_blocking(master, False)
            self._fds += [master, slave]
        for (_master, slave), link in zip(pairs, (self.client, self.server), strict=True):
            os.symlink(os.ttyname(slave), link)
        # The slaves stay open here, so a client closing its end does not hang up the master.
        (a, _), (b, _) = pairs
        loop = asyncio.get_running_loop()
        loop.add_reader(a, self._copy, a, b)
        loop.add_reader(b, self._copy, b, a)

    @staticmethod
    def _copy(source: int, target: int) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(target, os.read(source, 4096))

    async def close(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 5.0)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._fds:
            loop = asyncio.get_running_loop()
            for fd in self._fds:
                loop.remove_reader(fd)
                os.close(fd)
            self._fds = []
        for link in (self.client, self.server):
            if link.is_symlink():
                link.unlink()


@dataclass(eq=False)
class _Link:
    """One endpoint (a TCP host:port, or a serial port) and the one server answering on it."""

    key: str
    tcp: TcpLink | None
    rtu: RtuLink | None
    units: dict[int, _Unit] = field(default_factory=dict)
    host: str = ""
    port: int = 0
    serve_path: str = ""  # the serial port the server opens
    client_path: str = ""  # the serial port the collector opens
    pty: _Pty | None = None
    server: ModbusBaseServer | None = None
    store: _Units | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}" if self.tcp is not None else self.client_path

    def describe(self) -> str:
        if self.tcp is not None:
            return f"tcp {self.endpoint}" + (" (rtu framing)" if self.tcp.framer == "rtu" else "")
        if self.pty is not None:
            return f"rtu {self.client_path} (pty pair, simulator on {self.serve_path})"
        return f"rtu {self.client_path}"


class ModbusSimulator:
    """Serves Modbus device files until the `async with` block ends.

    host: listen on this address instead of each file's tcp.host. free_ports: listen on
    free ports instead of the files' (tests in parallel); `endpoints` says which.
    interval: how often values move in the datastore. write_hold: how long a written tag
    keeps the written value. pty_dir: where to create pty pairs whose device-file path
    cannot be created (default: a temporary directory). pty_backend: auto | socat | python.
    """

    def __init__(
        self,
        devices: Sequence[ModbusDevice],
        *,
        host: str | None = None,
        free_ports: bool = False,
        interval: float = 0.1,
        write_hold: float = 60.0,
        pty_dir: Path | None = None,
        pty_backend: Literal["auto", "socat", "python"] = "auto",
    ) -> None:
        self.devices = {device.name: device for device in devices}
        self.host = host
        self.free_ports = free_ports
        self.interval = interval
        self.write_hold = write_hold
        self.pty_dir = pty_dir
        self.pty_backend = pty_backend
        self.links: list[_Link] = []
        self._link_of: dict[str, _Link] = {}
        self._tags: dict[tuple[str, str], _SimTag] = {}
        self._t0 = 0.0
        self._internal = False  # set while the simulator itself writes, so the action ignores it
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._group_links()

    # ---------------------------------------------------------------- public API

    @property
    def endpoints(self) -> dict[str, str]:
        """device name -> "host:port" or the serial port path the collector must open."""
        return {name: link.endpoint for name, link in self._link_of.items()}

    def describe(self, name: str) -> str:
        """One line saying where a device is served, for people."""
        link = self._link_of[name]
        return f"{name}: modbus {link.describe()}, unit {self.devices[name].unit}"

    def client_device(self, name: str) -> ModbusDevice:
        """The device as a collector must configure it to reach this simulator."""
        device, link = self.devices[name], self._link_of[name]
        if link.tcp is not None:
            connection = Connection(tcp=link.tcp.model_copy(update={"host": link.host, "port": link.port}))
        else:
            assert link.rtu is not None
            connection = Connection(rtu=link.rtu.model_copy(update={"port": link.client_path}))
        return device.model_copy(update={"connection": connection})

    async def read(self, device: str, tag: str) -> Any:
        """The value the datastore holds for a tag now, decoded as the collector would."""
        st, link = self._tags[(device, tag)], self._link_of[device]
        assert link.store is not None
        table, unit = st.tag.table, st.device.unit
        if table.is_bits:
            return (await link.store.async_getValues(unit, _STORE_FC[table], st.tag.address, 1))[0]
        words = await link.store.async_getValues(unit, _STORE_FC[table], st.tag.address, st.tag.registers)
        return codec.decode(st.tag, st.device, list(words))

    async def set(self, device: str, tag: str, value: Any, hold: float | None = None) -> None:
        """Put a value into a tag, as if the device changed it, and hold it for `hold` seconds."""
        st, link = self._tags[(device, tag)], self._link_of[device]
        payload = bool(value) if st.tag.is_bool else codec.encode(st.tag, st.device, value)
        await self._put(link, st, payload)
        st.held_until = asyncio.get_running_loop().time() + (self.write_hold if hold is None else hold)
        st.last = None

    async def stop(self, device: str) -> None:
        """Take a device's endpoint offline (every device sharing it goes too): no connection, no answer."""
        link = self._link_of[device]
        if link.server is not None:
            await link.server.shutdown()
            link.server = None

    async def start(self, device: str) -> None:
        """Bring an endpoint back online where it was, keeping its registers."""
        link = self._link_of[device]
        if link.server is None:
            await self._serve(link)

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> ModbusSimulator:
        self._t0 = asyncio.get_running_loop().time()
        try:
            for link in self.links:
                await self._open(link)
            self._task = asyncio.create_task(self._move_values(), name="modbus-simulator-values")
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})  # our own cancellation still propagates from here
            self._task = None
        for link in self.links:
            if link.server is not None:
                await link.server.shutdown()
                link.server = None
            if link.pty is not None:
                await link.pty.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ---------------------------------------------------------------- internals

    def _group_links(self) -> None:
        for device in self.devices.values():
            conn = device.connection
            if conn.tcp is not None:
                key = f"tcp:{self.host or conn.tcp.host}:{conn.tcp.port}:{conn.tcp.framer}"
            else:
                assert conn.rtu is not None
                key = f"serial:{conn.rtu.port}"
            link = next((x for x in self.links if x.key == key), None)
            if link is None:
                link = _Link(key, conn.tcp, conn.rtu)
                self.links.append(link)
            if device.unit in link.units:
                other = link.units[device.unit].device.name
                where = key.split(":", 1)[1]
                raise SimulatorError(f"{other} and {device.name} both answer unit {device.unit} on {where}")
            tags = []
            for tag in device.tags:
                shape: Literal["number", "bool", "text"] = (
                    "bool" if tag.is_bool else "text" if tag.type is DataType.STRING else "number"
                )
                st = _SimTag(device, tag, signal_for(
                    tag.simulate, device=device.name, tag=tag.name, shape=shape, writable=tag.writable,
                ))
                self._check_encodes(st)
                tags.append(st)
                self._tags[(device.name, tag.name)] = st
            tags.sort(key=lambda st: (st.tag.table.value, st.tag.address))
            link.units[device.unit] = _Unit(device, tags)
            self._link_of[device.name] = link

    @staticmethod
    def _check_encodes(st: _SimTag) -> None:
        """Refuse a spec the tag's type cannot hold; say so when integers will clip it."""
        spec, tag = st.signal.spec, st.tag
        what = repr(spec.value) if spec.kind == "constant" else f"{spec.kind} {spec.min:g}..{spec.max:g}"
        try:
            st.payload(0.0)
            if not tag.is_bool and tag.type is not DataType.STRING and spec.kind != "constant":
                for end in (spec.min, spec.max):
                    codec.encode(tag, st.device, representable(tag, end))
        except (WriteError, ValueError, TypeError, OverflowError) as exc:
            raise SimulatorError(
                f"{st.device.name}.{tag.name}: cannot simulate {what} as {tag.type.value}: {exc}"
            ) from exc
        limits = _INT_RANGE.get(tag.type)
        if limits is not None and not tag.is_bool and spec.kind != "constant":
            low, high = sorted(raw * tag.scale + tag.offset for raw in limits)
            if spec.min < low or spec.max > high:
                log.warning("%s.%s: simulate %s is clipped to %g..%g (%s, scale %g, offset %g)",
                            st.device.name, tag.name, what, low, high, tag.type.value, tag.scale, tag.offset)

    async def _open(self, link: _Link) -> None:
        """Build the datastore, fill it, and start the server (creating a pty pair if needed)."""
        units = list(link.units.values())
        aliases = {0: units[0].id, 255: units[0].id} if link.tcp is not None and len(units) == 1 else {}
        simdevices = [unit.simdevice(partial(self._on_access, unit)) for unit in units]
        link.store = _Units(simdevices, aliases, silent=link.rtu is not None)
        for unit in units:
            for st in unit.tags:
                await self._put(link, st, st.payload(0.0))
                st.last = None
        if link.tcp is not None:
            link.host = self.host or link.tcp.host
            link.port = 0 if self.free_ports else link.tcp.port
        else:
            assert link.rtu is not None
            link.client_path = link.serve_path = link.rtu.port
            link.pty = self._pty_for(Path(link.rtu.port))
            if link.pty is not None:
                await link.pty.open()
                link.client_path, link.serve_path = str(link.pty.client), str(link.pty.server)
        await self._serve(link)

    def _pty_for(self, wanted: Path) -> _Pty | None:
        """A pty pair for a serial port that does not exist (None when it does).

        The collector's end goes where the device file says when we may create it there,
        else to a file of that name in `pty_dir` (or a temporary directory)."""
        if wanted.exists():
            return None
        return _Pty(self._pty_path(wanted), self.pty_backend)

    def _pty_path(self, wanted: Path) -> Path:
        if self.pty_dir is None and not wanted.is_symlink():
            try:
                probe = wanted.with_name(wanted.name + ".sim")
                with open(probe, "x"):
                    pass
                probe.unlink()
                return wanted
            except OSError:
                pass
        if self.pty_dir is not None:
            self.pty_dir.mkdir(parents=True, exist_ok=True)
            directory = self.pty_dir
        else:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="fieldgate-sim-")
            directory = Path(self._tmp.name)
        return directory / wanted.name

    async def _serve(self, link: _Link) -> None:
        server: ModbusBaseServer
        if link.tcp is not None:
            if link.port and (problem := bind_problem(link.host, link.port)):
                raise SimulatorError(f"{self._names(link)}: cannot listen on {link.endpoint}: {problem}")
            framer = FramerType.RTU if link.tcp.framer == "rtu" else FramerType.SOCKET
            server = ModbusTcpServer(
                _placeholder(), framer=framer, address=(link.host, link.port),
            )
        else:
            assert link.rtu is not None
            server = ModbusSerialServer(
                _placeholder(), framer=FramerType.RTU, port=link.serve_path, baudrate=link.rtu.baudrate,
                parity=link.rtu.parity, stopbits=link.rtu.stopbits, bytesize=link.rtu.bytesize,
                ignore_missing_devices=True,  # a unit nobody answers stays silent on a bus
                reconnect_delay=0.5,
            )
        assert link.store is not None
        server.context = link.store  # the datastore outlives servers: stop()/start() keep registers
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            raise SimulatorError(f"{self._names(link)}: cannot serve on {link.describe()}: {exc}") from exc
        if link.tcp is not None and not link.port:
            link.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        link.server = server
        log.info("serving %s on %s", self._names(link), link.describe())

    @staticmethod
    def _names(link: _Link) -> str:
        return ", ".join(unit.device.name for unit in link.units.values())

    async def _put(self, link: _Link, st: _SimTag, payload: list[int] | bool) -> None:
        """Write one tag's payload into the datastore."""
        assert link.store is not None
        tag, unit = st.tag, st.device.unit
        values: list[int] | list[bool]
        if isinstance(payload, bool) and tag.bit is not None:
            # One bit of a register that other bits (other tags) share: read, modify, write.
            current = await link.store.async_getValues(unit, _STORE_FC[tag.table], tag.address, 1)
            values = codec.encode(tag, st.device, payload, current=[int(w) for w in current])
        elif isinstance(payload, bool):
            values = [payload] if tag.table.is_bits else [int(payload)]
        else:
            values = payload
        await self._write(link, unit, tag.table, tag.address, values)

    async def _write(self, link: _Link, unit: int, table: Table, address: int, values: Any) -> None:
        """Write into the datastore without it counting as a client's write."""
        assert link.store is not None
        self._internal = True
        try:
            await link.store.async_setValues(unit, _STORE_FC[table], address, values)
        finally:
            self._internal = False

    async def _on_access(
        self, unit: _Unit, func_code: int, _start: int, address: int, _count: int,
        _registers: list[int], values: list[int] | list[bool] | None,
    ) -> None:
        """pymodbus' hook on every request: a client's write holds the tags it touched."""
        if values is None or self._internal or func_code not in _WRITES:
            return
        table, end = _WRITES[func_code], address + len(values)
        until = asyncio.get_running_loop().time() + self.write_hold
        for st in unit.tags:
            first, stop = st.span
            if st.tag.table is table and first < end and address < stop:
                st.held_until, st.last = until, None
                log.info("%s.%s written by a client: held for %gs",
                         st.device.name, st.tag.name, self.write_hold)

    async def _move_values(self) -> None:
        """Every `interval`, put each tag's value at this moment into the datastore."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            now = loop.time()
            for link in self.links:
                for unit in link.units.values():
                    await self._tick(link, unit, now, now - self._t0)
                    await asyncio.sleep(0)  # let waiting requests in between devices
            next_tick = max(next_tick + self.interval, loop.time())
            await asyncio.sleep(next_tick - loop.time())

    async def _tick(self, link: _Link, unit: _Unit, now: float, t: float) -> None:
        """Write the unit's changed tags, neighbouring registers in one write (tags are in
        address order), so thousands of tags cost a few datastore calls, not thousands."""
        run_table, run_start = Table.HOLDING, 0
        run: list[int] = []  # the registers of the run being gathered, from run_start on
        for st in unit.tags:
            if st.held_until > now or (st.still and st.last is not None):
                continue
            try:
                payload = st.payload(t)
            except (WriteError, ValueError, TypeError, OverflowError, struct.error) as exc:
                log.error("%s.%s: cannot encode its simulated value, holding it: %s",
                          st.device.name, st.tag.name, exc)
                st.held_until = math.inf
                continue
            if payload == st.last:
                continue
            st.last = payload
            if isinstance(payload, bool):
                await self._put(link, st, payload)
            elif run and st.tag.table is run_table and st.tag.address == run_start + len(run):
                run.extend(payload)
            else:
                if run:
                    await self._write(link, unit.id, run_table, run_start, run)
                run_table, run_start, run = st.tag.table, st.tag.address, list(payload)
        if run:
            await self._write(link, unit.id, run_table, run_start, run)


def _die_with_parent() -> None:
    """In the socat child: end when the simulator dies, even by SIGKILL, taking its links along."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _placeholder() -> SimDevice:
    """What a pymodbus server is built with before `_serve` gives it the simulator's datastore."""
    return SimDevice(id=0, simdata=[SimData(0)])
