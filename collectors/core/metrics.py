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
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

Sample = tuple[dict[str, str], float]

# Bounds of the HTTP endpoint. Prometheus and the supervisor open one connection per scrape,
# so a few dozen at once is plenty; a slow or hostile client must not hold more (one held
# 390 fds before these existed).
MAX_CONNECTIONS = 16
REQUEST_DEADLINE = 5.0  # seconds for the whole request: head in, answer out
MAX_HEAD = 8192  # bytes of request line plus headers
# After a 431: how long, and how many bytes, of what the client still sends are taken in and
# dropped before the close (a "lingering close"). Closing with bytes unread makes the kernel send
# a reset, which can throw the answer away before the client reads it: a client refused while
# its head is still on its way would see "connection reset" instead of the 431.
LINGER = 1.0
LINGER_BYTES = 4 * 1024 * 1024


def reach(host: str) -> str:
    """The address a client on this machine dials for a server listening on `host`."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


class Metrics:
    def __init__(self, namespace: str = "fieldgate") -> None:
        self._namespace = namespace
        self._families: dict[str, tuple[str, str, Callable[[], list[Sample] | float]]] = {}
        self._health: list[Callable[[], str | None]] = []
        self._degraded: list[Callable[[], str | None]] = []
        self._open = 0  # connections being served now
        self._refused = 0  # connections closed at once because `_open` was at the cap
        self._max_connections = MAX_CONNECTIONS
        self._deadline = REQUEST_DEADLINE

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

    async def serve(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        max_connections: int = MAX_CONNECTIONS,
        deadline: float = REQUEST_DEADLINE,
    ) -> asyncio.Server:
        """Listen on host:port (loopback unless the config says otherwise).

        Bounded against slow or hostile clients: at most `max_connections` at once (one more is
        closed as soon as it is accepted), one `deadline` for the whole request (reading the head
        and writing the answer), and a request head of at most MAX_HEAD bytes (431 past that).
        """
        self._max_connections = max_connections
        self._deadline = deadline
        self.counter("http_connections_refused_total",
                     "connections to /metrics and /healthz closed at once: too many open",
                     lambda: self._refused)
        return await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self._max_connections:
            self._refused += 1
            writer.transport.abort()  # frees the fd now; a scraper retries
            return
        self._open += 1
        try:
            async with asyncio.timeout(self._deadline):
                answer = await self._answer(reader)
                if answer is not None:
                    status, body = answer
                    data = body.encode()
                    writer.write(
                        f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data
                    )
                    if status.startswith("431") and writer.can_write_eof():
                        writer.write_eof()  # the answer, then FIN: the client reads it whole
                        await self._linger(reader)  # the rest of its head may still be coming
                writer.close()  # flushes what is written, then closes
                await writer.wait_closed()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._open -= 1
            writer.transport.abort()  # past the deadline too: the fd goes, whatever the peer does

    @staticmethod
    async def _linger(reader: asyncio.StreamReader) -> None:
        """Drop what the client still sends until it closes, for at most LINGER s and LINGER_BYTES."""
        taken = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER):
                while taken < LINGER_BYTES and (chunk := await reader.read(65536)):
                    taken += len(chunk)

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[str, str] | None:
        """(status, body) for the request whose head `reader` holds; None when the peer sent nothing."""
        too_long = "431 Request Header Fields Too Large", f"request head over {MAX_HEAD} bytes\n"
        head = 0
        request = b""
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:  # the peer stopped sending: answer what came
                line = exc.partial
                if not (request or line):
                    return None
            except (asyncio.LimitOverrunError, ValueError):
                return too_long
            head += len(line)
            if head > MAX_HEAD:
                return too_long
            if not request:
                request = line
            if not line.strip() or reader.at_eof():
                break
        parts = request.decode("latin-1").split()
        path = parts[1] if len(parts) > 1 else "/"
        if path.startswith("/metrics"):
            return "200 OK", self.render()
        if path.startswith("/healthz"):
            healthy, body = self.health()
            return ("200 OK" if healthy else "503 Service Unavailable"), body
        return "404 Not Found", "try /metrics or /healthz\n"
