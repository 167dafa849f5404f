"""The hand-off over a real Unix socket: acknowledged batches, resend after loss, writes down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest

from collectors.core.config import HandoffConfig
from collectors.core.handoff import MAX_CONNECTIONS, MAX_FRAME, HandoffClient, HandoffServer, encode_frame, read_frame
from collectors.core.handoff_check import CatalogEntry, ReadingCheck, value_fits
from collectors.core.model import DeviceState, Reading, WriteRequest, WriteResult

pytestmark = pytest.mark.sim

TS = 1_764_316_800_000  # 2025-11-28T08:00:00Z


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
        client.publish(Reading("press-1", f"t{i % 7}", i, TS + i) for i in range(1000))
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
            client.publish(Reading("d", "t", i, TS + i) for i in range(500))
            assert await client.drain(5)
        # forwarder away: readings queue in the collector
        client.publish(Reading("d", "t", i, TS + i) for i in range(500, 800))
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


# --------------------------------------------------------------------------- hardening (issue 9)

CATALOG = {
    "press-1": CatalogEntry("modbus", {"temperature": "float32", "run": "bool", "count": "uint16", "label": "string"}),
    "oven-2": CatalogEntry("opcua", {"setpoint": None}),
}


class Raw:
    """A hand-off peer that sends whatever frames a test wants, as a rogue or broken collector would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, path: Path) -> Raw:
        return cls(*await asyncio.open_unix_connection(str(path)))

    async def send(self, message: dict[str, Any] | bytes) -> None:
        self.writer.write(message if isinstance(message, bytes) else encode_frame(message))
        await self.writer.drain()

    async def receive(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next frame, or None when the forwarder closed the connection."""
        try:
            return await asyncio.wait_for(read_frame(self.reader), timeout)
        except asyncio.IncompleteReadError:
            return None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def test_the_socket_is_0660_in_a_private_directory(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)  # as a volume or a config dir comes: readable by all
    async with HandoffServer(folder / "h.sock", Sink()):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE((folder / "h.sock").stat().st_mode) == 0o660
    fresh = tmp_path / "new" / "run"
    async with HandoffServer(fresh / "h.sock", Sink()):
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


async def test_a_second_hello_under_a_connected_name_is_refused_and_writes_stay_with_the_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "collectors")
    sink, written = Sink(), []

    async def on_write(request: WriteRequest) -> WriteResult:
        written.append(request.id)
        return WriteResult(request.id, request.device, request.tag, True, None)

    settings = _settings(tmp_path)
    async with HandoffServer(settings.socket, sink) as server, HandoffClient(settings, "modbus", on_write):
        await _until(lambda: server.collectors == ["modbus"])
        for attempt in range(2):
            rogue = await Raw.connect(settings.socket)
            await rogue.send({"t": "hello", "collector": "modbus", "epoch": f"rogue{attempt}"})
            answer = await rogue.receive()
            assert answer is not None and answer["t"] == "error"
            assert "collector modbus is already connected" in answer["error"]
            assert await rogue.receive() is None  # and closed
            await rogue.close()
        assert server.send_write("modbus", WriteRequest("w1", "press-1", "run", 1))
        await _until(lambda: sink.results)
    assert written == ["w1"]  # the real collector, after the rogues came and went
    refusals = [r for r in caplog.records if "already connected" in r.getMessage()]
    assert [r.levelname for r in refusals] == ["ERROR", "DEBUG"]


async def test_a_refused_collector_backs_off_and_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "collectors")
    settings = _settings(tmp_path)
    async with HandoffServer(settings.socket, Sink()) as server, HandoffClient(settings, "modbus", _no_writes):
        await _until(lambda: server.collectors == ["modbus"])
        async with HandoffClient(settings, "modbus", _no_writes) as second:
            second.publish(Reading("press-1", "t", i, TS + i) for i in range(1000))  # still sending when refused
            await asyncio.sleep(1.0)
            # backoff doubles to 2 s: a handful of attempts in a second, not one every 50 ms
            assert 1 <= second.stats.reconnects <= 6
    lines = [r for r in caplog.records if "the forwarder refused this collector" in r.getMessage()]
    assert [r.levelname for r in lines][:2] == ["ERROR", "DEBUG"] or [r.levelname for r in lines] == ["ERROR"]


async def _no_writes(request: WriteRequest) -> WriteResult:
    raise AssertionError("no writes expected")


def _row(device: object, tag: object, value: object = 1.5, ts: object = TS, *rest: object) -> list[object]:
    return [device, tag, value, ts, *rest]


BAD_ROWS: list[tuple[str, object]] = [
    ("unknown_device", _row("press-9", "temperature")),
    ("other_collector", _row("oven-2", "setpoint")),
    ("unknown_tag", _row("press-1", "nope")),
    ("bad_name", _row("x/#", "temperature")),
    ("bad_name", _row("press-1", "run/set")),
    ("bad_name", _row("press-1\n", "temperature")),
    ("bad_name", _row(["press-1"], "temperature")),
    ("bad_timestamp", _row("press-1", "temperature", 1.5, "1764316800000")),
    ("bad_timestamp", _row("press-1", "temperature", 1.5, 1.7643168e12)),
    ("bad_timestamp", _row("press-1", "temperature", 1.5, 2**64 - 1)),
    ("bad_timestamp", _row("press-1", "temperature", 1.5, 1e30)),
    ("bad_timestamp", _row("press-1", "temperature", 1.5, 5)),
    ("bad_timestamp", _row("press-1", "temperature", 1.5, True)),
    ("bad_quality", _row("press-1", "temperature", 1.5, TS, "excellent")),
    ("bad_quality", _row("press-1", "temperature", 1.5, TS, ["good"])),
    ("bad_reason", _row("press-1", "temperature", None, TS, "bad", {"why": 1})),
    ("bad_value", _row("press-1", "temperature", {"a": 1})),
    ("bad_value", _row("press-1", "temperature", "hot")),
    ("bad_value", _row("press-1", "run", [1, 0])),
    ("bad_value", _row("press-1", "count", "7")),
    ("bad_value", _row("press-1", "label", {"x": "y"})),
    ("bad_value", _row("press-1", "label", 7)),
    ("malformed", ["press-1", "temperature", 1.5]),
    ("malformed", "press-1"),
]


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(("value", "type_name", "fits"), [
    ({"Low": 0.0, "High": [1, {"x": None}]}, None, True),  # an OPC UA structure
    ([[1.5, 2.5], [3.5, 4.5]], None, True),
    (_nested(33), None, False), (_nested(32), None, True),
    (True, "bool", True), (2, "bool", True), (7, "float32", True), (1.5, "uint16", True),
    ("7", "uint16", False), ([1], "float32", False), ({"a": 1}, "int16", False),
    ("text", "string", True), (7, "string", False),
])
def test_which_values_a_tag_can_carry(value: object, type_name: str | None, fits: bool) -> None:
    assert value_fits(value, type_name) is fits


async def test_readings_outside_the_collectors_catalog_are_dropped_counted_and_the_batch_acknowledged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "collectors")
    sink = Sink()
    path = tmp_path / "h.sock"
    good = [
        _row("press-1", "temperature", 21.5),
        _row("press-1", "run", True, TS + 1, "uncertain", "stale"),
        _row("press-1", "count", 7, TS + 2, "bad", "timeout"),
        _row("press-1", "label", "hello", TS + 3),
        _row("press-1", "temperature", None, TS + 4, "bad", "timeout"),
    ]
    rows = [good[0], *(row for _, row in BAD_ROWS), *good[1:], *(row for _, row in BAD_ROWS)]
    async with HandoffServer(path, sink, ReadingCheck(CATALOG)) as server:
        peer = await Raw.connect(path)
        await peer.send({"t": "hello", "collector": "modbus", "epoch": "e1"})
        await peer.send({"t": "batch", "seq": 1, "r": rows})
        assert await peer.receive() == {"t": "ack", "seq": 1}
        await peer.send({"t": "state", "seq": 2, "device": "oven-2", "online": False, "reason": "x"})
        assert await peer.receive() == {"t": "ack", "seq": 2}
        await peer.close()
        counts = server.check.rejected.counts
    assert [tuple(r) for r in sink.received] == [
        ("press-1", "temperature", 21.5, TS, "good", None),
        ("press-1", "run", True, TS + 1, "uncertain", "stale"),
        ("press-1", "count", 7, TS + 2, "bad", "timeout"),
        ("press-1", "label", "hello", TS + 3, "good", None),
        ("press-1", "temperature", None, TS + 4, "bad", "timeout"),
    ]
    assert sink.states == []  # oven-2 is not modbus's
    expected: dict[tuple[str, str], int] = {}
    for reason, _ in BAD_ROWS:
        expected[("modbus", reason)] = expected.get(("modbus", reason), 0) + 2
    expected[("modbus", "other_collector")] += 1  # the state frame
    assert counts == expected
    warnings = [r for r in caplog.records if r.getMessage().startswith("hand-off: dropped a reading")]
    assert sorted({r.levelname for r in warnings}) == ["DEBUG", "WARNING"]
    assert len([r for r in warnings if r.levelname == "WARNING"]) == len({reason for reason, _ in BAD_ROWS})


def _framed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


HELLO = {"t": "hello", "collector": "modbus", "epoch": "e1"}
MALFORMED: list[tuple[str, list[bytes]]] = [
    ("over the cap", [(5 * 1024 * 1024).to_bytes(4, "big")]),
    ("not JSON", [_framed(b"\xff{not json")]),
    ("empty", [_framed(b"")]),
    ("not an object", [_framed(b"[1, 2, 3]")]),
    ("no type", [_framed(b'{"seq": 1}')]),
    ("hello with a list as name", [_framed(b'{"t": "hello", "collector": ["modbus"]}')]),
    ("hello with a topic as name", [_framed(b'{"t": "hello", "collector": "a/#"}')]),
    ("batch before hello", [encode_frame({"t": "batch", "seq": 1, "r": []})]),
    ("unknown type", [encode_frame(HELLO), encode_frame({"t": "bogus", "seq": 1})]),
    ("unknown type, no seq", [encode_frame(HELLO), encode_frame({"t": "bogus"})]),
    ("seq not a number", [encode_frame(HELLO), encode_frame({"t": "batch", "seq": "1", "r": []})]),
    ("seq an object", [encode_frame(HELLO), encode_frame({"t": "batch", "seq": {}, "r": []})]),
    ("state without fields", [encode_frame(HELLO), encode_frame({"t": "state", "seq": 1})]),
    ("result of wrong types", [encode_frame(HELLO), encode_frame({"t": "result", "id": 1, "ok": "yes"})]),
]


@pytest.mark.parametrize("frames", [f for _, f in MALFORMED], ids=[n for n, _ in MALFORMED])
async def test_a_malformed_frame_ends_only_its_connection_with_an_error(
    tmp_path: Path, frames: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink()
    settings = _settings(tmp_path)
    async with HandoffServer(settings.socket, sink) as server, HandoffClient(settings, "opcua", _no_writes) as good:
        await _until(lambda: server.collectors == ["opcua"])
        for _ in range(2):
            peer = await Raw.connect(settings.socket)
            for frame in frames:
                await peer.send(frame)
            answer = await peer.receive()
            assert answer is not None and answer["t"] == "error", answer
            assert await peer.receive() is None
            await peer.close()
        good.publish([Reading("oven-2", "setpoint", 1, TS)])
        assert await good.drain(5)
        assert server.collectors == ["opcua"]
    assert [r.value for r in sink.received] == [1]
    assert not [r for r in caplog.records if r.name == "asyncio"]  # "Unhandled exception in client_connected_cb"
    dropped = [r for r in caplog.records if r.getMessage().startswith("hand-off peer dropped")]
    assert [r.levelname for r in dropped] == ["ERROR"]  # the repeat is at DEBUG


async def test_connections_past_the_cap_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.sock"
    async with HandoffServer(path, Sink()) as server:
        peers = []
        for i in range(MAX_CONNECTIONS):
            peer = await Raw.connect(path)
            await peer.send({"t": "hello", "collector": f"c{i}", "epoch": "e"})
            peers.append(peer)
        await _until(lambda: len(server.collectors) == MAX_CONNECTIONS)
        extra = await Raw.connect(path)
        await extra.send({"t": "hello", "collector": "one-more", "epoch": "e"})
        answer = await extra.receive()
        assert answer == {"t": "error", "error": f"too many hand-off connections (at most {MAX_CONNECTIONS})"}
        await extra.close()
        await peers.pop().close()  # a slot frees up
        await _until(lambda: len(server.collectors) == MAX_CONNECTIONS - 1)
        again = await Raw.connect(path)
        await again.send({"t": "hello", "collector": "one-more", "epoch": "e"})
        await _until(lambda: "one-more" in server.collectors)
        for peer in [*peers, again]:
            await peer.close()


async def test_batches_are_split_to_fit_the_frame_cap_and_an_oversized_reading_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The collector side, against a bare forwarder that records frame sizes."""
    sizes: list[int] = []
    values: list[str] = []

    async def forwarder(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                length = int.from_bytes(await reader.readexactly(4), "big")
                sizes.append(length)
                message = orjson.loads(await reader.readexactly(length))
                if message["t"] == "batch":
                    values.extend(row[2] for row in message["r"])
                    writer.write(encode_frame({"t": "ack", "seq": message["seq"]}))
        writer.close()

    settings = HandoffConfig(socket=tmp_path / "h.sock", linger=0.05, batch_max=5000)
    server = await asyncio.start_unix_server(forwarder, path=str(settings.socket))
    try:
        async with HandoffClient(settings, "opcua", _no_writes) as client:
            big = [f"{i}" + "x" * (1024 * 1024) for i in range(12)]  # 12 MiB of 1 MiB strings
            client.publish([Reading("oven-2", "label", v, TS + i) for i, v in enumerate(big[:6])])
            client.publish([Reading("oven-2", "label", "y" * (MAX_FRAME + 1), TS + 6)])  # cannot fit
            client.publish([Reading("oven-2", "label", v, TS + 7 + i) for i, v in enumerate(big[6:])])
            assert await client.drain(20)
            assert client.stats.dropped == 1
    finally:
        server.close()
        await server.wait_closed()
    assert values == big  # in order, all but the one too big
    assert max(sizes) <= MAX_FRAME and len([s for s in sizes if s > 1024 * 1024]) >= 3
    refused = [r for r in caplog.records if "over the hand-off's" in r.getMessage()]
    assert [r.levelname for r in refused] == ["ERROR"]
    assert f"{MAX_FRAME} byte frame limit" in refused[0].getMessage()


async def test_the_queue_is_bounded_in_bytes_and_drops_the_oldest(tmp_path: Path) -> None:
    settings = HandoffConfig(socket=tmp_path / "h.sock", queue_max_bytes="1MiB", linger=0.001)
    sink = Sink()
    async with HandoffClient(settings, "opcua", _no_writes) as client:
        # the forwarder is away: 10,000 readings of ~1 KB do not fit 1 MiB
        client.publish(Reading("oven-2", "label", f"{i:06d}" + "x" * 994, TS + i) for i in range(10_000))
        assert client.stats.queued_bytes <= 1024 * 1024
        async with HandoffServer(settings.socket, sink):
            assert await client.drain(10)
    kept = len(sink.received)
    assert 800 <= kept <= 1000  # the newest ~900 stay
    assert client.stats.dropped == 10_000 - kept
    assert [r.value[:6] for r in sink.received] == [f"{i:06d}" for i in range(10_000 - kept, 10_000)]
    assert HandoffConfig().queue_max_bytes == 32 * 1024 * 1024
