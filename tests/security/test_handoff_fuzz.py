"""A hypothesis fuzzer against a running forwarder process's hand-off, while a well-behaved collector
keeps handing off readings: nothing crashes, /healthz stays 200, every good reading reaches the broker.

Prints the figures issue 9 asks for: frames tried, crashes, readings/s at the subscriber before
and during the fuzz.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.core.config import HandoffConfig
from collectors.core.handoff import MAX_FRAME, HandoffClient
from collectors.core.model import Reading, WriteRequest, WriteResult
from tests.forwarder.helpers import ForwarderProcess, config_dict, wait_file
from tests.support.broker import Mosquitto, free_port
from tests.support.http import http_get
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.security

TS = 1_764_316_800_000
GOOD_TOPIC = "fieldgate/line3/press-1/count"
RATE = 400  # readings/s the good collector hands off

# -- frames

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20), st.sampled_from(["press-1", "oven-2", "temperature", "run", "count", "setpoint", "good",
                                           "bad", "x/#", "run/set", "$SYS", ""]),
)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=12)
row = st.one_of(
    st.lists(json_value, max_size=7),
    st.tuples(st.sampled_from(["press-1", "oven-2", "ghost", "x/#", "press-1/run"]),
              st.sampled_from(["temperature", "run", "count", "setpoint", "set", "run/set", "#"]),
              json_value, st.one_of(st.integers(-(2**63), 2**63), st.floats(allow_nan=False), st.just(TS)),
              st.sampled_from(["good", "bad", "uncertain", "great", 7]), json_value).map(list),
)
typed = st.one_of(
    st.builds(lambda seq, rows: {"t": "batch", "seq": seq, "r": rows}, json_value | st.integers(0, 10**6),
              st.lists(row, max_size=20) | json_value),
    st.builds(lambda seq, d, o, r: {"t": "state", "seq": seq, "device": d, "online": o, "reason": r},
              json_value | st.integers(1, 10**6), json_value, json_value, json_value),
    st.builds(lambda i, d, t, ok, e: {"t": "result", "id": i, "device": d, "tag": t, "ok": ok, "error": e},
              json_value, json_value, json_value, json_value, json_value),
    st.builds(lambda t, extra: {"t": t, **extra}, st.sampled_from(["ack", "write", "hello", "bogus", ""]) | st.text(),
              st.dictionaries(st.text(max_size=8), json_value, max_size=4)),
    st.dictionaries(st.text(max_size=8), json_value, max_size=5),
)


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def encoded(message: Any) -> bytes:
    try:
        return framed(orjson.dumps(message))
    except TypeError:  # an integer JSON cannot carry: send its text
        return framed(str(message).encode())


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A well-formed frame with bytes flipped, cut or inserted, or a lying length."""
    data = bytearray(encoded(draw(typed)))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["flip", "cut", "insert"]))
        if how == "flip" and where < len(data):
            data[where] ^= draw(st.integers(1, 255))
        elif how == "cut":
            del data[where:]
        else:
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


frame = st.one_of(
    typed.map(encoded),
    mutated(),
    st.binary(max_size=64),
    st.builds(lambda n, body: struct.pack(">I", n) + body, st.integers(0, 2**32 - 1), st.binary(max_size=32)),
    st.just(struct.pack(">I", MAX_FRAME + 1)),
)
hello = st.builds(
    lambda name, epoch: encoded({"t": "hello", "collector": name, "epoch": epoch}),
    st.sampled_from(["fuzz-a", "fuzz-b", "modbus", "opcua", "x/#", ""]) | st.text(max_size=10),
    st.text(max_size=10) | json_value,
)
# Per example, 1-3 connections, each an optional hello and then frames, sent interleaved.
scripts = st.lists(st.tuples(st.one_of(st.none(), hello), st.lists(frame, min_size=1, max_size=6)),
                   min_size=1, max_size=3)


# -- the well-behaved collector, in a thread with its own event loop


