"""A start-first handover between two OPC UA collectors of one name: the standby opens no session
while the old one serves the device, and subscribes once the old one has left."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from collectors.core.handoff import HandoffServer
from collectors.core.model import Quality
from collectors.opcua.collector import OpcuaCollector
from collectors.opcua.config import OpcuaCollectorConfig, OpcuaDevice
from collectors.opcua.simulator import OpcuaSimulator
from tests.opcua.support import Recorder
from tests.support.broker import free_port
from tests.support.shell import running

pytestmark = pytest.mark.sim


async def test_the_standby_opens_no_session_until_the_old_collector_has_left(tmp_path: Path) -> None:
    device = {"name": "oven", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{free_port()}",
              "subscription": {"publishing_interval": "100ms", "sampling_interval": "50ms"},
              "tags": [{"name": "temperature", "node": "ns=2;s=Oven.Temperature",
                        "simulate": {"kind": "ramp", "min": 0, "max": 100, "period": "2s"}}]}
    socket = tmp_path / "handoff.sock"
    config = OpcuaCollectorConfig.model_validate({
        "name": "opcua", "handoff": {"socket": str(socket), "linger": "5ms"},
        "state_dir": str(tmp_path / "state"), "devices": [device]})
    sink = Recorder()
    async with OpcuaSimulator([OpcuaDevice.model_validate(device)], tick=0.05), HandoffServer(socket, sink) as handoff:
        old, new = OpcuaCollector(config), OpcuaCollector(config)
        new.start_as_standby(0)
        async with running(old) as old_task:
            await sink.wait_for(lambda r: r.quality == Quality.GOOD, within=20, count=3)
            async with running(new):
                deadline = time.monotonic() + 10
                while not new.handoff.standby_admitted:
                    assert time.monotonic() < deadline, "the standby was not admitted"
                    await asyncio.sleep(0.02)
                await asyncio.sleep(1.0)
                standby_link = new.sessions["oven"]
                assert not standby_link.online and standby_link.reader is None  # no session beside the old one
                assert handoff.standbys == ["opcua"]
                old_task.cancel()
                await asyncio.gather(old_task, return_exceptions=True)
                await old.__aexit__(None, None, None)
                left, before = time.monotonic(), len(sink.got)
                await sink.wait_for(lambda r: True, within=20, count=before + 1)  # the new one's first
                took = time.monotonic() - left
                assert new.active and new.sessions["oven"].online
    print(f"\nopcua handover: the new collector's first reading {took * 1000:.0f} ms after the old one left "
          "(its session and subscription are set up once it is active)")
