"""One physical link (a TCP endpoint or a serial port) and the only door to pymodbus' client.

Every device on a link talks through its `Link`: it owns the pymodbus client, lets exactly one
request be in flight (a Modbus TCP device answers one at a time; two masters on one RS-485
line garble each other), serves waiting writes before waiting polls (but lets a poll through
after every `WRITE_BURST` writes, so a queue of writes does not stop them), keeps the pause between
frames, and reconnects with capped exponential backoff and jitter. A link that is backing
off fails its requests at once instead of waiting, so it never holds up another link, nor
the tasks that poll through it.

pymodbus' own retries and reconnects are switched off: the device's `timeout` and `retries`
apply per request (devices sharing a port may differ), and reconnecting is decided here.
Errors leave this module as `DeviceError` with a short, stable reason ("timeout",
"connection refused", "exception 2: illegal data address"): it becomes the `bad` reading's
reason, so it must not carry addresses or counters that change from poll to poll.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import itertools
import logging
import random
import socket
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from collectors.core.errors import DeviceError
from collectors.modbus.config import Connection, ModbusDevice, Table

log = logging.getLogger(__name__)

WRITE = 0  # priorities: lower is served first
POLL = 1

# Modbus application protocol v1.1b3, section 7
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

# The function code each call asks with; an answer must carry it (an exception: it | 0x80)
FUNCTION_CODES = {
    "read_coils": 1, "read_discrete_inputs": 2, "read_holding_registers": 3,
    "read_input_registers": 4, "write_coil": 5, "write_register": 6,
    "write_coils": 15, "write_registers": 16,
}

# After this many timeouts in a row with no answer from any device of a TCP link, the
# connection is taken as half-open (device rebooted, NAT dropped it) and opened again.
TIMEOUTS_BEFORE_RECONNECT = 3
# ... which is said at INFO at most once in this many seconds per link, else at DEBUG: a
# device that keeps going silent must not fill the log (its ErrorLatch says it is failing)
REOPEN_SAID_EVERY = 600.0


class AnswerNotModbus(ModbusException):
    """Bytes that framed as an answer but do not decode as one (unknown function code, a byte
    count beyond the frame): the stream can no longer be trusted, so the connection is closed."""


# Writes go ahead of polls, but at most this many in a row while a poll waits: a queue of writes
# (a recipe download, a DCMD of many metrics) must not stop the polls (it stopped them for 11 s).
WRITE_BURST = 4


class PriorityLock:
    """A lock that hands itself to the waiter with the lowest priority number, FIFO within one,
    except that after `burst` grants in a row that passed over a less urgent waiter, the oldest
    of those passed over goes next."""

    def __init__(self, burst: int = WRITE_BURST) -> None:
        self._held = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._burst = burst
        self._passed_over = 0  # grants in a row while a less urgent waiter waited

    @property
    def waiting(self) -> int:
        return sum(1 for _p, _o, future in self._waiters if not future.done())

    async def acquire(self, priority: int) -> None:
        if not self._held and not self.waiting:
            self._held = True
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # handed to us just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        waiters = [waiter for waiter in self._waiters if not waiter[2].done()]
        if not waiters:
            self._waiters.clear()
            self._held = False
            self._passed_over = 0
            return
        heapq.heapify(waiters)
        first = waiters[0]
        less_urgent = [waiter for waiter in waiters if waiter[0] > first[0]]
        if less_urgent and self._passed_over >= self._burst:
            first = min(less_urgent, key=lambda waiter: waiter[1])
            self._passed_over = 0
        else:
            self._passed_over = self._passed_over + 1 if less_urgent else 0
        waiters.remove(first)
        heapq.heapify(waiters)
        self._waiters = waiters
        first[2].set_result(None)  # stays held: ownership passes to that waiter


class Backoff:
    """Capped exponential backoff with jitter: 0.5-1.0 x min(cap, first x 2^failures)."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.first * 2 ** min(self.failures, 30))
        self.failures += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


