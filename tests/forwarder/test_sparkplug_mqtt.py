"""Sparkplug B end to end: readings through a real hand-off, a real Mosquitto, decoded independently.

Every payload is read with tests/support/sparkplug.py (a hand-written protobuf wire decoder),
never with the forwarder's generated classes: what is checked is what a host would read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from collectors.core.model import DeviceState, Reading, WriteRequest, WriteResult
from collectors.forwarder.app import Forwarder
from tests.forwarder.helpers import ForwarderProcess, collector, config_dict, make_config, until
from tests.support import sparkplug as sp
from tests.support.broker import Mosquitto
from tests.support.mqtt import Message, Subscriber
from tests.support.proxy import TcpProxy

pytestmark = pytest.mark.sim

GROUP, NODE = "plant1", "line3"
TS = 1_764_316_800_000
NCMD = f"spBv1.0/{GROUP}/NCMD/{NODE}"
STATE = "spBv1.0/STATE/scada-a"


@dataclass
class Spb:
    """One Sparkplug message of our edge node, decoded."""

    kind: str
    device: str | None
    payload: sp.Payload
    message: Message

    @property
    def seq(self) -> int | None:
        return self.payload.seq


def node_messages(subscriber: Subscriber) -> list[Spb]:
    out = []
    for message in list(subscriber.messages):
        levels = message.topic.split("/")
        if levels[0] == "spBv1.0" and levels[1] == GROUP and levels[3] == NODE and "CMD" not in levels[2]:
            device = levels[4] if len(levels) > 4 else None
            out.append(Spb(levels[2], device, sp.decode(message.payload), message))
    return out


async def wait_for(subscriber: Subscriber, predicate: Callable[[Spb], bool], count: int = 1,
                   within: float = 15.0) -> list[Spb]:
    def matches(message: Message) -> bool:
        levels = message.topic.split("/")
        if levels[0] != "spBv1.0" or len(levels) < 4 or levels[1] != GROUP or levels[3] != NODE:
            return False
        spb = Spb(levels[2], levels[4] if len(levels) > 4 else None, sp.decode(message.payload), message)
        return predicate(spb)

    found = await asyncio.to_thread(subscriber.wait_for, matches, within, count)
    return [m for m in node_messages(subscriber) if any(m.message is f for f in found)]


class Host:
    """What a Sparkplug host keeps per device: alias -> (name, datatype), from the last DBIRTH."""

    def __init__(self) -> None:
        self.aliases: dict[str, dict[int, tuple[str, int]]] = {}

    def birth(self, spb: Spb) -> None:
        assert spb.device is not None
        self.aliases[spb.device] = {}
        for metric in spb.payload.metrics:
            assert metric.name and metric.alias is not None and metric.datatype, metric
            self.aliases[spb.device][metric.alias] = (metric.name, metric.datatype)

    def values(self, spb: Spb) -> list[tuple[str, Any, bool]]:
        """(tag, value, is_historical) of a DDATA, which must use aliases only."""
        assert spb.device is not None
        out = []
        for metric in spb.payload.metrics:
            assert metric.name is None and metric.alias is not None, "DDATA carries aliases, not names"
            name, datatype = self.aliases[spb.device][metric.alias]
            value = sp.signed(metric.value, datatype) if metric.value_field in (10, 11) else metric.value
            out.append((name, value, metric.is_historical))
        return out


def replay(messages: list[Spb]) -> tuple[Host, list[tuple[str, str, Any, bool]]]:
    """Read messages as a host would; every DDATA must follow its device's DBIRTH."""
    host, seen = Host(), []
    born: set[str] = set()
    for spb in messages:
        if spb.kind == "NBIRTH":
            born.clear()
        elif spb.kind == "DBIRTH":
            host.birth(spb)
            assert spb.device is not None
            born.add(spb.device)
        elif spb.kind == "DDEATH":
            born.discard(spb.device or "")
        elif spb.kind == "DDATA":
            assert spb.device in born, f"DDATA of {spb.device} before its DBIRTH"
            seen += [(spb.device, *v) for v in host.values(spb)]
    return host, seen


def bdseq(spb: Spb) -> int:
    value = spb.payload.metric("bdSeq").value
    assert isinstance(value, int)
    return value


