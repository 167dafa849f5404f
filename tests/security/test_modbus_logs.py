"""Misbehaving devices against the real collector process: its log says each problem once.

The docs promise "first error at ERROR, repeats at DEBUG". A device answering frames pymodbus
cannot decode used to cost an asyncio traceback per answer ("Fatal error:
protocol.data_received() call failed"), a silent one an INFO line per three timeouts.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from collectors.core.config import HandoffConfig
from collectors.core.handoff import HandoffServer
from tests.modbus.conftest import Sink
from tests.support.entry import start_entry_point, stop_entry_point
from tests.support.rogue_modbus import RogueModbusServer

pytestmark = pytest.mark.security

MODES = ("byte_count_lie", "unknown_fc", "stall", "garbage", "wrong_fc")


async def test_misbehaving_devices_are_logged_once_each(tmp_path: Path) -> None:
    sink = Sink()
    settings = HandoffConfig(socket=tmp_path / "handoff.sock")
    log = tmp_path / "modbus.log"
    async with HandoffServer(settings.socket, sink):
        servers = [await RogueModbusServer(mode).__aenter__() for mode in MODES]
        try:
            config = tmp_path / "modbus.json"
            config.write_text(json.dumps({
                "name": "modbus", "handoff": {"socket": str(settings.socket)}, "metrics_port": None,
                "state_dir": str(tmp_path), "log_level": "INFO",
                "devices": [
                    {"name": mode.replace("_", "-"), "protocol": "modbus", "poll": "100ms", "timeout": "100ms",
                     "connection": {"tcp": {"host": "127.0.0.1", "port": server.port}},
                     "tags": [{"name": "level", "table": "holding", "address": 0, "type": "uint16"}]}
                    for mode, server in zip(MODES, servers, strict=True)
                ],
            }))
            proc = start_entry_point("collectors.modbus", config, log)
            try:
                # every device asked at least 40 times: 40 chances to write a line each
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                while min(server.requests for server in servers) < 40:
                    assert proc.poll() is None, log.read_text()
                    assert loop.time() < deadline, f"requests: {[s.requests for s in servers]}"
                    await asyncio.sleep(0.1)
            finally:
                stop_entry_point(proc, log)
        finally:
            for server in servers:
                await server.__aexit__(None, None, None)
    text = log.read_text()
    assert "Traceback" not in text and "Fatal error" not in text, text[:3000]
    errors = Counter(re.findall(r" ERROR +modbus .*?: ([\w-]+) \(tcp:", text))
    assert errors == {mode.replace("_", "-"): 1 for mode in MODES}, text
    lines = text.splitlines()
    # the start, one ERROR per device, one "opening the connection again" per silent link
    assert len(lines) <= 2 + 2 * len(MODES), text
    reasons = {r.device: r.reason for r in sink.received}
    assert reasons == {"byte-count-lie": "protocol error", "unknown-fc": "protocol error", "stall": "timeout",
                       "garbage": "timeout", "wrong-fc": "wrong function code"}