class Link:
    """One TCP endpoint or serial port, shared by every device behind it."""

    def __init__(
        self,
        devices: list[ModbusDevice],
        *,
        reconnect_first: float = 0.25,
        reconnect_max: float = 30.0,
    ) -> None:
        if not devices:
            raise ValueError("a link needs at least one device")
        self.connection: Connection = devices[0].connection
        self.key = self.connection.link_key
        self.devices = list(devices)
        # the pause between frames is a property of the line: the slowest device sets it
        self.frame_delay = max(device.frame_delay for device in devices)
        self.connect_timeout = max(device.timeout for device in devices)
        self._backoff = Backoff(reconnect_first, reconnect_max)
        self._lock = PriorityLock()
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._retry_at = 0.0  # loop time before which no reconnect is tried
        self._last_reason = "not connected"
        self._last_frame = 0.0
        self._timeouts_in_row = 0
        self._reopen_said_at: float | None = None  # loop time of the last INFO "opening again"
        self.requests = 0
        self.failures = 0
        self.in_flight = 0
        self.max_in_flight = 0  # what the tests check: never more than one

    async def __aenter__(self) -> Link:
        # pymodbus binds its transport to the running loop when the client is built
        self._client = self._build_client()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    # ------------------------------------------------------------------ requests

    async def read(self, device: ModbusDevice, table: Table, start: int, count: int) -> list[int]:
        """A poll's read: queued behind any waiting write."""
        async with self.turn(POLL) as turn:
            return await turn.read(device, table, start, count)

    @asynccontextmanager
    async def turn(self, priority: int) -> AsyncIterator[Turn]:
        """The link to oneself for a few requests (a write, then its read-back)."""
        await self._lock.acquire(priority)
        try:
            yield Turn(self)
        finally:
            self._lock.release()

    async def _execute(self, device: ModbusDevice, call: str, address: int, **kwargs: Any) -> Any:
        """One request with the device's timeout and retries; the lock is held by the caller."""
        client = await self._ensure_connected(device)
        # the transaction manager keeps its own copy of the parameters; its timeout is per request
        client.ctx.comm_params.timeout_connect = device.timeout
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        reason, detail = "timeout", ""
        for _attempt in range(device.retries + 1):
            pause = self._last_frame + self.frame_delay - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                # pymodbus enforces the timeout itself; this one only guards against a hang
                async with asyncio.timeout(device.timeout * 2 + 1.0):
                    response = await getattr(client, call)(address, device_id=device.unit, **kwargs)
                    if task is not None and task.cancelling():
                        # 3.11's wait_for in pymodbus can drop a cancel that came with the
                        # answer (cpython gh-86296); raise it again so writes and shutdown end
                        raise asyncio.CancelledError
            except (ModbusIOException, TimeoutError):
                # pymodbus' own words ("No response received after 0 retries, ...") say less
                reason, detail = "timeout", f"no answer within {device.timeout:g} s"
                if not client.connected:
                    reason, detail = "connection lost", "closed while waiting for the answer"
                    break
                continue
            except ConnectionException:
                reason, detail = "connection lost", "not connected"
                break
            except ModbusException as exc:
                reason, detail = "protocol error", str(exc)
                break
            except Exception as exc:
                # an answer pymodbus chokes on: the stream is out of step, start it afresh
                reason, detail = "protocol error", f"{type(exc).__name__}: {exc}"
                client.close()
                break
            finally:
                self.in_flight -= 1
                self._last_frame = loop.time()
            self._timeouts_in_row = 0
            problem = _wrong_answer(response, call, client.ctx.request_transaction_id)
            if problem is not None:
                self.failures += 1
                raise DeviceError(device.name, problem[0], f"{call} at {address}: {problem[1]}")
            if response.isError():
                code = getattr(response, "exception_code", 0)
                name = EXCEPTION_NAMES.get(code, "unknown exception")
                self.failures += 1
                raise DeviceError(device.name, f"exception {code}: {name}", f"{call} at {address}")
            return response
        self.failures += 1
        if reason == "timeout":
            self._timeouts_in_row += 1
            if self.connection.tcp is not None and self._timeouts_in_row >= TIMEOUTS_BEFORE_RECONNECT:
                said = self._reopen_said_at
                say = said is None or loop.time() - said >= REOPEN_SAID_EVERY
                log.log(logging.INFO if say else logging.DEBUG,
                        "%s: %d timeouts in a row, opening the connection again", self.key,
                        self._timeouts_in_row)
                if say:
                    self._reopen_said_at = loop.time()
                self._timeouts_in_row = 0
                client.close()
        raise DeviceError(device.name, reason, detail or None)

    async def _ensure_connected(self, device: ModbusDevice) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        client = self._client
        if client is None:
            raise DeviceError(device.name, "link closed")
        if client.connected:
            return client
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            raise DeviceError(device.name, self._last_reason, "waiting before the next connect")
        failed = await self._connect(client)
        if failed is None:
            self._backoff.reset()
            self._timeouts_in_row = 0
            log.debug("%s: connected", self.key)
            return client
        reason, detail = failed
        self._last_reason = reason
        self._retry_at = loop.time() + self._backoff.next_delay()
        raise DeviceError(device.name, reason, detail or None)

    async def _connect(
        self, client: AsyncModbusTcpClient | AsyncModbusSerialClient
    ) -> tuple[str, str] | None:
        """Open the transport; None on success, else a short reason and the detail behind it.

        Any exception is this link's failure to connect, never the collector's: pyserial raises
        termios.error (not an OSError) when the port refuses its settings (a pty asked for
        parity E), and whatever else a driver raises must not end the other links.

        pymodbus' `connect()` swallows the cause (refused? unknown host?), which the plant
        engineer needs to see; so this opens the transport the way `connect()` does in
        pymodbus 3.16 (pinned), keeping the exception.
        """
        ctx = client.ctx
        ctx.is_closing = False
        try:
            async with asyncio.timeout(self.connect_timeout):
                ctx.transport, _protocol = await ctx.call_create()
        except TimeoutError:
            return "connect timeout", ""
        except ConnectionRefusedError:
            return "connection refused", ""
        except socket.gaierror as exc:
            return "unknown host", str(exc)
        except OSError as exc:
            return _os_reason(exc, self.connection.rtu is not None), str(exc)
        except termios.error as exc:
            return "cannot configure serial port", f"termios.error: {exc}"
        except Exception as exc:
            return "connect failed", f"{type(exc).__name__}: {exc}"
        return None if client.connected else ("connect failed", "")

    def _build_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        common: dict[str, Any] = {
            "name": self.key,
            "reconnect_delay": 0,  # 0: pymodbus does not reconnect on its own; we do
            "reconnect_delay_max": 0,
            "timeout": self.connect_timeout,
            "retries": 0,
        }
        client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if self.connection.rtu is not None:
            rtu = self.connection.rtu
            client = AsyncModbusSerialClient(
                rtu.port, framer=FramerType.RTU, baudrate=rtu.baudrate, parity=rtu.parity,
                stopbits=rtu.stopbits, bytesize=rtu.bytesize, **common,
            )
        else:
            assert self.connection.tcp is not None
            tcp = self.connection.tcp
            framer = FramerType.RTU if tcp.framer == "rtu" else FramerType.SOCKET
            client = AsyncModbusTcpClient(tcp.host, port=tcp.port, framer=framer, **common)
        # pymodbus closes a connection after retries+3 unanswered requests; on a shared
        # line that would punish every device for one dead one. We decide (see _execute).
        client.set_max_no_responses(1 << 30)
        _catch_undecodable(client)
        return client


