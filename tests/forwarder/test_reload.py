"""The forwarder takes a new catalog in place on SIGHUP: the same process, the same MQTT session
(one CONNECT at the broker, no offline/NDEATH), the hand-off connection kept, no reading lost;
the new tag's readings published, the removed tag's refused; Sparkplug births only the changed
devices (DBIRTH / DDEATH), seq going on; json clears the retained message of a removed tag.

A real forwarder process, a real Mosquitto (whose log counts the CONNECTs), and a collector
handing off over the real socket, as the other forwarder tests do.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from collectors.core.handoff import HandoffClient
from collectors.core.model import Reading
from collectors.forwarder.config import ForwarderConfig
from tests.forwarder.helpers import ForwarderProcess, collector, config_dict, until, wait_file
from tests.support import sparkplug as sp
from tests.support.broker import Mosquitto
from tests.support.mqtt import Message, Subscriber

pytestmark = pytest.mark.sim

TS = 1_764_316_800_000
PREFIX = "fieldgate/line3"
SPB = "spBv1.0/plant1"


def connects(broker: Mosquitto, client_id: str) -> int:
    """CONNECTs the broker accepted from `client_id` (Mosquitto logs each one)."""
    return broker.log.read_text(errors="replace").count(f" as {client_id} (")


def rewrite(process: ForwarderProcess, config: dict[str, Any]) -> None:
    """The supervisor's way: the new slice by rename (never read half written), then SIGHUP."""
    tmp = process.config_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(config))
    os.replace(tmp, process.config_file)
    assert process.process is not None
    process.process.send_signal(signal.SIGHUP)


class Feeder:
    """A collector handing off one reading per tag every 20 ms, each tag counting up from 0."""

    def __init__(self, client: HandoffClient, device: str, tags: list[str]) -> None:
        self.client = client
        self.device = device
        self.tags = list(tags)
        self.sent: dict[str, int] = {}  # tag -> readings handed off so far
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            for tag in list(self.tags):
                n = self.sent.get(tag, 0)
                self.client.publish([Reading(self.device, tag, n, TS + n)])
                self.sent[tag] = n + 1
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="test-feeder")

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def json_values(messages: list[Message], topic: str) -> list[int]:
    return [m.json()["value"] for m in messages if m.topic == topic and m.payload]


def log_has(process: ForwarderProcess, text: str) -> bool:
    return text in process.log.read_text(errors="replace")


def with_catalog(base: dict[str, Any], devices: list[dict[str, Any]]) -> dict[str, Any]:
    config = copy.deepcopy(base)
    config["devices"] = devices
    ForwarderConfig.model_validate(config)  # the test's own configs are valid
    return config


PRESS = {"name": "press-1", "collector": "modbus", "tags": [
    {"name": "temperature", "unit": "degC", "type": "float32"},
    {"name": "count", "type": "uint16"},
]}
PRESS_EDITED = {"name": "press-1", "collector": "modbus", "tags": [
    {"name": "temperature", "unit": "degC", "type": "float32"},
    {"name": "level", "unit": "cm", "type": "uint16"},  # added; `count` removed
]}
OVEN = {"name": "oven-2", "collector": "modbus", "tags": [{"name": "heat", "unit": "degC", "type": "float32"}]}
MILL = {"name": "mill-3", "collector": "modbus", "tags": [{"name": "speed", "unit": "rpm", "type": "uint16"}]}


async def test_json_catalog_change_keeps_the_session_and_loses_nothing(tmp_path: Path, broker: Mosquitto) -> None:
    base = config_dict(tmp_path, broker, retain=True)
    config = with_catalog(base, [PRESS, OVEN])
    sub = Subscriber(broker.host, broker.port, f"{PREFIX}/#")
    forwarder = ForwarderProcess(tmp_path, config).start()
    try:
        wait_file(Path(config["handoff"]["socket"]))
        async with collector(ForwarderConfig.model_validate(config)) as client:
            feeder = Feeder(client, "press-1", ["temperature", "count"])
            feeder.start()
            oven = Feeder(client, "oven-2", ["heat"])
            oven.start()
            await until(lambda: len(json_values(sub.messages, f"{PREFIX}/press-1/count")) >= 10, 15, "count readings")
            pid = forwarder.process.pid if forwarder.process else None

            rewrite(forwarder, with_catalog(base, [PRESS_EDITED, OVEN]))
            await until(lambda: log_has(forwarder, "new catalog applied in place"), 15, "the reload")
            cleared = sub.wait_for(lambda m: m.topic == f"{PREFIX}/press-1/count" and m.payload == b"", 10)[0]
            feeder.tags.append("level")
            await until(lambda: len(json_values(sub.messages, f"{PREFIX}/press-1/level")) >= 10, 15, "level readings")
            await feeder.stop()
            await oven.stop()
            sent_temperature, sent_heat = feeder.sent["temperature"], oven.sent["heat"]
            await until(lambda: len(json_values(sub.messages, f"{PREFIX}/press-1/temperature")) >= sent_temperature,
                        15, "every temperature reading")
            await until(lambda: len(json_values(sub.messages, f"{PREFIX}/oven-2/heat")) >= sent_heat,
                        15, "every heat reading")
            assert client.stats.connected and client.stats.reconnects == 0  # the hand-off stayed up
            assert client.stats.dropped == 0

        assert forwarder.process is not None and forwarder.process.poll() is None
        assert forwarder.process.pid == pid
        messages = list(sub.messages)
        # one MQTT session: one CONNECT, status `online` once, never `offline`
        assert connects(broker, "fieldgate-line3") == 1
        assert [m.payload for m in messages if m.topic == f"{PREFIX}/status"] == [b"online"]
        # nothing lost or repeated on the tags that stayed, across the change
        assert json_values(messages, f"{PREFIX}/press-1/temperature") == list(range(sent_temperature))
        assert json_values(messages, f"{PREFIX}/oven-2/heat") == list(range(sent_heat))
        # the new tag is published with its unit; the removed one is cleared and silent after
        level = [m.json() for m in messages if m.topic == f"{PREFIX}/press-1/level"]
        assert level[0]["unit"] == "cm"
        assert [m for m in messages if m.topic == f"{PREFIX}/press-1/count" and m.at > cleared.at] == []
        assert log_has(forwarder, "device press-1 has no tag count")  # refused at the hand-off, as before
        assert log_has(forwarder, "(1 added or changed, 0 removed, 1 untouched)")
    finally:
        sub.close()
        assert forwarder.stop() == 0


