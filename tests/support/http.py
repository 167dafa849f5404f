"""A bare HTTP GET for the /metrics and /healthz endpoints the tests read."""

from __future__ import annotations

import asyncio


async def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of a GET on 127.0.0.1:port."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body
