"""The store-and-forward buffer on its own: lanes, restarts, torn records, the max_bytes bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.core.model import DeviceState, Reading
from collectors.forwarder.buffer import Batch, Buffer

pytestmark = pytest.mark.unit


def readings(start: int, count: int, tag: str = "t") -> list[Reading]:
    return [Reading("d", tag, i, i) for i in range(start, start + count)]


def take_all(buffer: Buffer, limit: int = 1000, ack: bool = True) -> list[Batch | DeviceState]:
    out: list[Batch | DeviceState] = []
    while (item := buffer.take(limit)) is not None:
        out.append(item)
        if ack and isinstance(item, Batch):
            buffer.ack(item)
    return out


def values(items: list[Batch | DeviceState]) -> list[int]:
    return [r.value for item in items if isinstance(item, Batch) for r in item.readings]  # type: ignore[misc]


@pytest.mark.parametrize("durability", ["outage", "always"])
def test_offline_readings_are_historical_and_live_ones_interleave(tmp_path: Path, durability: str) -> None:
    buffer = Buffer(tmp_path, 1 << 20, durability)  # type: ignore[arg-type]
    buffer.put(readings(0, 3000))  # session down: backlog
    buffer.online = True
    buffer.put(readings(3000, 10))
    buffer.put(readings(3010, 10))
    items = take_all(buffer, limit=1000)
    kinds = [(item.historical, len(item.readings)) for item in items if isinstance(item, Batch)]
    # live readings do not wait for the whole backlog: they go out between replay batches
    assert kinds[0] == (False, 20) and kinds[1][0] is True
    assert sorted(values(items)) == list(range(3020))
    assert [v for v in values(items) if v < 3000] == list(range(3000)), "replay in order"
    assert buffer.pending == 0


def test_unacknowledged_batches_are_sent_again_in_order_after_a_loss(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path, 1 << 20, "outage")
    buffer.online = True
    buffer.put(readings(0, 10))
    buffer.put(readings(10, 10))
    first = buffer.take(10)
    assert isinstance(first, Batch)
    buffer.ack(first)
    second = buffer.take(10)
    assert isinstance(second, Batch) and second.readings[0].value == 10
    buffer.connection_lost()  # second never acknowledged: it goes to the disk backlog
    assert buffer.backlog.pending == 10 and buffer.live.pending == 0
    buffer.put(readings(20, 5))  # still offline
    buffer.online = True
    assert values(take_all(buffer)) == list(range(10, 25))


def test_device_state_waits_for_the_live_readings_before_it(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path, 1 << 20, "outage")
    buffer.online = True
    buffer.put(readings(0, 5))
    state = DeviceState("d", False, "timeout")
    assert buffer.put_state(state) is None  # readings before it not taken yet
    buffer.put(readings(5, 5))
    order = take_all(buffer, limit=5)
    assert isinstance(order[0], Batch) and order[1] == state and isinstance(order[2], Batch)
    assert buffer.put_state(DeviceState("d", True)) == DeviceState("d", True)  # nothing before it: due now


def test_outage_buffer_survives_a_restart_and_commits_what_was_delivered(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path, 1 << 20, "outage")
    buffer.put(readings(0, 100))
    buffer.online = True
    buffer.put(readings(100, 50))  # live, in memory: goes to disk on close
    batch = buffer.take(60)  # the live batch first
    assert isinstance(batch, Batch)
    buffer.ack(batch)
    buffer.close()
    again = Buffer(tmp_path, 1 << 20, "outage")
    assert again.pending == 100
    again.online = True
    assert values(take_all(again)) == list(range(100))
    again.close()
    assert Buffer(tmp_path, 1 << 20, "outage").pending == 0


def test_always_writes_before_returning_and_a_crash_replays(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path, 1 << 20, "always")
    buffer.online = True
    buffer.put(readings(0, 30))
    assert (tmp_path / "live").exists() and buffer.live.disk_bytes > 0
    batch = buffer.take(10)
    assert isinstance(batch, Batch) and len(batch.readings) == 30  # served from memory
    buffer.ack(batch)
    buffer.write_commits()
    buffer.put(readings(30, 20))
    # no close(): the process died here
    after = Buffer(tmp_path, 1 << 20, "always")
    assert after.pending == 20 and after.backlog.pending == 20
    after.online = True
    items = take_all(after)
    assert values(items) == list(range(30, 50)) and all(
        item.historical for item in items if isinstance(item, Batch)
    )


def test_a_torn_record_is_cut_off_at_start_up(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path, 1 << 20, "outage")
    buffer.put(readings(0, 10))
    buffer.put(readings(10, 10))
    buffer.close()
    segment = next((tmp_path / "backlog").glob("*.seg"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-7])  # power loss in the middle of the second record
    again = Buffer(tmp_path, 1 << 20, "outage")
    assert again.pending == 10
    again.online = True
    assert values(take_all(again)) == list(range(10))
    again.put(readings(20, 1))  # appends after the cut, readable
    assert values(take_all(again)) == [20]


def test_past_max_bytes_the_oldest_are_dropped_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    buffer = Buffer(tmp_path, 32 * 1024, "outage")
    for start in range(0, 10_000, 100):
        buffer.put(readings(start, 100))
    assert buffer.disk_bytes <= 32 * 1024
    dropped = buffer.stats.dropped
    assert dropped > 0 and buffer.pending + dropped == 10_000
    assert sum("buffer full" in r.getMessage() for r in caplog.records) == 1
    buffer.online = True
    assert values(take_all(buffer)) == list(range(dropped, 10_000)), "the newest are kept, in order"
    # the episode ended with the empty buffer: the next one logs again
    buffer.online = False
    for start in range(0, 10_000, 100):
        buffer.put(readings(start, 100))
    assert sum("buffer full" in r.getMessage() for r in caplog.records) == 2


def test_live_lane_spills_to_disk_past_its_threshold(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path, 1 << 20, "outage", spill_readings=100)
    buffer.online = True
    buffer.put(readings(0, 60))
    buffer.put(readings(60, 60))  # over 100 live: the live lane goes to the backlog first
    assert buffer.backlog.pending == 120 and buffer.live.pending == 0
    assert values(take_all(buffer)) == list(range(120))