def state(online: bool) -> bytes:
    return orjson.dumps({"online": online, "timestamp": time.time_ns() // 1_000_000})


async def test_births_data_device_outages_and_seq_wrap(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    config = make_config(tmp_path, broker, format="sparkplug")
    rounds = 130  # DDATA + DDEATH + DBIRTH each: past 255 twice
    async with Forwarder(config), collector(config) as client:
        await wait_for(subscriber, lambda m: m.kind == "NBIRTH")
        for i in range(rounds):
            client.publish([Reading("press-1", "count", i, TS + i),
                            Reading("press-1", "temperature", i / 2, TS + i)])
            client.device_state(DeviceState("press-1", False, "timeout"))
            client.device_state(DeviceState("press-1", True))
        await wait_for(subscriber, lambda m: m.kind == "DDATA", count=rounds)
        await wait_for(subscriber, lambda m: m.kind == "DBIRTH", count=rounds + 2)  # + oven-2
    messages = [m for m in node_messages(subscriber) if m.kind != "NDEATH"]
    assert messages[0].kind == "NBIRTH" and messages[0].seq == 0
    assert messages[0].payload.metric("Node Control/Rebirth").value is False
    assert [m.seq for m in messages] == [i % 256 for i in range(len(messages))]  # no gap, wraps at 256
    assert len(messages) > 300
    assert all(m.message.qos == 0 for m in messages)
    first_birth = next(m for m in messages if m.kind == "DBIRTH")
    assert {m.name for m in first_birth.payload.metrics} == {"temperature", "pressure", "run", "count"}
    _, seen = replay(messages)
    assert [v for _, tag, v, _ in seen if tag == "count"] == list(range(rounds))
    assert [v for _, tag, v, _ in seen if tag == "temperature"] == [i / 2 for i in range(rounds)]
    assert not any(hist for *_, hist in seen)
    kinds = [m.kind for m in messages if m.device == "press-1"]
    assert kinds[:4] == ["DBIRTH", "DDATA", "DDEATH", "DBIRTH"]
    # Data carries the reading's timestamp, births the current value.
    ddata = [m for m in messages if m.kind == "DDATA"]
    assert [metric.timestamp for metric in ddata[5].payload.metrics] == [TS + 5, TS + 5]
    last_birth = [m for m in messages if m.kind == "DBIRTH"][-1]
    assert last_birth.payload.metric("count").value == rounds - 1


async def test_ndeath_will_matches_the_nbirth_and_bdseq_survives_restarts(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    forwarder = ForwarderProcess(tmp_path, config_dict(tmp_path, broker, format="sparkplug")).start()
    try:
        (first,) = await wait_for(subscriber, lambda m: m.kind == "NBIRTH", within=30)
        forwarder.kill()  # SIGKILL: the broker publishes the will
        (death,) = await wait_for(subscriber, lambda m: m.kind == "NDEATH", within=10)
        assert bdseq(death) == bdseq(first)
        assert death.message.qos == 1 and death.seq is None
        forwarder.start()
        births = await wait_for(subscriber, lambda m: m.kind == "NBIRTH", count=2, within=30)
        assert bdseq(births[1]) == (bdseq(first) + 1) % 256
        assert births[1].seq == 0
        assert forwarder.stop() == 0  # a clean stop says NDEATH itself, with its session's bdSeq
        deaths = await wait_for(subscriber, lambda m: m.kind == "NDEATH", count=2, within=10)
        assert bdseq(deaths[1]) == bdseq(births[1])
    finally:
        forwarder.kill()


async def test_rebirth_on_ncmd(tmp_path: Path, broker: Mosquitto, subscriber: Subscriber) -> None:
    config = make_config(tmp_path, broker, format="sparkplug")
    async with Forwarder(config) as forwarder, collector(config) as client, collector(config, "opcua") as opcua:
        client.publish([Reading("press-1", "count", 7, TS)])
        opcua.publish([Reading("oven-2", "setpoint", 180.5, TS)])
        (nbirth,) = await wait_for(subscriber, lambda m: m.kind == "NBIRTH")
        assert await client.drain(10) and await opcua.drain(10)
        await until(lambda: forwarder.buffer.pending == 0, 10, "the readings to be published")
        rebirth = sp.command([sp.command_metric(True, sp.BOOLEAN, name="Node Control/Rebirth")])
        await asyncio.to_thread(subscriber.publish, NCMD, rebirth, 0)
        await wait_for(subscriber, lambda m: m.kind == "DBIRTH" and m.seq == 2, count=2)
        client.publish([Reading("press-1", "count", 8, TS + 1)])
        await wait_for(subscriber, lambda m: m.kind == "DDATA" and m.payload.metrics[0].timestamp == TS + 1)
    messages = [m for m in node_messages(subscriber) if m.kind != "NDEATH"]  # the goodbye at the end
    answer = messages[max(i for i, m in enumerate(messages) if m.kind == "NBIRTH"):]
    assert [m.kind for m in answer] == ["NBIRTH", "DBIRTH", "DBIRTH", "DDATA"]
    assert [m.seq for m in answer] == [0, 1, 2, 3]
    assert bdseq(answer[0]) == bdseq(nbirth)  # same session, same bdSeq
    reborn = {m.device: m.payload for m in answer[1:3]}
    assert reborn["press-1"].metric("count").value == 7
    assert reborn["oven-2"].metric("setpoint").value == 180.5


async def test_primary_host_state_gates_births_and_its_absence_is_bridged_with_history(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    config = make_config(tmp_path, broker, format="sparkplug", primary_host="scada-a")
    async with Forwarder(config) as forwarder, collector(config) as client:
        client.publish([Reading("press-1", "count", i, TS + i) for i in range(10)])
        await until(lambda: forwarder.session.connected, 10, "the session")
        await asyncio.sleep(1.0)
        assert node_messages(subscriber) == []  # no birth before the primary host is online
        await asyncio.to_thread(subscriber.publish, STATE, state(True), 1, True)
        (nbirth,) = await wait_for(subscriber, lambda m: m.kind == "NBIRTH")
        await wait_for(subscriber, lambda m: m.kind == "DDATA" and m.payload.metrics[-1].timestamp == TS + 9)
        client.publish([Reading("press-1", "count", 10, TS + 10)])
        await wait_for(subscriber, lambda m: m.kind == "DDATA" and m.payload.metrics[-1].timestamp == TS + 10)

        await asyncio.to_thread(subscriber.publish, STATE, state(False), 1, True)
        (death,) = await wait_for(subscriber, lambda m: m.kind == "NDEATH")
        assert bdseq(death) == bdseq(nbirth)
        await until(lambda: not forwarder.format.ready, 10, "the session to end")
        client.publish([Reading("press-1", "count", i, TS + i) for i in range(11, 20)])
        await until(lambda: forwarder.session.connected, 10, "the new session")
        await asyncio.sleep(0.5)
        assert [m.kind for m in node_messages(subscriber)].count("NBIRTH") == 1  # waiting again
        await asyncio.to_thread(subscriber.publish, STATE, state(True), 1, True)
        births = await wait_for(subscriber, lambda m: m.kind == "NBIRTH", count=2)
        await wait_for(subscriber, lambda m: m.kind == "DDATA" and m.payload.metrics[-1].timestamp == TS + 19)
    assert bdseq(births[1]) == (bdseq(nbirth) + 1) % 256
    _, seen = replay(node_messages(subscriber))
    counts = [(value, hist) for _, tag, value, hist in seen if tag == "count"]
    assert counts == [(i, True) for i in range(10)] + [(10, False)] + [(i, True) for i in range(11, 20)]


async def test_readings_of_a_broker_outage_arrive_afterwards_as_history_in_order(
    tmp_path: Path, broker: Mosquitto
) -> None:
    subscriber = Subscriber(broker.host, broker.port, "spBv1.0/#")
    async with TcpProxy(broker.host, broker.port) as proxy:
        config = make_config(tmp_path, broker, format="sparkplug", port=proxy.port)
        try:
            async with Forwarder(config) as forwarder, collector(config) as client:
                client.publish([Reading("press-1", "count", i, TS + i) for i in range(5)])
                (nbirth,) = await wait_for(subscriber, lambda m: m.kind == "NBIRTH")
                await wait_for(subscriber, lambda m: m.kind == "DDATA"
                               and m.payload.metrics[-1].timestamp == TS + 4)
                proxy.refuse()  # so the forwarder cannot come back before the new subscriber is there
                subscriber.close()
                await asyncio.to_thread(broker.stop)
                await until(lambda: not forwarder.session.connected, 10, "the loss to be noticed")
                for i in range(5, 305):
                    client.publish([Reading("press-1", "count", i, TS + i)])
                    if i % 50 == 0:
                        await asyncio.sleep(0.05)
                assert await client.drain(10)
                await asyncio.to_thread(broker.start)
                subscriber = Subscriber(broker.host, broker.port, "spBv1.0/#")
                proxy.resume()
                births = await wait_for(subscriber, lambda m: m.kind == "NBIRTH", within=30)
                (dbirth,) = await wait_for(subscriber, lambda m: m.kind == "DBIRTH")
                client.publish([Reading("press-1", "count", 305, TS + 305)])
                await wait_for(subscriber, lambda m: m.kind == "DDATA" and any(
                    metric.timestamp == TS + 305 for metric in m.payload.metrics), within=20)
                await until(lambda: forwarder.buffer.pending == 0, 10, "the backlog to drain")
                await asyncio.sleep(0.3)
        finally:
            subscriber.close()
    assert bdseq(births[0]) != bdseq(nbirth)  # a new session (attempts while refused used some bdSeqs)
    # The birth carries the newest value (taken during the outage): what the host shows live.
    assert (dbirth.payload.metric("count").value, dbirth.payload.metric("count").timestamp) == (304, TS + 304)
    _, seen = replay(node_messages(subscriber))
    history = [value for _, tag, value, hist in seen if tag == "count" and hist]
    live = [value for _, tag, value, hist in seen if tag == "count" and not hist]
    # Readings 5..304 were taken while the broker was away: all of them, as history, in order.
    outage = [v for v in history if 5 <= v <= 304]
    assert outage == list(range(5, 305))
    assert live == [305]


async def test_a_silent_link_loss_resends_the_last_window_as_history(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    """QoS 0 written into a dead link is lost without an error until keep-alive notices it."""
    async with TcpProxy(broker.host, broker.port) as proxy:
        config = make_config(tmp_path, broker, format="sparkplug", port=proxy.port, keepalive="1s")
        async with Forwarder(config) as forwarder, collector(config) as client:
            (nbirth,) = await wait_for(subscriber, lambda m: m.kind == "NBIRTH")
            value = 0

            async def feed(seconds: float) -> None:
                nonlocal value
                end = asyncio.get_running_loop().time() + seconds
                while asyncio.get_running_loop().time() < end:
                    client.publish([Reading("press-1", "count", value, TS + value)])
                    value += 1
                    await asyncio.sleep(0.02)

            await feed(1.0)
            proxy.blackhole()  # the link dies silently: the forwarder keeps writing into it
            noticed = asyncio.create_task(until(lambda: not forwarder.session.connected, 15, "the loss"))
            while not noticed.done():
                await feed(0.1)
            await noticed
            lost_from = value
            proxy.drop()  # the broker's side goes too: it publishes the will now
            (death,) = await wait_for(subscriber, lambda m: m.kind == "NDEATH")
            proxy.resume()
            await feed(0.5)
            await wait_for(subscriber, lambda m: m.kind == "NBIRTH", count=2, within=20)
            await feed(0.3)
            last = value - 1
            await wait_for(subscriber, lambda m: m.kind == "DDATA" and any(
                metric.timestamp == TS + last for metric in m.payload.metrics), within=20)
    assert bdseq(death) == bdseq(nbirth)
    _, seen = replay(node_messages(subscriber))
    arrived = {v for _, tag, v, _ in seen if tag == "count"}
    assert arrived == set(range(value)), f"missing: {sorted(set(range(value)) - arrived)[:20]}"
    history = [v for _, tag, v, hist in seen if tag == "count" and hist]
    assert history and min(history) < lost_from  # what went into the dead link came again, as history


async def test_dcmd_writes_reach_the_collector_and_non_writable_tags_are_refused(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    config = make_config(tmp_path, broker, format="sparkplug")
    asked: list[WriteRequest] = []
    clients: list[Any] = []

    async def on_write(request: WriteRequest) -> WriteResult:
        """As the Modbus collector does: write, read back, report what the device now holds."""
        asked.append(request)
        clients[0].publish([Reading(request.device, request.tag, request.value, time.time_ns() // 1_000_000)])
        return WriteResult(request.id, request.device, request.tag, True)

    async with Forwarder(config) as forwarder, collector(config, on_write=on_write) as client:
        clients.append(client)
        client.publish([Reading("press-1", "run", False, TS), Reading("press-1", "count", 3, TS)])
        (birth,) = await wait_for(subscriber, lambda m: m.kind == "DBIRTH")
        dcmd = f"spBv1.0/{GROUP}/DCMD/{NODE}/press-1"
        run_alias = birth.payload.metric("run").alias
        await asyncio.to_thread(subscriber.publish, dcmd, sp.command([
            sp.command_metric(5, sp.UINT16, name="count"),  # not writable: refused
        ]), 0)
        await asyncio.to_thread(subscriber.publish, dcmd, sp.command([
            sp.command_metric(True, sp.BOOLEAN, alias=run_alias),
        ]), 0)
        await until(lambda: len(asked) >= 1, 10, "the write at the collector")
        answer = await wait_for(subscriber, lambda m: m.kind == "DDATA" and any(
            metric.alias == run_alias and metric.value is True for metric in m.payload.metrics))
        await asyncio.sleep(0.3)
        exposed = forwarder.metrics.render()
    assert [(r.device, r.tag, r.value) for r in asked] == [("press-1", "run", True)]
    assert "fieldgate_forwarder_sparkplug_commands_refused_total 1\n" in exposed
    host = Host()
    host.birth(birth)
    assert ("run", True, False) in host.values(answer[-1])