class Turn:
    """The requests one holder of the link makes while it holds it."""

    __slots__ = ("_link",)

    def __init__(self, link: Link) -> None:
        self._link = link

    async def read(self, device: ModbusDevice, table: Table, start: int, count: int) -> list[int]:
        """`count` registers, or bits as 0/1, from `start` of `table`."""
        call = _READS[table]
        response = await self._link._execute(device, call, start, count=count)
        # the answer must hold what was asked, no less and no more (section 6.1-6.4: the byte
        # count is 2 x count for registers, count / 8 rounded up for bits)
        if table.is_bits:
            bits = response.bits
            if len(bits) < count:
                raise DeviceError(device.name, "short answer", f"{len(bits)} of {count} bits")
            if len(bits) > 8 * ((count + 7) // 8):
                raise DeviceError(device.name, "long answer", f"{len(bits)} bits for {count}")
            return [1 if bit else 0 for bit in bits[:count]]
        registers: list[int] = response.registers
        if len(registers) < count:
            raise DeviceError(device.name, "short answer", f"{len(registers)} of {count} registers")
        if len(registers) > count:
            raise DeviceError(device.name, "long answer", f"{len(registers)} registers for {count}")
        return registers

    async def write(self, device: ModbusDevice, table: Table, address: int, words: list[int]) -> None:
        """Coils: write_coil(s); holding registers: write_register (one) or write_registers."""
        if table is Table.COIL:
            if len(words) == 1:
                await self._link._execute(device, "write_coil", address, value=bool(words[0]))
            else:
                await self._link._execute(device, "write_coils", address, values=[bool(w) for w in words])
        elif table is Table.HOLDING:
            if len(words) == 1:
                await self._link._execute(device, "write_register", address, value=words[0])
            else:
                await self._link._execute(device, "write_registers", address, values=list(words))
        else:
            raise DeviceError(device.name, f"the {table.value} table is read-only")


_READS = {
    Table.COIL: "read_coils",
    Table.DISCRETE: "read_discrete_inputs",
    Table.HOLDING: "read_holding_registers",
    Table.INPUT: "read_input_registers",
}


def _wrong_answer(response: Any, call: str, transaction_id: int) -> tuple[str, str] | None:
    """Why `response` is not an answer to this request (reason, detail), or None.

    pymodbus hands over whatever decoded: an FC 4 answer to an FC 3 request, or a frame with
    transaction id 0 (its check skips 0), would otherwise be read as the registers asked for.
    """
    asked = FUNCTION_CODES[call]
    answered = response.function_code & 0x7F
    if answered != asked:
        return "wrong function code", f"asked FC {asked}, answered FC {response.function_code}"
    if response.transaction_id != transaction_id:
        return "wrong transaction id", f"sent {transaction_id}, answered {response.transaction_id}"
    return None


def _catch_undecodable(client: AsyncModbusTcpClient | AsyncModbusSerialClient) -> None:
    """Make an answer pymodbus cannot decode fail the request at once as a protocol error.

    pymodbus raises from its `data_received` then: asyncio logs a traceback per frame
    ("Fatal error: protocol.data_received() call failed") and the request waits for its
    timeout. Here the request fails with `AnswerNotModbus` and the connection is closed (the
    stream is out of step); the next request opens it again.
    """
    ctx = client.ctx
    decode = ctx.callback_data

    def callback_data(data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        try:
            return decode(data, addr)
        except Exception as exc:
            future = ctx.response_future
            if not future.done():
                future.set_exception(AnswerNotModbus(f"undecodable answer: {exc}"))
            ctx.close()
            return len(data)

    ctx.callback_data = callback_data  # type: ignore[method-assign]


def _os_reason(exc: OSError, serial: bool) -> str:
    names = {
        errno.ENETUNREACH: "network unreachable",
        errno.EHOSTUNREACH: "host unreachable",
        errno.ECONNRESET: "connection reset",
        errno.ENOENT: "no such serial port",
        errno.EACCES: "permission denied",
        errno.EBUSY: "port busy",
    }
    if exc.errno in names:
        return names[exc.errno]
    text = str(exc).lower()
    if serial and ("no such file" in text or "could not open" in text):
        return "cannot open serial port"
    return "connect failed"
