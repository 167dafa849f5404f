"""A small Prometheus text endpoint (`/metrics`) and `/healthz`, on asyncio, with no dependency.

Each component registers gauges as callables read at scrape time, so nothing extra runs
on the hot path.

`/healthz` answers 503 with one line per problem when a component is unwell in a way a
restart can cure (the supervisor restarts it after a grace period), 200 `ok` when all is
well, and 200 with lines starting `degraded:` when it works as designed around a fault
outside it that a restart cannot cure (a broker that cannot be reached: the forwarder
buffers and keeps retrying).
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
        self._degraded: list[Callable[[], str | None]] = []

    def gauge(self, name: str, help_text: str, read: Callable[[], list[Sample] | float]) -> None:
        self._families[name] = ("gauge", help_text, read)

    def counter(self, name: str, help_text: str, read: Callable[[], list[Sample] | float]) -> None:
        self._families[name] = ("counter", help_text, read)

    def health_check(self, check: Callable[[], str | None]) -> None:
        """`check()` returns None when healthy, or a sentence saying what is wrong."""
        self._health.append(check)

    def degraded_check(self, check: Callable[[], str | None]) -> None:
        """`check()` returns None, or a sentence on a fault outside the component that it rides out
        (healthy, but the reader should know: `/healthz` stays 200 and shows it)."""
        self._degraded.append(check)

    def problems(self) -> list[str]:
        return [p for p in (check() for check in self._health) if p]

    def notes(self) -> list[str]:
        return [note for note in (check() for check in self._degraded) if note]

    def health(self) -> tuple[bool, str]:
        """(healthy, the body of /healthz)."""
        problems = self.problems()
        if problems:
            return False, "\n".join(problems) + "\n"
        notes = self.notes()
        if notes:
            return True, "".join(f"degraded: {note}\n" for note in notes)
        return True, "ok\n"

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
                healthy, body = self.health()
                status = "200 OK" if healthy else "503 Service Unavailable"
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
