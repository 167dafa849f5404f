"""One device's fault, whatever its exception type, makes only that device bad.

- a real pty: pyserial raises termios.error (not an OSError) when the kernel refuses parity E
  on a pseudo-terminal; it used to end the whole collector.
- an exception type nobody expects, injected at the decoding seam of one device, while the
  collector runs: the device goes bad with a reason, is logged once, comes back good when the
  fault goes away; the other device reports throughout.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from collectors.core.config import HandoffConfig
from collectors.core.handoff import HandoffServer
from collectors.core.model import Quality
from collectors.modbus.collector import ModbusCollector
from tests.modbus import conftest as modbus_parts
from tests.modbus.conftest import Server, Sink, collector_config, until

pytestmark = pytest.mark.security

# the Modbus tests' fixtures: a recording hand-off server, pymodbus' own logging silenced
forwarder = modbus_parts.forwarder
quiet_pymodbus = modbus_parts.quiet_pymodbus


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = await Server(units=(1, 2)).start()
    await srv.set(1, "holding", 0, [11])
    await srv.set(2, "holding", 0, [22])
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[str]:
    """One end of a socat pty pair (the kernel refuses parity on it)."""
    if shutil.which("socat") is None:
        pytest.skip("needs socat")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (a.exists() and b.exists()):
            assert proc.poll() is None, "socat exited"
            assert time.monotonic() < deadline, "socat made no pty pair"
            time.sleep(0.05)
        yield str(b)
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def tcp_device(name: str, port: int, unit: int) -> dict[str, Any]:
    return {"name": name, "protocol": "modbus", "unit": unit, "poll": "50ms", "timeout": "300ms",
            "connection": {"tcp": {"host": "127.0.0.1", "port": port}},
            "tags": [{"name": "level", "table": "holding", "address": 0, "type": "uint16"}]}


def good_of(sink: Sink, device: str) -> list[Any]:
    return [r.value for r in sink.of(device, "level") if r.quality == Quality.GOOD]


async def test_a_serial_port_refusing_its_settings_only_makes_its_device_bad(
    pty: str, server: Server, forwarder: tuple[Sink, HandoffServer, HandoffConfig], tmp_path: Path,
) -> None:
    sink, _handoff, settings = forwarder
    meter = {"name": "meter", "protocol": "modbus", "poll": "50ms", "timeout": "300ms",
             "connection": {"rtu": {"port": pty, "baudrate": 19200, "parity": "E"}},
             "tags": [{"name": "level", "table": "holding", "address": 0, "type": "uint16"}]}
    config = collector_config(settings, [meter, tcp_device("press", server.port, 1)], tmp_path)
    async with ModbusCollector(config, reconnect_max=0.5) as collector:
        run = asyncio.create_task(collector.run())
        try:
            await until(lambda: sink.of("meter", "level") or run.done(), what="meter reported")
            assert not run.done(), f"the collector ended: {run.exception()!r}"
            [bad] = sink.of("meter", "level")
            assert bad.quality == Quality.BAD and bad.reason == "cannot configure serial port"
            # the press keeps reporting while the meter's link tries again and again
            seen = len(good_of(sink, "press"))
            await until(lambda: len(good_of(sink, "press")) >= seen + 10 or run.done(),
                        what="press readings")
            assert not run.done(), f"the collector ended: {run.exception()!r}"
            assert set(good_of(sink, "press")) == {11}
            assert len(sink.of("meter", "level")) == 1  # bad once, not once per attempt
        finally:
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run


class Boom(Exception):
    """An exception type no part of the collector knows."""


async def test_an_unexpected_exception_in_one_device_is_isolated_and_recovers(
    server: Server, forwarder: tuple[Sink, HandoffServer, HandoffConfig], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink, _handoff, settings = forwarder
    devices = [tcp_device("press", server.port, 1), tcp_device("oven", server.port, 2)]
    config = collector_config(settings, devices, tmp_path)
    async with ModbusCollector(config, reconnect_max=0.5) as collector:
        oven = next(p for p in collector.pollers if p.device.name == "oven")
        # the seam: the oven's block decoder, as a codec bug or a device quirk would break it
        planned = oven._blocks[0][0]
        decoder = planned.decoder
        faulty = True

        class Broken:
            def decode(self, words: list[int]) -> Any:
                if faulty:
                    raise Boom("register 0 makes the codec trip")
                return decoder.decode(words)

        planned.decoder = Broken()  # type: ignore[assignment]
        run = asyncio.create_task(collector.run())
        try:
            with caplog.at_level(logging.DEBUG, logger="collectors.modbus"):
                await until(lambda: sink.of("oven", "level") or run.done(), what="oven reported")
                assert not run.done(), f"the collector ended: {run.exception()!r}"
                seen = len(good_of(sink, "press"))
                await until(lambda: len(good_of(sink, "press")) >= seen + 10, what="press readings")
                assert not run.done()
                [bad] = sink.of("oven", "level")
                assert bad.quality == Quality.BAD and bad.reason == "unexpected error (Boom)"
                await until(lambda: oven.stats.polls_failed >= 3, what="oven tried again, backing off")
                assert len(sink.of("oven", "level")) == 1  # bad once, not once per try
                errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "oven" in r.getMessage()]
                assert len(errors) == 1, [r.getMessage() for r in errors]
                assert "unexpected error (Boom)" in errors[0].getMessage()

                faulty = False
                await until(lambda: 22 in good_of(sink, "oven"), timeout=10, what="oven good again")
                assert any("oven" in r.getMessage() and "recovered" in r.getMessage()
                           for r in caplog.records if r.levelno == logging.INFO)
                assert not run.done()
        finally:
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