def spb(messages: list[Message], kind: str, device: str | None = None) -> list[Message]:
    topic = f"{SPB}/{kind}/line3" + (f"/{device}" if device else "")
    return [m for m in messages if m.topic == topic]


def temperatures(messages: list[Message]) -> list[float]:
    """press-1/temperature's values in DDATA, by the alias its first DBIRTH gave it (kept since)."""
    births = spb(messages, "DBIRTH", "press-1")
    if not births:
        return []
    alias = sp.decode(births[0].payload).metric("temperature").alias
    return [m.value for msg in spb(messages, "DDATA", "press-1") for m in sp.decode(msg.payload).metrics
            if m.alias == alias]


async def test_sparkplug_catalog_change_births_the_changed_devices_only(tmp_path: Path, broker: Mosquitto) -> None:
    base = config_dict(tmp_path, broker, format="sparkplug")
    config = with_catalog(base, [PRESS, OVEN, MILL])
    sub = Subscriber(broker.host, broker.port, "spBv1.0/#")
    forwarder = ForwarderProcess(tmp_path, config).start()
    try:
        wait_file(Path(config["handoff"]["socket"]))
        async with collector(ForwarderConfig.model_validate(config)) as client:
            feeders = [Feeder(client, "press-1", ["temperature", "count"]), Feeder(client, "oven-2", ["heat"]),
                       Feeder(client, "mill-3", ["speed"])]
            for feeder in feeders:
                feeder.start()
            await until(lambda: len(spb(sub.messages, "DDATA", "mill-3")) >= 5, 15, "DDATA of mill-3")
            pid = forwarder.process.pid if forwarder.process else None
            before = len(sub.messages)

            # press-1: `level` added, `count` removed; mill-3 removed; dryer-4 added; oven-2 untouched
            dryer = {"name": "dryer-4", "collector": "modbus", "tags": [{"name": "moisture", "type": "float32"}]}
            rewrite(forwarder, with_catalog(base, [PRESS_EDITED, OVEN, dryer]))
            await until(lambda: log_has(forwarder, "new catalog applied in place"), 15, "the reload")
            await feeders[2].stop()
            feeders[0].tags.append("level")
            feeders.append(Feeder(client, "dryer-4", ["moisture"]))
            feeders[-1].start()
            await until(lambda: any(m.topic == f"{SPB}/DDATA/line3/dryer-4" for m in sub.messages[before:]), 15,
                        "DDATA of dryer-4")
            for feeder in feeders:
                if feeder._task is not None and not feeder._task.done():
                    await feeder.stop()
            sent = feeders[0].sent["temperature"]
            await until(lambda: len(temperatures(list(sub.messages))) >= sent, 15, "every temperature reading")

        assert forwarder.process is not None and forwarder.process.pid == pid and forwarder.process.poll() is None
        messages = list(sub.messages)
        after = messages[before:]
        assert connects(broker, "fieldgate-line3") == 1
        assert spb(after, "NBIRTH") == [] and spb(messages, "NDEATH") == []
        assert len(spb(messages, "NBIRTH")) == 1
        # exactly one DBIRTH of each changed or added device, a DDEATH of the removed one, nothing for oven-2
        assert len(spb(after, "DBIRTH", "press-1")) == 1
        assert len(spb(after, "DBIRTH", "dryer-4")) == 1
        assert len(spb(after, "DDEATH", "mill-3")) == 1
        assert spb(after, "DBIRTH", "oven-2") == [] and spb(after, "DDEATH", "oven-2") == []
        assert spb(after, "DBIRTH", "mill-3") == [] and spb(after, "DDATA", "mill-3") == []
        birth = sp.decode(spb(after, "DBIRTH", "press-1")[0].payload)
        assert [m.name for m in birth.metrics] == ["temperature", "level"]
        level = birth.metric("level")
        assert level.properties["engUnit"] == "cm"
        old_birth = sp.decode(spb(messages, "DBIRTH", "press-1")[0].payload)
        assert birth.metric("temperature").alias == old_birth.metric("temperature").alias  # kept
        assert level.alias not in {m.alias for m in old_birth.metrics}  # never a removed metric's alias
        # seq goes on over every message of the node (0..255), births included
        seqs = [sp.decode(m.payload).seq for m in messages if m.topic.startswith(f"{SPB}/D")
                or m.topic.startswith(f"{SPB}/NBIRTH")]
        assert seqs == [i % 256 for i in range(len(seqs))]
        # the new tag's values go out as DDATA under its alias
        press_data = [sp.decode(m.payload) for m in spb(after, "DDATA", "press-1")]
        level_values = [m.value for p in press_data for m in p.metrics if m.alias == level.alias]
        assert level_values and level_values == list(range(len(level_values)))
        # nothing lost on the tag that stayed: every temperature value, in order, once
        assert temperatures(messages) == [float(i) for i in range(sent)]
    finally:
        sub.close()
        assert forwarder.stop() == 0


