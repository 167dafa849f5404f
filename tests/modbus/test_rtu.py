"""Modbus RTU on a real pty pair (socat): two devices on one serial port, one request in flight."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.core.config import HandoffConfig
from collectors.core.handoff import HandoffServer
from collectors.core.model import WriteRequest
from collectors.modbus.collector import ModbusCollector
from tests.modbus.conftest import Server, Sink, collector_config, until

pytestmark = [
    pytest.mark.sim,
    pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat (apt-get install socat)"),
]


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals: what the server writes on one, the client reads on the other."""
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen(
        ["socat", "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if a.exists() and b.exists():
                break
            if proc.poll() is not None:
                pytest.fail("socat exited")
            time.sleep(0.05)
        else:
            pytest.fail("socat did not create the pty pair")
        yield str(a), str(b)
    finally:
        proc.terminate()
        proc.wait(timeout=5)


async def test_two_rtu_devices_share_one_port(
    pty_pair: tuple[str, str], forwarder: tuple[Sink, HandoffServer, HandoffConfig], tmp_path: Path
) -> None:
    server_end, client_end = pty_pair
    sink, handoff, settings = forwarder
    server = await Server(units=(1, 2), serial=server_end).start()
    try:
        await server.set(1, "holding", 0, [0x41AC, 0x0000])
        await server.set(2, "holding", 0, [0x0000, 0x41B4])  # 22.5, word order little
        await server.set(2, "coil", 5, [True])
        rtu = {"rtu": {"port": client_end, "baudrate": 115200, "parity": "N"}}
        devices = [
            {"name": "meter-1", "protocol": "modbus", "connection": rtu, "unit": 1, "poll": "50ms",
             "timeout": "500ms",
             "tags": [{"name": "power", "table": "holding", "address": 0, "type": "float32"}]},
            {"name": "meter-2", "protocol": "modbus", "connection": rtu, "unit": 2, "poll": "50ms",
             "timeout": "500ms", "word_order": "little",
             "tags": [{"name": "power", "table": "holding", "address": 0, "type": "float32"},
                      {"name": "relay", "table": "coil", "address": 5, "type": "bool", "writable": True}]},
        ]
        async with ModbusCollector(collector_config(settings, devices, tmp_path)) as collector:
            assert list(collector.links) == [f"serial:{client_end}"]
            task = asyncio.create_task(collector.run())
            try:
                # both poll every 50 ms: without the link's lock their frames would collide
                await asyncio.sleep(1.5)
                await until(lambda: len(sink.latest("meter-2")) == 2, timeout=5, what="meter-2 tags")
                assert handoff.send_write("modbus", WriteRequest("w1", "meter-2", "relay", False))
                await until(lambda: sink.results, timeout=5, what="write answered")
                assert sink.results[0].ok, sink.results[0].error
                assert await server.get(2, "coil", 5) == [False]
                assert await server.get(1, "coil", 5) == [False]
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            (link,) = collector.links.values()
            stats = {p.device.name: p.stats for p in collector.pollers}
    finally:
        await server.stop()
    assert link.max_in_flight == 1
    assert stats["meter-1"].polls_ok >= 10 and stats["meter-2"].polls_ok >= 10
    assert stats["meter-1"].polls_failed == 0 and stats["meter-2"].polls_failed == 0
    assert {r.value for r in sink.of("meter-1", "power")} == {21.5}
    assert {r.value for r in sink.of("meter-2", "power")} == {22.5}
    assert [r.value for r in sink.of("meter-2", "relay")][-1] is False
    assert {r.quality for r in sink.received} == {"good"}
