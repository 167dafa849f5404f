"""Self-healing: a server that goes away and comes back as a new process, while the collector runs on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from collectors.core.model import Quality
from tests.opcua.conftest import oven
from tests.opcua.support import SimulatorProcess, running_collector
from tests.support.broker import free_port

pytestmark = pytest.mark.sim

AWAY = 10.0


async def test_server_restart_bad_while_away_then_readings_resume(tmp_path: Path) -> None:
    port = free_port()
    device: dict[str, Any] = oven(port, policy="Basic256Sha256", mode="SignAndEncrypt")
    sim = SimulatorProcess(device, tmp_path, port).start()
    try:
        async with running_collector([device], tmp_path) as (_, sink):
            await sink.wait_for(lambda r: r.tag == "temperature" and r.quality == Quality.GOOD, count=3)
            last_good = [r for r in sink.got if r.tag == "temperature"][-1]

            await asyncio.to_thread(sim.stop)  # killed: no CloseSession, no goodbye
            stopped = time.monotonic()
            offline = await sink.wait_state(lambda s: not s.online, within=10)
            bad = {
                r.tag: r
                for r in await sink.wait_for(lambda r: r.quality == Quality.BAD, count=len(device["tags"]))
            }
            assert time.monotonic() - stopped < 5, "the loss was noticed late"
            assert offline.reason == bad["temperature"].reason
            assert set(bad) == {t["name"] for t in device["tags"]}  # every tag, once
            assert bad["temperature"].value == last_good.value  # with its last value
            assert bad["recipe"].value == "R-17"

            await asyncio.sleep(AWAY - (time.monotonic() - stopped))
            during = len([r for r in sink.got if r.quality == Quality.GOOD])
            await asyncio.to_thread(sim.start)  # a new process, same certificate, same port
            back = time.monotonic()
            seen = len(sink.got)
            await sink.wait_for(
                lambda r: r.tag == "temperature" and r.quality == Quality.GOOD and r.ts_ms > last_good.ts_ms,
                count=1,
                within=15,
            )
            recovery = time.monotonic() - back
            batch = await sink.wait_for(lambda r: r.tag == "batch" and r.quality == Quality.GOOD, count=2)
            assert recovery < 5, f"readings resumed {recovery:.1f}s after the server was back"
            assert batch[-1].ts_ms > last_good.ts_ms
            assert len([r for r in sink.got[:seen] if r.quality == Quality.GOOD]) == during
            assert [s.online for s in sink.states] == [True, False, True]
    finally:
        sim.stop()
