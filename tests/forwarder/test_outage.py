"""Broker outages, forwarder crashes and a full buffer: nothing acknowledged is lost, order is kept."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from collectors.core.model import Reading
from collectors.forwarder.app import Forwarder
from tests.forwarder.helpers import (
    ForwarderProcess,
    collector,
    config_dict,
    counter_readings,
    make_config,
    out_of_order,
    until,
    values_by_tag,
    wait_file,
)
from tests.support.broker import Mosquitto
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.sim

TAGS = ["temperature", "pressure", "run", "count"]


def received(subscriber: Subscriber) -> dict[str, list[int]]:
    with subscriber._lock:
        return values_by_tag(list(subscriber.messages))


def distinct(subscriber: Subscriber) -> set[int]:
    return {v for values in received(subscriber).values() for v in values}


OLD = ["temperature", "pressure", "run"]  # flowing before, during and after the outage
NEW = "count"  # starts once the broker is back: it has no backlog
NEW_BASE = 1_000_000


async def test_broker_outage_while_readings_flow_loses_nothing_and_keeps_each_tags_order(
    tmp_path: Path, durable_broker: Mosquitto, durable_subscriber: Subscriber
) -> None:
    config = make_config(tmp_path, durable_broker, qos=1, retain=True)
    sent = new_sent = 0
    ts0 = 1_764_316_800_000

    async def feed() -> None:  # 1,000 readings/s in 10 ms steps, until cancelled
        nonlocal sent
        while True:
            client.publish(counter_readings(sent, 10, OLD))
            sent += 10
            await asyncio.sleep(0.01)

    async def feed_new() -> None:  # 100 readings/s of a tag the backlog does not hold
        nonlocal new_sent
        while True:
            client.publish([Reading("press-1", NEW, NEW_BASE + new_sent, ts0 + new_sent)])
            new_sent += 1
            await asyncio.sleep(0.01)

    async with Forwarder(config) as forwarder, collector(config) as client:
        await until(lambda: forwarder.session.connected, 10, "the broker session")
        feeding = asyncio.create_task(feed())
        await asyncio.sleep(2)
        durable_broker.stop()
        await asyncio.sleep(10)  # the outage: 10 s at ~1,000 readings/s
        assert forwarder.buffer.backlog.pending > 5000, "the outage's readings wait in the disk backlog"
        durable_broker.start()
        await until(lambda: forwarder.buffer.online, 30, "the reconnect")
        backlog_end = sent  # the old tags' readings up to here were all in the backlog at the reconnect
        feeding_new = asyncio.create_task(feed_new())
        await asyncio.sleep(3)
        feeding.cancel()
        feeding_new.cancel()
        await asyncio.gather(feeding, feeding_new, return_exceptions=True)
        assert await client.drain(10)
        await until(lambda: len(distinct(durable_subscriber)) >= sent + new_sent, 60, f"all {sent} readings")
        await until(lambda: forwarder.buffer.pending == 0, 10, "the buffer to empty")
        assert forwarder.buffer.stats.dropped == 0
        assert forwarder.session.connects == 2
    assert sent >= 10_000 and new_sent > 0
    assert distinct(durable_subscriber) == set(range(sent)) | set(range(NEW_BASE, NEW_BASE + new_sent)), (
        "every reading arrived"
    )
    by_tag = received(durable_subscriber)
    for tag, values in by_tag.items():
        assert out_of_order(values) == [], f"{tag}: a reading arrived after a newer one of its tag"
    # the new tag did not wait for the replay: its first reading came before the backlog's last
    with durable_subscriber._lock:
        order = [json.loads(m.payload)["value"] for m in durable_subscriber.messages
                 if m.topic.startswith("fieldgate/line3/press-1/")]
    first_new = order.index(NEW_BASE)
    last_replayed = max(i for i, v in enumerate(order) if v < backlog_end)
    assert first_new < last_replayed, "live readings of a tag without backlog go out during the replay"
    # retain: true: the retained message of every tag is its newest reading, not a replayed one
    fresh = Subscriber(durable_broker.host, durable_broker.port, "fieldgate/line3/press-1/+")
    try:
        retained = await asyncio.to_thread(fresh.wait_for, lambda m: m.retain, 10, 4)
    finally:
        fresh.close()
    newest = {tag: max(values) for tag, values in by_tag.items()}
    assert {m.topic.rsplit("/", 1)[1]: json.loads(m.payload)["value"] for m in retained} == newest


async def test_sigkill_under_always_loses_nothing_acknowledged(
    tmp_path: Path, durable_broker: Mosquitto, durable_subscriber: Subscriber
) -> None:
    conf = config_dict(tmp_path, durable_broker, qos=1, keepalive="1s", buffer={"durability": "always"})
    socket = Path(conf["handoff"]["socket"])
    forwarder = ForwarderProcess(tmp_path, conf).start()
    try:
        wait_file(socket)
        async with collector(make_config(tmp_path, durable_broker)) as client:
            # 1. broker up, readings flowing, kill -9 right after the hand-off acknowledged them
            client.publish(counter_readings(0, 3000, TAGS))
            assert await client.drain(15)
            forwarder.kill()
            # the broker publishes the last will: offline, retained
            await asyncio.to_thread(
                durable_subscriber.wait_for,
                lambda m: m.topic == "fieldgate/line3/status" and m.payload == b"offline", 15,
            )
            # 2. broker away: what the forwarder acknowledges exists only on its disk; kill -9 again
            durable_broker.stop()
            forwarder.start()
            client.publish(counter_readings(3000, 3000, TAGS))
            assert await client.drain(15)
            forwarder.kill()
        # 3. both back: the restarted forwarder sends everything
        durable_broker.start()
        forwarder.start()
        await until(lambda: len(distinct(durable_subscriber)) >= 6000, 60, "all 6000 readings")
        assert distinct(durable_subscriber) == set(range(6000))
        for tag, values in received(durable_subscriber).items():
            assert out_of_order(values) == [], f"{tag} out of order"
        assert forwarder.stop() == 0
    finally:
        forwarder.kill()
    log = forwarder.log.read_text()
    assert "readings from a previous run to send" in log


async def test_full_buffer_drops_the_oldest_and_counts_them(
    tmp_path: Path,
    durable_broker: Mosquitto,
    durable_subscriber: Subscriber,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config(tmp_path, durable_broker, qos=1, buffer={"max_bytes": "64KiB"})
    total = 20_000
    durable_broker.stop()
    caplog.set_level(logging.WARNING, logger="collectors.forwarder.buffer")
    async with Forwarder(config) as forwarder, collector(config) as client:
        for start in range(0, total, 1000):
            client.publish(counter_readings(start, 1000, TAGS))
            assert await client.drain(10)
        dropped = forwarder.buffer.stats.dropped
        assert 0 < dropped < total
        assert forwarder.buffer.disk_bytes <= 64 * 1024
        assert f"fieldgate_forwarder_dropped_readings_total {dropped}" in forwarder.metrics.render()
        full = [r for r in caplog.records if "buffer full" in r.getMessage()]
        assert len(full) == 1, "one log line per episode, not per reading"
        durable_broker.start()
        await until(lambda: forwarder.buffer.pending == 0, 60, "the backlog to drain")
        await until(lambda: len(distinct(durable_subscriber)) >= total - dropped, 30, "the kept readings")
    got = distinct(durable_subscriber)
    assert got == set(range(dropped, total)), "exactly the oldest were dropped, every newer one arrived"


async def test_buffered_readings_survive_a_clean_restart(
    tmp_path: Path, durable_broker: Mosquitto, durable_subscriber: Subscriber
) -> None:
    config = make_config(tmp_path, durable_broker, qos=1)
    durable_broker.stop()
    async with Forwarder(config) as forwarder, collector(config) as client:
        client.publish(counter_readings(0, 2000, TAGS))
        client.publish([Reading("press-1", "temperature", 1, 1_764_316_700_001),
                        Reading("press-1", "temperature", 2, 1_764_316_700_002)])
        assert await client.drain(10)
        assert forwarder.buffer.pending == 2002
    durable_broker.start()
    async with Forwarder(config) as forwarder:
        assert forwarder.buffer.pending == 2002
        await until(lambda: forwarder.buffer.pending == 0, 30, "the replay")
    await until(lambda: len(distinct(durable_subscriber)) >= 2000, 30, "the replayed readings")
    assert distinct(durable_subscriber) >= set(range(2000))


async def test_under_always_the_collector_is_acknowledged_only_once_the_disk_has_flushed(
    tmp_path: Path, durable_broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut keeps only what reached the device: under `always` the hand-off's ack waits
    for the fsync of what was written (a slow flash here: the flush is held)."""
    import threading

    from collectors.forwarder.buffer import Buffer

    held = threading.Event()
    flushes: list[int] = []
    real_fsync = Buffer.fsync

    def slow_fsync(handles: list[int]) -> None:
        held.wait(30)
        flushes.append(len(handles))
        real_fsync(handles)

    monkeypatch.setattr(Buffer, "fsync", staticmethod(slow_fsync))
    config = make_config(tmp_path, durable_broker, qos=1, buffer={"durability": "always"})
    async with Forwarder(config), collector(config) as client:
        for start in range(0, 400, 40):  # ten batches while the first flush is held
            client.publish(counter_readings(start, 40, TAGS))
            await asyncio.sleep(0.02)
        assert not await client.drain(1.0), "acknowledged before the flush"
        held.set()
        assert await client.drain(15)
        assert flushes and all(count >= 1 for count in flushes)
