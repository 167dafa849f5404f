"""One bad reading, or a damaged buffer segment, never stops publishing (issue 9, item 2).

The poison is put below the hand-off (which checks readings itself): in the buffer as the
publisher takes it, and in segment files as an older version or a damaged disk left them.
Good readings must still reach a real Mosquitto subscriber, /healthz must stay 200, and what
was dropped must be counted and kept under {buffer.dir}/quarantine/.
"""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from collectors.core.model import Reading
from collectors.forwarder.app import Forwarder
from collectors.forwarder.buffer import Buffer
from collectors.forwarder.config import ForwarderConfig
from tests.forwarder.helpers import config_dict, until
from tests.support import sparkplug as sp
from tests.support.broker import Mosquitto, free_port
from tests.support.http import http_get
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.sim

TS = 1_764_316_800_000
POISON = [
    Reading("x/#", "temperature", 1.0, TS),  # paho: "Publish topic cannot contain wildcards"
    Reading("press-1", "temperature", 1.0, "soon"),  # type: ignore[arg-type]  # TypeError in the formats
    Reading("press-1", "temperature", 1.0, 10**30),  # OverflowError making the timestamp
    Reading("press-1", "count", 2**70, TS),  # no JSON number or Sparkplug integer holds it
    Reading("press-1", "temperature", 1.0, TS, ["good"]),  # type: ignore[arg-type]  # an unhashable quality
]
ON_DISK = [POISON[0], POISON[1], POISON[4]]  # what the buffer's own writer (orjson) can store


def good(start: int, count: int) -> list[Reading]:
    return [Reading("press-1", "count", i, TS + i) for i in range(start, start + count)]


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"fieldgate_forwarder_{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name} in /metrics")


def counts_seen(subscriber: Subscriber, fmt: str) -> set[int]:
    """The values of press-1/count the subscriber received, whatever the format."""
    seen: set[int] = set()
    with subscriber._lock:
        messages = list(subscriber.messages)
    for message in messages:
        if fmt == "sparkplug":
            if "/DDATA/line3/press-1" in message.topic or "/DBIRTH/line3/press-1" in message.topic:
                for m in sp.decode(message.payload).metrics:
                    if (m.name == "count" or m.alias == 4) and m.value is not None:
                        seen.add(int(m.value))
        elif message.topic == "fieldgate/line3/press-1/count":
            seen.add(json.loads(message.payload)["value"])
        elif message.topic == "fieldgate/line3/press-1":
            reading = json.loads(message.payload)["readings"].get("count")
            if reading is not None:
                seen.add(reading["value"])
    return seen


def poison_config(tmp_path: Path, broker: Mosquitto, fmt: str) -> ForwarderConfig:
    mqtt: dict[str, Any] = {"format": "sparkplug"} if fmt == "sparkplug" else {"layout": fmt}
    data = config_dict(tmp_path, broker, **mqtt)
    data["metrics"] = {"port": free_port()}
    return ForwarderConfig.model_validate(data)


FORMATS = ["tag", "device", "sparkplug"]


@pytest.mark.parametrize("fmt", FORMATS)
async def test_poisoned_readings_in_a_batch_are_dropped_and_the_rest_is_published(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, fmt: str
) -> None:
    config = poison_config(tmp_path, broker, fmt)
    port = config.metrics.port
    assert port is not None
    async with Forwarder(config) as forwarder:
        await until(lambda: forwarder.buffer.online, 15, "the forwarder online")
        # Below the hand-off: straight into the buffer the publisher takes from.
        forwarder.buffer.put([*good(0, 5), *POISON, *good(5, 5)], 0.0)
        await until(lambda: counts_seen(subscriber, fmt) >= set(range(10)), 15, "the good readings of the batch")
        forwarder.buffer.put(good(10, 10), 0.0)
        await until(lambda: counts_seen(subscriber, fmt) >= set(range(20)), 15, "readings after the poison")
        status, body = await http_get(port, "/healthz")
        assert (status, body) == (200, "ok\n")
        _, metrics = await http_get(port, "/metrics")
        assert metric(metrics, "unpublishable_readings_total") == len(POISON)
        assert metric(metrics, "readings_out_total") == 20
    kept = (tmp_path / "buffer" / "quarantine" / "readings.jsonl").read_text().splitlines()
    assert len(kept) == len(POISON)
    assert "'x/#'" in json.loads(kept[0])["reading"] and "topic level" in json.loads(kept[0])["why"]


