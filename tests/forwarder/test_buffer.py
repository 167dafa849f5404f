"""The store-and-forward buffer on its own: lanes, restarts, torn records, the max_bytes bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.core.model import DeviceState, Reading
from collectors.forwarder.buffer import Batch, Buffer
from tests.forwarder.helpers import fill, small_disk

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


def readings_of(items: list[Batch | DeviceState], tag: str) -> list[tuple[int, bool]]:
    """(value, historical) of one tag's readings, in the order they were taken."""
    return [
        (r.value, item.historical)  # type: ignore[misc]
        for item in items if isinstance(item, Batch) for r in item.readings if r.tag == tag
    ]


@pytest.mark.parametrize("durability", ["outage", "always"])
def test_a_tag_with_a_backlog_queues_behind_it_and_other_tags_go_live_at_once(
    tmp_path: Path, durability: str
) -> None:
    buffer = Buffer(tmp_path, 1 << 20, durability)  # type: ignore[arg-type]
    buffer.put(readings(0, 3000))  # session down: backlog
    buffer.online = True
    buffer.put(readings(3000, 10) + readings(0, 10, tag="u"))  # t has a backlog, u has none
    buffer.put(readings(3010, 10) + readings(10, 10, tag="u"))
    items = take_all(buffer, limit=1000)
    batches = [item for item in items if isinstance(item, Batch)]
    # u does not wait for the replay: it goes out first, live; t's new readings queue behind its backlog
    assert not batches[0].historical and {r.tag for r in batches[0].readings} == {"u"}
    assert batches[1].historical
    assert readings_of(items, "t") == [(v, True) for v in range(3020)], "t in order, none ahead of its backlog"
    assert readings_of(items, "u") == [(v, False) for v in range(20)]
    assert buffer.pending == 0
    buffer.put(readings(3020, 5))  # the backlog is sent: t is live again
    assert [(item.historical, values([item])) for item in take_all(buffer)] == [(False, list(range(3020, 3025)))]


def test_without_tag_order_live_readings_interleave_with_the_replay(tmp_path: Path) -> None:
    """Sparkplug: the replay is flagged historical and a tag's newest value goes live at once."""
    buffer = Buffer(tmp_path, 1 << 20, "outage", keep_tag_order=False)
    buffer.put(readings(0, 3000))
    buffer.online = True
    buffer.put(readings(3000, 10))
    buffer.put(readings(3010, 10))
    items = take_all(buffer, limit=1000)
    kinds = [(item.historical, len(item.readings)) for item in items if isinstance(item, Batch)]
    assert kinds[0] == (False, 20) and kinds[1][0] is True
    assert [v for v in values(items) if v < 3000] == list(range(3000)), "replay in order"


def test_a_live_reading_waits_for_the_acknowledgement_of_its_tags_replay(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path, 1 << 20, "outage")
    buffer.put(readings(0, 100))
    buffer.online = True
    replay = buffer.take(1000)
    assert isinstance(replay, Batch) and replay.historical and len(replay.readings) == 100
    buffer.put(readings(100, 10))  # t's backlog is all taken but not acknowledged yet
    buffer.put(readings(0, 5, tag="u"))
    assert buffer.take(1000) is None, "held until the replay is acknowledged"
    buffer.ack(replay)
    after = buffer.take(1000)
    assert isinstance(after, Batch) and not after.historical and values([after]) == [*range(100, 110), *range(5)]
    # the same, with the connection lost before the acknowledgement: the replay goes first again
    buffer.ack(after)
    buffer.online = False
    buffer.put(readings(110, 50))
    buffer.online = True
    replay = buffer.take(1000)
    assert isinstance(replay, Batch)
    buffer.put(readings(160, 10))
    assert buffer.take(1000) is None
    buffer.connection_lost()
    buffer.online = True
    assert values(take_all(buffer)) == list(range(110, 170))


def test_after_a_restart_every_tag_queues_behind_the_previous_runs_backlog(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path, 1 << 20, "outage")
    buffer.put(readings(0, 100))
    buffer.close()
    again = Buffer(tmp_path, 1 << 20, "outage")
    again.online = True
    again.put(readings(0, 10, tag="u"))  # which tags the backlog holds is not known: u waits too
    again.put(readings(100, 10))
    items = take_all(again)
    assert readings_of(items, "t") == [(v, True) for v in range(110)]
    assert readings_of(items, "u") == [(v, True) for v in range(10)]
    again.put(readings(10, 10, tag="u"))  # all sent: live again
    assert readings_of(take_all(again), "u") == [(v, False) for v in range(10, 20)]


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
    buffer.put(readings(100, 50, tag="u"))  # live, in memory: goes to disk on close
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


def test_a_spill_the_disk_refuses_keeps_the_readings_in_memory_until_it_takes_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_disk(tmp_path / "disk", "256k") as disk:
        buffer = Buffer(disk / "buffer", 1 << 20, "outage")
        buffer.online = True
        buffer.put(readings(0, 2000))  # live, in memory, never acknowledged by a broker
        filler = fill(disk)
        buffer.connection_lost()  # the spill fails: ENOSPC, from a real file system
        assert buffer.unwritten.pending == 2000 and buffer.pending == 2000
        assert buffer.write_error is not None and "No space left" in buffer.write_error
        with pytest.raises(OSError):
            buffer.put(readings(2000, 500))  # not acknowledged: the collector keeps these
        assert buffer.pending == 2000
        buffer.retry()
        errors = [r for r in caplog.records if "cannot write" in r.getMessage()]
        assert len(errors) == 1 and errors[0].levelname == "ERROR", "one line per episode"
        assert buffer.stats.write_errors >= 3
        filler.unlink()
        buffer.retry()  # the disk takes writes again
        assert buffer.write_error is None and buffer.unwritten.pending == 0 and buffer.backlog.pending == 2000
        buffer.put(readings(2000, 500))
        buffer.online = True
        assert values(take_all(buffer)) == list(range(2500))
        buffer.close()


def test_readings_a_full_disk_refused_are_published_from_memory(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "256k") as disk:
        buffer = Buffer(disk / "buffer", 1 << 20, "outage")
        buffer.put(readings(0, 100))  # an outage: on disk
        buffer.online = True
        buffer.put(readings(0, 2000, tag="u"))
        fill(disk)
        buffer.connection_lost()
        assert buffer.unwritten.pending == 2000
        buffer.online = True  # the broker is back, the disk still full
        with pytest.raises(OSError, match="No space left"):
            buffer.put(readings(100, 10))  # behind the backlog, whose tail is in memory: refused
        items = take_all(buffer, ack=False)  # the disk backlog first, then its tail from memory
        assert readings_of(items, "t") == [(v, True) for v in range(100)]
        assert readings_of(items, "u") == [(v, True) for v in range(2000)]
        for item in items:
            assert isinstance(item, Batch)
            buffer.ack(item)
        assert buffer.pending == 0
        buffer.put(readings(0, 10, tag="v"))  # nothing waits: live again, no disk needed
        assert values(take_all(buffer)) == list(range(10))
