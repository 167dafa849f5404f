"""A small Prometheus text endpoint (`/metrics`) and `/healthz`, on asyncio, with no dependency.

Each component registers gauges as callables read at scrape time, so nothing extra runs
on the hot path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress

log = logging.getLogger(__name__)

Sample = tuple[dict[str, str], float]


class Metrics:
    def __init__(self, namespace: str = "fieldgate") -> None:
        self._namespace = namespace
        self._families: dict[str, tuple[str, str, Callable[[], list[Sample] | float]]] = {}
        self._health: list[Callable[[], str | None]] = []

    def gauge(self, name: str, help_text: str, read: Callable[[], list[Sample] | float]) -> None:
        self._families[name] = ("gauge", help_text, read)

    def counter(self, name: str, help_text: str, read: Callable[[], list[Sample] | float]) -> None:
        self._families[name] = ("counter", help_text, read)

    def health_check(self, check: Callable[[], str | None]) -> None:
        """`check()` returns None when healthy, or a sentence saying what is wrong."""
        self._health.append(check)

    def problems(self) -> list[str]:
        return [p for p in (check() for check in self._health) if p]

    def render(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text, read) in self._families.items():
            full = f"{self._namespace}_{name}"
            lines.append(f"# HELP {full} {help_text}")
            lines.append(f"# TYPE {full} {kind}")
            value = read()
            samples = value if isinstance(value, list) else [({}, value)]
            for labels, number in samples:
                label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
                lines.append(f"{full}{{{label_text}}} {number}" if label_text else f"{full} {number}")
        return "\n".join(lines) + "\n"

    async def serve(self, port: int, host: str = "0.0.0.0") -> asyncio.Server:
        return await asyncio.start_server(self._handle, host, port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)).strip():
                pass
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            if path.startswith("/metrics"):
                status, body = "200 OK", self.render()
            elif path.startswith("/healthz"):
                problems = self.problems()
                status = "503 Service Unavailable" if problems else "200 OK"
                body = "\n".join(problems) + "\n" if problems else "ok\n"
            else:
                status, body = "404 Not Found", "try /metrics or /healthz\n"
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()