class GoodCollector:
    """Hands off press-1/count 0, 1, 2, ... at RATE readings/s until stopped; counts what it sent."""

    def __init__(self, socket_path: Path) -> None:
        self.settings = HandoffConfig(socket=socket_path, linger=0.005)
        self.sent = 0
        self.drained = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="good-collector")

    async def _run(self) -> None:
        async def no_writes(request: WriteRequest) -> WriteResult:
            raise AssertionError(f"the fuzz must not cause a write: {request}")

        async with HandoffClient(self.settings, "modbus", no_writes) as client:
            step = 0.01
            while not self._stop.is_set():
                n = int(RATE * step)
                client.publish([Reading("press-1", "count", self.sent + i, TS + self.sent + i) for i in range(n)])
                self.sent += n
                await asyncio.sleep(step)
            self.drained = await client.drain(30)

    def __enter__(self) -> GoodCollector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def rate(subscriber: Subscriber, seconds: float) -> float:
    before = len(subscriber.on_topic(GOOD_TOPIC))
    time.sleep(seconds)
    return (len(subscriber.on_topic(GOOD_TOPIC)) - before) / seconds


@pytest.fixture
def forwarder(tmp_path: Path, broker: Mosquitto) -> Iterator[tuple[ForwarderProcess, int, Path]]:
    metrics_port = free_port()
    config = config_dict(tmp_path, broker, qos=0)
    config["metrics"] = {"port": metrics_port}
    process = ForwarderProcess(tmp_path, config).start()
    socket_path = Path(config["handoff"]["socket"])
    try:
        wait_file(socket_path)
        yield process, metrics_port, socket_path
    finally:
        process.stop()


def test_fuzzed_frames_from_several_connections_stop_nothing(
    forwarder: tuple[ForwarderProcess, int, Path], subscriber: Subscriber
) -> None:
    process, metrics_port, socket_path = forwarder
    tried = {"frames": 0, "connections": 0}

    @settings(max_examples=600, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(scripts)
    def fuzz(script: list[tuple[bytes | None, list[bytes]]]) -> None:
        peers = []
        for greeting, frames in script:
            peer = socket.socket(socket.AF_UNIX)
            peer.settimeout(2)
            peer.connect(str(socket_path))
            peers.append((peer, [greeting, *frames] if greeting else frames))
            tried["connections"] += 1
        for round_ in range(max(len(frames) for _, frames in peers)):  # interleaved across connections
            for peer, frames in peers:
                if round_ < len(frames):
                    tried["frames"] += 1
                    with contextlib.suppress(OSError):  # the forwarder closed it: its answer to a bad frame
                        peer.sendall(frames[round_])
        for peer, _ in peers:
            peer.settimeout(0.02)
            with contextlib.suppress(OSError):
                peer.recv(65536)
            peer.close()

    with GoodCollector(socket_path) as good:
        subscriber.wait_for(lambda m: m.topic == GOOD_TOPIC, 15)
        before = rate(subscriber, 3.0)
        started = time.monotonic()
        during_start = len(subscriber.on_topic(GOOD_TOPIC))
        fuzz()
        elapsed = time.monotonic() - started
        during = (len(subscriber.on_topic(GOOD_TOPIC)) - during_start) / elapsed
        status, body = asyncio.run(http_get(metrics_port, "/healthz"))
        alive = process.process is not None and process.process.poll() is None
    log = process.log.read_text()
    crashes = sum(log.count(s) for s in ("Traceback", "Unhandled exception", "failed\n"))
    print(f"\nhand-off fuzz: {tried['frames']} frames on {tried['connections']} connections in {elapsed:.1f}s, "
          f"crashes {crashes + (not alive)}, good readings at the subscriber: {before:.0f}/s before, "
          f"{during:.0f}/s during (collector hands off {RATE}/s); forwarder log: {log.count(' ERROR ')} ERROR lines")
    assert alive and status == 200, body
    assert crashes == 0, process.log.read_text()[-3000:]
    assert good.drained
    subscriber.wait_for(lambda m: m.topic == GOOD_TOPIC, 30, good.sent)
    values = {orjson.loads(m.payload)["value"] for m in subscriber.on_topic(GOOD_TOPIC)}
    assert values == set(range(good.sent))  # every good reading reached the broker
    assert during > 0.25 * before
