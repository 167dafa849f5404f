"""A TCP relay a test puts between a client and a broker, to break the link the ways links break.

`blackhole()` keeps every socket open and throws the bytes away, both ways: a cable pulled
or a cellular link gone silent, which a client only notices through its keep-alive.
`drop()` resets every connection (the broker then sees an ungraceful loss at once).
`refuse()` resets every new connection (a broker that is down), `resume()` relays again.
`swallow_acks()` (with `mqtt=True`) relays everything but the broker's PUBACK, PUBREC and
PUBCOMP packets: a session that is up, pings answered, while no publish is ever acknowledged
(a broker whose session is stuck, which keep-alive cannot notice).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from contextlib import suppress


class TcpProxy:
    """An async context manager listening on a free loopback port (`port`)."""

    def __init__(self, target_host: str, target_port: int, mqtt: bool = False) -> None:
        """`mqtt`: the broker-to-client stream is cut into MQTT packets (plain TCP only, no TLS),
        so that `swallow_acks()` can drop some of them."""
        self._target = (target_host, target_port)
        self._mqtt = mqtt
        self._swallow = False
        self.swallowed = 0
        self._server: asyncio.Server | None = None
        self._black = False
        self._refusing = False
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._idle: set[asyncio.StreamWriter] = set()  # accepted while blackholed: relayed nowhere
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.connections = 0

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        self.drop()
        for writer in list(self._idle):
            writer.transport.abort()
        # Aborted sockets end their relays; cancelling a handler instead makes asyncio's
        # start_server log the cancellation as an error.
        if self._tasks:
            _, left = await asyncio.wait(self._tasks, timeout=2)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def blackhole(self) -> None:
        self._black = True

    def refuse(self) -> None:
        self._refusing = True

    def swallow_acks(self) -> None:
        assert self._mqtt, "TcpProxy(..., mqtt=True) cuts the stream into packets"
        self._swallow = True

    def resume(self) -> None:
        self._black = self._refusing = self._swallow = False

    def drop(self) -> None:
        for down, up in self._pairs:
            for writer in (down, up):
                sock = writer.get_extra_info("socket")
                if sock is not None:  # linger 0: close with a RST, as a crashed peer would
                    with suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
        self._pairs.clear()
        for writer in list(self._idle):
            writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self._refusing:
                return
            if self._black:  # a dead link: the connection goes nowhere
                self._idle.add(writer)
                await self._pipe(reader, None)
                return
            up_reader, up_writer = await asyncio.open_connection(*self._target)
            self.connections += 1
            self._pairs.append((writer, up_writer))
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer, from_broker=self._mqtt)
            )
        except OSError:
            pass
        finally:
            self._tasks.discard(task)
            self._idle.discard(writer)
            writer.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None, from_broker: bool = False
    ) -> None:
        pending = b""
        with suppress(OSError):
            while data := await reader.read(65536):
                if from_broker:
                    pending, data = self._packets(pending + data)
                if self._black or writer is None or not data:
                    continue
                writer.write(data)
                await writer.drain()
        if writer is not None:
            writer.transport.abort()

    def _packets(self, stream: bytes) -> tuple[bytes, bytes]:
        """(the incomplete tail, the complete packets to relay): MQTT 3.1.1 section 2.2's fixed
        header, one type byte then the remaining length in 1 to 4 bytes of 7 bits."""
        out: list[bytes] = []
        at = 0
        while True:
            length, multiplier, i = 0, 1, at + 1
            while i < len(stream) and i - at <= 4:
                length += (stream[i] & 0x7F) * multiplier
                multiplier *= 128
                i += 1
                if not stream[i - 1] & 0x80:
                    break
            else:
                return stream[at:], b"".join(out)  # the header is not complete yet
            end = i + length
            if end > len(stream):
                return stream[at:], b"".join(out)
            acknowledgement = stream[at] >> 4 in (4, 5, 7)  # PUBACK, PUBREC, PUBCOMP
            if self._swallow and acknowledgement:
                self.swallowed += 1
            else:
                out.append(stream[at:end])
            at = end
