"""The hand-off over a real Unix socket: acknowledged batches, resend after loss, writes down."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collectors.core.config import HandoffConfig
from collectors.core.handoff import HandoffClient, HandoffServer
from collectors.core.model import DeviceState, Reading, WriteRequest, WriteResult

pytestmark = pytest.mark.sim


class Sink:
    def __init__(self) -> None:
        self.received: list[Reading] = []
        self.states: list[DeviceState] = []
        self.results: list[WriteResult] = []

    async def readings(self, collector: str, readings: list[Reading]) -> None:
        self.received.extend(readings)

    async def device_state(self, collector: str, state: DeviceState) -> None:
        self.states.append(state)

    def write_result(self, collector: str, result: WriteResult) -> None:
        self.results.append(result)


def _settings(tmp_path: Path) -> HandoffConfig:
    return HandoffConfig(socket=tmp_path / "h.sock", linger=0.001, batch_max=100)


async def _until(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_readings_arrive_in_order_and_are_acknowledged(tmp_path: Path) -> None:
    sink = Sink()

    async def no_writes(request: WriteRequest) -> WriteResult:
        raise AssertionError("no writes expected")

    settings = _settings(tmp_path)
    async with HandoffServer(settings.socket, sink), HandoffClient(settings, "modbus", no_writes) as client:
        client.publish(Reading("press-1", f"t{i % 7}", i, 1000 + i) for i in range(1000))
        client.device_state(DeviceState("press-1", False, "timeout"))
        assert await client.drain(5)
    assert [r.value for r in sink.received] == list(range(1000))
    assert sink.received[0].quality == "good"
    assert sink.states == [DeviceState("press-1", False, "timeout")]
    assert client.stats.acked == 1000


async def test_forwarder_restart_loses_nothing_acknowledged_and_resends_the_rest(tmp_path: Path) -> None:
    sink = Sink()

    async def no_writes(request: WriteRequest) -> WriteResult:
        raise AssertionError

    settings = _settings(tmp_path)
    async with HandoffClient(settings, "modbus", no_writes) as client:
        async with HandoffServer(settings.socket, sink):
            client.publish(Reading("d", "t", i, i) for i in range(500))
            assert await client.drain(5)
        # forwarder away: readings queue in the collector
        client.publish(Reading("d", "t", i, i) for i in range(500, 800))
        await asyncio.sleep(0.2)
        assert client.pending == 300
        async with HandoffServer(settings.socket, sink):
            assert await client.drain(10)
    assert [r.value for r in sink.received] == list(range(800))


async def test_writes_reach_the_collector_and_results_come_back(tmp_path: Path) -> None:
    sink = Sink()

    async def on_write(request: WriteRequest) -> WriteResult:
        return WriteResult(request.id, request.device, request.tag, request.value == 1, None)

    settings = _settings(tmp_path)
    async with HandoffServer(settings.socket, sink) as server, HandoffClient(settings, "modbus", on_write):
        await _until(lambda: server.collectors == ["modbus"])
        assert server.send_write("modbus", WriteRequest("w1", "press-1", "run", 1))
        assert not server.send_write("opcua", WriteRequest("w2", "oven", "sp", 1))
        await _until(lambda: sink.results)
    assert sink.results == [WriteResult("w1", "press-1", "run", True, None)]