async def test_a_reload_changing_more_than_the_catalog_is_refused_and_the_session_goes_on(
    tmp_path: Path, broker: Mosquitto
) -> None:
    config = config_dict(tmp_path, broker)
    sub = Subscriber(broker.host, broker.port, f"{PREFIX}/#")
    forwarder = ForwarderProcess(tmp_path, config).start()
    try:
        sub.wait_for(lambda m: m.topic == f"{PREFIX}/status" and m.payload == b"online", 15)
        changed = copy.deepcopy(config)
        changed["mqtt"]["keepalive"] = "5s"
        rewrite(forwarder, changed)
        await until(lambda: log_has(forwarder, "new config refused, keeping the running one"), 15, "the refusal")
        assert log_has(forwarder, "only `devices` (the catalog) can change in place")
        broken = copy.deepcopy(config)
        broken["devices"][0]["tags"][0]["type"] = 7
        rewrite(forwarder, broken)
        await until(lambda: log_has(forwarder, "forwarder.json"), 15, "the position of the error")
        assert forwarder.process is not None and forwarder.process.poll() is None
        assert connects(broker, "fieldgate-line3") == 1
    finally:
        sub.close()
        assert forwarder.stop() == 0


async def test_a_reload_that_fails_half_way_stops_the_forwarder_for_a_fresh_start(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error while taking the catalog: the forwarder stops cleanly (its goodbye
    published) and `main` exits with code 3, so the supervisor starts it anew on the new slice
    (plan.py: a crashed service whose config changed is recreated at once)."""
    from collectors.forwarder.__main__ import RELOAD_FAILED, serve
    from collectors.forwarder.app import Forwarder

    config = config_dict(tmp_path, broker)
    path = tmp_path / "forwarder.json"
    path.write_text(json.dumps(config))
    forwarder = Forwarder(ForwarderConfig.model_validate(config))

    def broken(new: ForwarderConfig) -> None:
        raise RuntimeError("half way")

    monkeypatch.setattr(forwarder, "reload", broken)
    sub = Subscriber(broker.host, broker.port, f"{PREFIX}/status")
    failed: list[BaseException] = []
    task = asyncio.create_task(serve(forwarder, path, failed))
    try:
        await until(lambda: any(m.payload == b"online" for m in sub.messages), 15, "online")
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(task, 15)
        assert [type(exc) for exc in failed] == [RuntimeError]
        assert RELOAD_FAILED == 3
        sub.wait_for(lambda m: m.payload == b"offline", 15)  # a clean goodbye, not the will
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sub.close()


async def test_a_sighup_while_starting_is_taken_once_serving(tmp_path: Path, broker: Mosquitto) -> None:
    """The supervisor may signal a forwarder that is still starting: `main` notes the SIGHUP
    (instead of dying of it) and `serve` takes the file's catalog once the forwarder serves."""
    from collectors.forwarder.__main__ import serve
    from collectors.forwarder.app import Forwarder

    config = config_dict(tmp_path, broker)
    forwarder = Forwarder(ForwarderConfig.model_validate(config))  # started on the old catalog
    path = tmp_path / "forwarder.json"
    path.write_text(json.dumps(with_catalog(config, [PRESS_EDITED])))  # the new one, already written
    failed: list[BaseException] = []
    task = asyncio.create_task(serve(forwarder, path, failed, early=[signal.SIGHUP]))
    try:
        await until(lambda: forwarder.reloads == 1, 15, "the noted reload")
        assert [d.name for d in forwarder.config.devices] == ["press-1"]
        assert [t.name for t in forwarder.config.devices[0].tags] == ["temperature", "level"]
        assert not failed and not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
