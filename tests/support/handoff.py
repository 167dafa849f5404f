"""Raw hand-off peers for tests that say exactly what a collector (or a rogue) would."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from collectors.core.handoff import encode_frame, read_frame
from collectors.core.model import DeviceState, Reading, WriteResult


class Sink:
    """The forwarder's end of the hand-off, keeping the readings it is handed."""

    def __init__(self) -> None:
        self.received: list[Reading] = []

    async def readings(self, collector: str, readings: list[Reading]) -> None:
        self.received.extend(readings)

    async def device_state(self, collector: str, state: DeviceState) -> None:
        pass

    def write_result(self, collector: str, result: WriteResult) -> None:
        pass


class Peer:
    """A raw hand-off connection, saying what the test tells it to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def hello(cls, socket: Path, epoch: str, **extra: Any) -> Peer:
        reader, writer = await asyncio.open_unix_connection(str(socket))
        writer.write(encode_frame({"t": "hello", "collector": "modbus", "epoch": epoch, **extra}))
        await writer.drain()
        return cls(reader, writer)

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(read_frame(self.reader), timeout)

    async def closed(self, timeout: float = 5.0) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(), timeout) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.close()
