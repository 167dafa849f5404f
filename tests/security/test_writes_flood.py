"""A broker client floods the writes: one Sparkplug DCMD with 4,000 metrics, and odd values.

Polls go on (the widest gap between two polls of the device is measured and printed), the
excess is refused at once and counted, and nothing that is refused reaches the device.
pymodbus' server (recording every request) -> Modbus collector -> forwarder -> Mosquitto, in one
process (tests/e2e/writes_plant.py).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from collectors.forwarder import sparkplug_b_pb2 as pb
from tests.e2e.writes_plant import DEVICE, SETPOINTS, Plant, plant
from tests.support import sparkplug as sp
from tests.support.broker import Mosquitto
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.security

GROUP, NODE = "plant1", "line3"
DCMD = f"spBv1.0/{GROUP}/DCMD/{NODE}/{DEVICE}"
# As many metrics as fit in the forwarder's 64 KiB command limit (a larger DCMD is refused whole,
# tests/forwarder/test_commands.py): far more than the 256 one DCMD may write.
FLOOD = 4_000


async def born(p: Plant) -> None:
    topic = f"spBv1.0/{GROUP}/DBIRTH/{NODE}/{DEVICE}"
    await asyncio.to_thread(p.subscriber.wait_for, lambda m: m.topic == topic, 30.0)


async def settled(p: Plant, within: float = 60.0) -> None:
    """Until the forwarder waits for no write answer any more."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while p.forwarder._pending_writes:
        assert loop.time() < deadline, f"{len(p.forwarder._pending_writes)} writes still unanswered"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("write_delay", [0.0, 0.05], ids=["fast-device", "device-50ms-a-write"])
async def test_a_dcmd_of_4000_metrics_does_not_stop_the_polls(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, write_delay: float
) -> None:
    """Before: 10,000 such writes went ahead of every poll, which stopped for 11 s. Now the DCMD is
    cut at 256 metrics, a tag takes 4 pending writes, and a poll read goes between every 4 writes."""
    async with plant(tmp_path, broker, subscriber, format="sparkplug", write_delay=write_delay) as p:
        await born(p)
        metrics = [sp.command_metric(1 + i, sp.UINT16, name=SETPOINTS[i % len(SETPOINTS)]) for i in range(FLOOD)]
        start = time.monotonic()
        await asyncio.to_thread(subscriber.publish, DCMD, sp.command(metrics))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while p.forwarder.stats.writes == 0:
            assert loop.time() < deadline, "the DCMD did not arrive"
            await asyncio.sleep(0.02)
        await settled(p)
        await asyncio.sleep(0.5)  # polls after the flood, so the gap measured is the flood's
        gap = p.device.poll_gap(start, time.monotonic())
        writer, stats = p.collector.writer, p.forwarder.format.stats  # type: ignore[attr-defined]
        taken = len(p.device.writes())
        print(f"\nDCMD of {FLOOD:,} metrics, device {write_delay * 1000:.0f} ms a write: widest poll gap "
              f"{gap * 1000:.0f} ms (poll 50 ms); "
              f"device took {taken} writes; forwarder refused {stats.commands_refused} metrics")
        assert gap < 1.2, f"polls stopped for {gap:.1f}s during the DCMD"
        print(f"collector: {writer.ok} ok, {writer.busy} busy, {writer.expired} expired")
        assert stats.commands_refused == FLOOD - 256
        assert p.forwarder.stats.writes == 256
        assert writer.ok + writer.busy + writer.expired == 256
        assert writer.busy > 0
        assert taken == writer.ok


async def test_a_dcmd_boolean_takes_only_0_and_1(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    """Before: a Boolean metric with int value 2 wrote True, while json `/set` refused 2."""
    async with plant(tmp_path, broker, subscriber, format="sparkplug") as p:
        await born(p)
        two = pb.Payload(metrics=[pb.Payload.Metric(name="run", datatype=pb.Boolean, int_value=2)])
        await asyncio.to_thread(subscriber.publish, DCMD, two.SerializeToString())
        stats = p.forwarder.format.stats  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while stats.commands_refused == 0 and not p.forwarder.stats.writes:
            assert loop.time() < deadline, "the DCMD did not arrive"
            await asyncio.sleep(0.02)
        await settled(p)
        assert stats.commands_refused == 1
        assert p.device.written(5, 0) == []

        one = pb.Payload(metrics=[pb.Payload.Metric(name="run", datatype=pb.Boolean, int_value=1)])
        await asyncio.to_thread(subscriber.publish, DCMD, one.SerializeToString())
        deadline = loop.time() + 15
        while not p.device.written(5, 0):
            assert loop.time() < deadline, "the DCMD Boolean 1 was not written"
            await asyncio.sleep(0.02)
        assert p.device.written(5, 0) == [True]
