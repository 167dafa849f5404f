"""The hand-off's optional `types` frame over a real Unix socket: in order with the readings, and
acknowledged (and ignored) by a forwarder sink that has no use for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.core.config import HandoffConfig
from collectors.core.handoff import HandoffClient, HandoffServer
from collectors.core.model import DeviceState, DeviceTypes, Reading, WriteRequest, WriteResult

pytestmark = pytest.mark.sim

TS = 1_764_316_800_000  # 2025-11-28T08:00:00Z: the hand-off drops timestamps outside 2000..2200


class OldSink:
    """A sink as it was before `types` existed."""

    def __init__(self) -> None:
        self.events: list[object] = []

    async def readings(self, collector: str, readings: list[Reading]) -> None:
        self.events.extend(readings)

    async def device_state(self, collector: str, state: DeviceState) -> None:
        self.events.append(state)

    def write_result(self, collector: str, result: WriteResult) -> None:
        raise AssertionError("no writes expected")


class TypedSink(OldSink):
    async def datatypes(self, collector: str, types: DeviceTypes) -> None:
        self.events.append((collector, types))


async def no_writes(request: WriteRequest) -> WriteResult:
    raise AssertionError("no writes expected")


@pytest.mark.parametrize("sink_class", [TypedSink, OldSink])
async def test_types_arrive_before_the_readings_they_describe(tmp_path: Path, sink_class: type[OldSink]) -> None:
    sink = sink_class()
    settings = HandoffConfig(socket=tmp_path / "h.sock", linger=0.001, batch_max=100)
    types = DeviceTypes("oven", {"mode": "int16", "zones": "int16[]"})
    async with HandoffServer(settings.socket, sink), HandoffClient(settings, "opcua", no_writes) as client:
        client.device_state(DeviceState("oven", True))
        client.device_types(types)
        client.publish([Reading("oven", "mode", -3, TS), Reading("oven", "zones", [1, 2], TS)])
        assert await client.drain(5)
    expected: list[object] = [DeviceState("oven", True), Reading("oven", "mode", -3, TS),
                              Reading("oven", "zones", [1, 2], TS)]
    if sink_class is TypedSink:
        expected.insert(1, ("opcua", types))
    assert sink.events == expected
