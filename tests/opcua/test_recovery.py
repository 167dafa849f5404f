"""Self-healing: a server that goes away and comes back as a new process, while the collector runs on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from asyncua import Server, ua

from collectors.core.model import Quality
from tests.opcua.conftest import oven
from tests.opcua.support import SimulatorProcess, running_collector
from tests.support.broker import free_port
from tests.support.proxy import TcpProxy

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
            # The new server registers two namespaces first: urn:plant:recipes gets another index,
            # which only a collector that resolves nsu= on every connect will find.
            extra = [{"name": f"other{i}", "node": f"nsu=urn:plant:other{i};s=X"} for i in range(2)]
            sim.file.write_text(yaml.safe_dump({**device, "tags": extra + device["tags"]}))
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
            recipe = await sink.wait_for(lambda r: r.tag == "recipe", count=3)  # good, bad, good again
            assert [(r.value, r.quality) for r in recipe] == [
                ("R-17", Quality.GOOD),
                ("R-17", Quality.BAD),
                ("R-17", Quality.GOOD),
            ]
            assert recovery < 5, f"readings resumed {recovery:.1f}s after the server was back"
            assert batch[-1].ts_ms > last_good.ts_ms
            assert len([r for r in sink.got[:seen] if r.quality == Quality.GOOD]) == during
            assert [s.online for s in sink.states] == [True, False, True]
    finally:
        sim.stop()


async def test_a_silent_link_is_noticed_by_the_keepalive_watchdog_and_healed(
    plain_sim: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    _, served = plain_sim
    sim_port = int(served["endpoint"].rsplit(":", 1)[1])
    async with TcpProxy("127.0.0.1", sim_port) as proxy:
        device = {**served, "endpoint": f"opc.tcp://127.0.0.1:{proxy.port}", "timeout": "1s"}
        async with running_collector([device], tmp_path) as (_, sink):
            await sink.wait_for(lambda r: r.tag == "temperature" and r.quality == Quality.GOOD, count=2)
            proxy.blackhole()  # the cable is pulled: no FIN, no RST, just silence
            cut = time.monotonic()
            await sink.wait_state(lambda s: not s.online, within=15)
            noticed = time.monotonic() - cut
            bad = await sink.wait_for(lambda r: r.tag == "temperature" and r.quality == Quality.BAD)
            assert noticed < 6, f"a silent link was noticed after {noticed:.1f}s"
            assert bad[0].reason in ("timeout", "connection lost", "BadTimeout"), bad[0].reason
            await asyncio.sleep(1)
            proxy.resume()
            resumed = time.monotonic()
            await sink.wait_for(
                lambda r: r.tag == "temperature" and r.quality == Quality.GOOD and r.ts_ms > bad[0].ts_ms,
                within=20,
            )
            assert [s.online for s in sink.states] == [True, False, True]
            assert time.monotonic() - resumed < 10


async def test_a_session_the_server_closes_is_rebuilt(tmp_path: Path) -> None:
    """The transport stays up, the server forgets the session (a timeout, an admin, a redundancy switch)."""
    server = Server()
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}"
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    speed = await server.nodes.objects.add_variable(ua.NodeId.from_string("ns=1;s=speed"), "speed", 1.0)
    device = {
        "name": "line",
        "protocol": "opcua",
        "endpoint": endpoint,
        "timeout": "1s",
        "subscription": {"publishing_interval": "100ms"},
        "tags": [
            {"name": "speed", "node": "ns=1;s=speed"},
            {"name": "count", "node": "ns=1;s=speed", "mode": "poll", "poll": "200ms"},
        ],
    }
    async with server, running_collector([device], tmp_path) as (_, sink):
        await sink.wait_for(lambda r: r.tag == "speed" and r.value == 1.0)
        for session in list(server.iserver._external_sessions.values()):
            await session.close_session()
        await sink.wait_state(lambda s: not s.online, within=15)
        await speed.write_value(2.0)
        back = await sink.wait_for(lambda r: r.tag == "speed" and r.value == 2.0, within=15)
        assert back[0].quality == Quality.GOOD
        assert [s.online for s in sink.states][-1] is True
