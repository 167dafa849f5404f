"""A new slice taken in place by the OPC UA collector: only the changed device's session and
subscription are made anew; the other device keeps its session and its readings keep flowing."""

from __future__ import annotations

import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from collectors.core.model import Quality
from collectors.opcua.collector import OpcuaCollector
from collectors.opcua.config import OpcuaCollectorConfig, OpcuaDevice
from collectors.opcua.simulator import OpcuaSimulator
from tests.opcua.support import running_collector
from tests.support.broker import free_port

pytestmark = pytest.mark.sim

PUBLISH_S = 0.1


def device(name: str, *tags: str) -> dict[str, Any]:
    every = {
        "temperature": {"name": "temperature", "node": "ns=2;s=Oven.Temperature",
                        "simulate": {"kind": "ramp", "min": 0, "max": 100, "period": "2s"}},
        "batch": {"name": "batch", "node": "ns=2;s=Oven.Batch",
                  "simulate": {"kind": "counter", "min": 0, "max": 1000000, "step": 5}},
    }
    return {"name": name, "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{free_port()}",
            "subscription": {"publishing_interval": "100ms", "sampling_interval": "50ms"},
            "tags": [every[t] for t in tags]}


def slice_of(collector: OpcuaCollector, devices: list[dict[str, Any]]) -> OpcuaCollectorConfig:
    return OpcuaCollectorConfig.model_validate({**collector.config.model_dump(), "devices": devices})


async def test_editing_one_devices_tags_keeps_the_other_devices_session(tmp_path: Path) -> None:
    a = device("a", "temperature")
    b_full = device("b", "temperature", "batch")
    b = {**b_full, "tags": b_full["tags"][:1]}
    served = [OpcuaDevice.model_validate(d) for d in (a, b_full)]
    async with OpcuaSimulator(served, tick=0.05), running_collector([a, b], tmp_path) as (collector, sink):
        await sink.wait_for(lambda r: r.device == "a" and r.quality == Quality.GOOD, within=20, count=5)
        await sink.wait_for(lambda r: r.device == "b" and r.quality == Quality.GOOD, within=20)
        link = collector.sessions["a"]
        session = link.reader.session if link.reader else None
        failures = link.failures
        reloaded_at = time.time() * 1000
        collector.reload(slice_of(collector, [a, b_full]))
        await sink.wait_for(lambda r: r.device == "b" and r.tag == "batch" and r.quality == Quality.GOOD,
                            within=20)
        live_ms = time.time() * 1000 - reloaded_at
        await sink.wait_for(lambda r: r.device == "a" and r.ts_ms > reloaded_at + 1000, within=20)
        assert collector.sessions["a"] is link and link.failures == failures
        assert link.reader is not None and link.reader.session is session  # no new session
        assert collector.reloaded == 1
    stamps = sorted({r.ts_ms for r in sink.got if r.device == "a" and r.tag == "temperature"
                     and reloaded_at - 1000 <= r.ts_ms <= reloaded_at + 1000})
    gap = max(y - x for x, y in pairwise(stamps)) / 1000
    print(f"\nwidest gap of the untouched device around the reload: {gap * 1000:.0f} ms; "
          f"new tag live after {live_ms:.0f} ms")
    assert all(r.quality == Quality.GOOD for r in sink.got if r.device == "a")
    assert gap <= 2 * PUBLISH_S + 0.05, f"device a's readings stopped for {gap * 1000:.0f} ms"
