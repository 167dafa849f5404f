"""Both runtimes scrape a service's /metrics the same way for `fieldgate status`: one served by
a real HTTP server in this process, its readings counter reset as a restarted service resets
it. The docker runtime kept the old rate after a reset; the process runtime said 0/s."""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.plan import ServiceSpec
from gateway.runtime import docker as docker_runtime
from gateway.runtime import process as process_runtime
from gateway.runtime.common import RunDir
from gateway.runtime.docker import DockerRuntime
from gateway.runtime.process import Child, ProcessRuntime

pytestmark = pytest.mark.sim

COUNTS = [(0.0, 100), (5.0, 150), (10.0, 20), (15.0, 70)]  # (seconds, counter): a reset at 10 s
RATES = [None, 10.0, 4.0, 10.0]


class Served:
    """A /metrics endpoint whose readings counter and buffered gauge the test sets."""

    def __init__(self) -> None:
        self.count = 0
        self.port = 0

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = (f'fieldgate_forwarder_readings_out_total{{broker="b"}} {self.count}\n'
                "fieldgate_forwarder_buffered_readings 7\n")
        writer.write(f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
        await writer.drain()
        writer.close()
        await writer.wait_closed()


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    metrics = Served()
    server = await asyncio.start_server(metrics.answer, "127.0.0.1", 0)
    metrics.port = server.sockets[0].getsockname()[1]
    async with server:
        yield metrics


def clock(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> list[float]:
    """The runtime module's clock, set by the test (asyncio keeps the real one)."""
    now = [1000.0]
    fake = types.SimpleNamespace(monotonic=lambda: now[0], time=lambda: now[0])
    monkeypatch.setattr(module, "time", fake)
    return now


async def test_the_docker_runtime_counts_a_reset_counter_from_zero(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = clock(monkeypatch, docker_runtime)
    runtime = DockerRuntime(tmp_path, RunDir(tmp_path / "run"), client=object(),  # type: ignore[arg-type]
                            printer=lambda _: None)
    rates = []
    for at, count in COUNTS:
        now[0], served.count = 1000.0 + at, count
        await runtime._scrape("forwarder", "127.0.0.1", served.port)
        rates.append(runtime.details()["forwarder"].get("readings_per_s"))
    assert rates == RATES
    assert runtime.details()["forwarder"]["buffered"] == 7


async def test_the_process_runtime_counts_a_reset_counter_from_zero(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = clock(monkeypatch, process_runtime)
    runtime = ProcessRuntime(RunDir(tmp_path / "run"), printer=lambda _: None)
    spec = ServiceSpec("forwarder", ("true",), "0" * 16, metrics_port=served.port)
    child = Child(spec, process=None, started=now[0], restarts=0)  # type: ignore[arg-type]
    rates = []
    for at, count in COUNTS:
        now[0], served.count = 1000.0 + at, count
        await runtime._scrape(child, served.port)
        rates.append(child.readings_per_s)
    assert rates == pytest.approx(RATES)
    assert child.buffered == 7