def write_segment(directory: Path, records: list[bytes], segment: int = 0) -> Path:
    """A backlog segment as the buffer writes it: [u32 length][u32 readings][body] per record."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{segment:020d}.seg"
    path.write_bytes(b"".join(struct.pack(">II", len(body), max(1, body.count(b"[") - 1)) + body for body in records))
    return path


def rows(readings: list[Reading]) -> bytes:
    return json.dumps([list(r) for r in readings]).encode()


@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_buffer_an_older_version_left_with_poison_and_damage_is_published_around_it(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, fmt: str
) -> None:
    backlog = tmp_path / "buffer" / "backlog"
    # Segment 0: readable records with poisoned readings among good ones (an older version
    # checked nothing), then a record that is not JSON, one whose rows are not readings, and
    # good readings again. Segment 1: good readings, then a torn tail.
    write_segment(backlog, [
        rows([*good(0, 3), POISON[0], POISON[1]]),
        b"\x00\x01not json at all",
        json.dumps([[1, 2], "x"]).encode(),
        rows(good(3, 3)),
    ], 0)
    torn = write_segment(backlog, [rows(good(6, 4))], 1)
    with torn.open("ab") as file:
        file.write(struct.pack(">II", 4096, 10) + b"[[\"press-1\"")
    config = poison_config(tmp_path, broker, fmt)
    port = config.metrics.port
    assert port is not None
    async with Forwarder(config) as forwarder:
        await until(lambda: counts_seen(subscriber, fmt) >= set(range(10)), 20, "the good readings of the old buffer")
        forwarder.buffer.put(good(10, 5), 0.0)
        await until(lambda: counts_seen(subscriber, fmt) >= set(range(15)), 15, "readings after the replay")
        await until(lambda: forwarder.buffer.pending == 0, 10, "the backlog to empty")
        status, body = await http_get(port, "/healthz")
        assert status == 200
        assert body.startswith("degraded: 2 buffer segments quarantined in "), body
        _, metrics = await http_get(port, "/metrics")
        assert metric(metrics, "quarantined_segments") == 2
        assert metric(metrics, "unpublishable_readings_total") == 2
    quarantine = tmp_path / "buffer" / "quarantine"
    names = sorted(p.name for p in quarantine.iterdir())
    assert names == [
        "backlog-00000000000000000000.seg", "backlog-00000000000000000001.seg.tail-" + str(torn.stat().st_size),
        "readings.jsonl",
    ], names
    # The quarantined copy is the whole segment, as it was; nothing is replayed by the next run.
    assert b"not json at all" in (quarantine / names[0]).read_bytes()
    assert Buffer(tmp_path / "buffer", 10**7, "outage").pending == 0


async def test_a_forwarder_restarted_on_a_poisoned_buffer_keeps_publishing(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    """The restart loop of the issue: the poison was spilled to disk; each new forwarder took it again."""
    buffer = Buffer(tmp_path / "buffer", 10**7, "outage")
    buffer.put([*good(0, 3), *ON_DISK, *good(3, 3)])  # offline: to the disk backlog
    buffer.close()
    config = poison_config(tmp_path, broker, "tag")
    port = config.metrics.port
    assert port is not None
    for run in range(2):
        async with Forwarder(config) as forwarder:
            await until(lambda: forwarder.buffer.online, 15, f"run {run}: online")
            forwarder.buffer.put(good(6 + 3 * run, 3), 0.0)
            expected = set(range(9 + 3 * run))
            await until(lambda e=expected: counts_seen(subscriber, "tag") >= e, 15, f"run {run}: the good readings")
            await until(lambda: forwarder.buffer.pending == 0, 10, "the backlog to empty")
            assert await http_get(port, "/healthz") == (200, "ok\n")
            assert not any(t.done() for t in forwarder._tasks), "a forwarder task ended"
        await asyncio.sleep(0)
