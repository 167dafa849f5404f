"""A Modbus TCP server that misbehaves on request: the device a collector must survive.

Raw asyncio, no pymodbus: it must be able to send what pymodbus' server never would. It reads
MBAP requests (read coils/discrete inputs/holding/input registers) and answers each as `mode`
says; a test changes `mode` while the collector runs. A good answer holds `GOOD` in every
register (bits: 1); every wrong answer that carries data carries `POISON`, so a test can tell
whether anything wrong was published as good.

    MBAP: [tid 2][pid 2][length 2][unit 1]  PDU: [fc 1][byte count 1][data ...]
"""

from __future__ import annotations

import asyncio
import struct
from contextlib import suppress

GOOD = 1234
POISON = 0x0BAD

MODES = (
    "good",            # the right answer
    "wrong_fc",        # FC 4 answers an FC 3 request (and FC 3 an FC 4 one), valid data
    "long_answer",     # one register (or byte of bits) more than asked, consistent frame
    "short_answer",    # one register fewer than asked
    "byte_count_lie",  # byte count larger than the data that follows
    "wrong_tid",       # the answer carries another transaction id
    "tid_zero",        # the answer carries transaction id 0
    "exception",       # exception 2 (illegal data address)
    "exception_busy",  # exception 6 (server device busy)
    "exception_wrong_fc",  # an exception for another function code (0x84 to FC 3)
    "unknown_fc",      # function code 0x2A, not a Modbus read
    "stall",           # reads the request, never answers
    "garbage",         # text instead of a frame
    "half_frame",      # the first half of a good answer, then silence
    "close_mid",       # the first half of a good answer, then the connection is closed
    "flood",           # good answers, between them a stream of unsolicited frames and bytes
)


class RogueModbusServer:
    """An async context manager listening on a free loopback port (`port`)."""

    def __init__(self, mode: str = "good") -> None:
        self.mode = mode
        self.port = 0
        self.requests = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RogueModbusServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        # aborted sockets end their handlers; cancelling a handler instead makes asyncio's
        # start_server log the cancellation as an error
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        me = asyncio.current_task()
        assert me is not None
        self._tasks.add(me)
        flood: asyncio.Task[None] | None = None
        try:
            while True:
                if self.mode == "flood" and flood is None:
                    flood = asyncio.create_task(self._flood(writer))
                header = await reader.readexactly(7)
                tid, _pid, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                answer = self._answer(self.mode, tid, unit, pdu)
                if answer is None:
                    continue
                if self.mode in ("half_frame", "close_mid"):
                    writer.write(answer[: len(answer) // 2])
                    await writer.drain()
                    if self.mode == "close_mid":
                        return
                    continue
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if flood is not None:
                flood.cancel()
                with suppress(asyncio.CancelledError):
                    await flood
            self._writers.discard(writer)
            writer.transport.abort()
            self._tasks.discard(me)

    async def _flood(self, writer: asyncio.StreamWriter) -> None:
        """Unsolicited frames (tids no request uses, poisoned data) and stray bytes, nonstop."""
        tid = 65535
        with suppress(ConnectionError):
            while not writer.is_closing():
                frame = _frame(tid, 1, bytes([3, 2]) + struct.pack(">H", POISON))
                writer.write(frame + b"\x00\x00" + frame)
                tid = 65535 if tid == 65001 else tid - 1
                await writer.drain()
                await asyncio.sleep(0.001)

    def _answer(self, mode: str, tid: int, unit: int, pdu: bytes) -> bytes | None:
        fc = pdu[0]
        if fc not in (1, 2, 3, 4):
            return _frame(tid, unit, bytes([fc | 0x80, 1]))  # illegal function
        _start, count = struct.unpack(">HH", pdu[1:5])
        if mode == "stall":
            return None
        if mode == "garbage":
            return b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
        if mode == "exception":
            return _frame(tid, unit, bytes([fc | 0x80, 2]))
        if mode == "exception_busy":
            return _frame(tid, unit, bytes([fc | 0x80, 6]))
        if mode == "exception_wrong_fc":
            return _frame(tid, unit, bytes([(4 if fc == 3 else 3) | 0x80, 2]))
        if mode == "unknown_fc":
            return _frame(tid, unit, bytes([0x2A, 2, 0, 0]))
        bits = fc in (1, 2)
        value = GOOD if mode in ("good", "flood", "half_frame", "close_mid") else POISON
        n = count
        if mode == "long_answer":
            n = count + (8 if bits else 1)
        elif mode == "short_answer":
            n = max(count - (8 if bits else 1), 0)
        if bits:
            data = bytes([0xFF if mode == "good" or mode == "flood" else 0x00] * ((n + 7) // 8))
        else:
            data = struct.pack(f">{n}H", *([value] * n))
        byte_count = len(data) + (40 if mode == "byte_count_lie" else 0)
        answer_fc = fc
        if mode == "wrong_fc":
            answer_fc = {1: 2, 2: 1, 3: 4, 4: 3}[fc]
        if mode == "wrong_tid":
            tid = (tid + 7) % 65536 or 1
        if mode == "tid_zero":
            tid = 0
        return _frame(tid, unit, bytes([answer_fc, byte_count & 0xFF]) + data)


def _frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu
