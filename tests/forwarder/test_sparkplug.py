"""The Sparkplug B edge node as a pure object: what it would publish, decoded independently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from collectors.core.model import DeviceState, Reading, WriteResult
from collectors.forwarder.config import ForwarderConfig
from collectors.forwarder.formats import OutMessage
from collectors.forwarder.sparkplug import SparkplugFormat
from tests.support import sparkplug as sp

pytestmark = pytest.mark.unit

G, N = "plant1", "line3"
T0 = 1_790_000_000_000


def config(tmp_path: Path, **mqtt: Any) -> ForwarderConfig:
    return ForwarderConfig.model_validate({
        "gateway": {"id": N, "group": G},
        "mqtt": {"format": "sparkplug", **mqtt},
        "buffer": {"dir": str(tmp_path / "buffer")},
        "metrics": {"port": None},
        "devices": [
            {"name": "press-1", "collector": "modbus", "tags": [
                {"name": "temperature", "type": "float32", "unit": "degC"},
                {"name": "count", "type": "int16"},
                {"name": "run", "type": "bool", "writable": True},
                {"name": "recipe", "type": "string", "writable": True},
            ]},
            {"name": "oven-2", "collector": "opcua", "tags": [
                {"name": "setpoint", "writable": True},
                {"name": "batch"},
            ]},
        ],
    })


def started(tmp_path: Path, **mqtt: Any) -> tuple[SparkplugFormat, list[OutMessage]]:
    fmt = SparkplugFormat(config(tmp_path, **mqtt), settle=0)
    will = fmt.will()
    assert will is not None
    return fmt, [will, *fmt.connected()]


def kind(message: OutMessage) -> str:
    return message.topic.split("/")[2]


def bdseq(message: OutMessage) -> int:
    value = sp.decode(message.payload).metric("bdSeq").value
    assert isinstance(value, int)
    return value


REBIRTH = sp.command([sp.command_metric(True, sp.BOOLEAN, name="Node Control/Rebirth")])


def device_births(messages: list[OutMessage]) -> dict[str, sp.Payload]:
    return {m.topic.rsplit("/", 1)[-1]: sp.decode(m.payload) for m in messages if kind(m) == "DBIRTH"}


def test_will_and_nbirth_share_the_bdseq_and_nbirth_has_seq_0(tmp_path: Path) -> None:
    fmt, (will, *births) = started(tmp_path)
    assert will.topic == f"spBv1.0/{G}/NDEATH/{N}" and will.qos == 1 and not will.retain
    death = sp.decode(will.payload)
    assert death.seq is None  # NDEATH carries no seq
    # Every configured device is born right after the NBIRTH, before any data (Sparkplug 3.0).
    assert [(kind(m), m.topic.rsplit("/", 1)[-1]) for m in births] == [
        ("NBIRTH", N), ("DBIRTH", "press-1"), ("DBIRTH", "oven-2")]
    assert [sp.decode(m.payload).seq for m in births] == [0, 1, 2]
    assert all(m.qos == 0 and not m.retain for m in births)
    nbirth = sp.decode(births[0].payload)
    assert births[0].qos == 0 and nbirth.seq == 0
    assert nbirth.metric("bdSeq").value == death.metric("bdSeq").value == 0
    assert nbirth.metric("bdSeq").datatype == sp.INT64
    rebirth = nbirth.metric("Node Control/Rebirth")
    assert rebirth.datatype == sp.BOOLEAN and rebirth.value is False
    assert fmt.ready


def test_dbirth_has_every_metric_then_ddata_aliases_only(tmp_path: Path) -> None:
    fmt, births = started(tmp_path)
    assert births[2].topic == f"spBv1.0/{G}/DBIRTH/{N}/press-1"
    birth = device_births(births)["press-1"]
    readings = [Reading("press-1", "temperature", 21.5, T0), Reading("press-1", "run", True, T0 + 1)]
    out = fmt.encode(readings, False)
    assert [kind(m) for m in out] == ["DDATA"]
    data = sp.decode(out[0].payload)
    assert (birth.seq, data.seq) == (1, 3)
    by_name = {m.name: m for m in birth.metrics}
    assert set(by_name) == {"temperature", "count", "run", "recipe"}
    assert {name: m.datatype for name, m in by_name.items()} == {
        "temperature": sp.FLOAT, "count": sp.INT16, "run": sp.BOOLEAN, "recipe": sp.STRING}
    assert all(m.is_null and m.value is None for m in birth.metrics)  # nothing known at birth time
    assert by_name["temperature"].properties == {"Quality": 500, "engUnit": "degC", "readOnly": True}
    assert by_name["run"].properties["readOnly"] is False
    aliases = {m.alias for m in birth.metrics}
    assert len(aliases) == 4 and None not in aliases
    assert [(m.name, m.alias, m.value, m.timestamp, m.is_historical) for m in data.metrics] == [
        (None, by_name["temperature"].alias, 21.5, T0, False),
        (None, by_name["run"].alias, True, T0 + 1, False),
    ]
    # Aliases are unique over the whole edge node, not per device.
    assert aliases.isdisjoint({m.alias for m in device_births(births)["oven-2"].metrics})


def test_seq_counts_every_message_and_wraps_past_255(tmp_path: Path) -> None:
    fmt, births = started(tmp_path)
    seqs = [sp.decode(m.payload).seq for m in births[1:]]
    for i in range(600):
        for message in fmt.encode([Reading("press-1", "count", i % 100, T0 + i)], False):
            seqs.append(sp.decode(message.payload).seq)
    assert seqs == [i % 256 for i in range(len(seqs))]
    assert len(seqs) == 603  # NBIRTH, 2 DBIRTHs, 600 DDATA


def test_bdseq_survives_a_restart_and_wraps(tmp_path: Path) -> None:
    fmt, _ = started(tmp_path)
    assert fmt.bd_seq == 0
    fmt.will()  # a reconnect
    assert fmt.bd_seq == 1
    again = SparkplugFormat(config(tmp_path), settle=0)  # a restarted forwarder
    will = again.will()
    assert will is not None and sp.decode(will.payload).metric("bdSeq").value == 2
    (tmp_path / "buffer" / "sparkplug.json").write_bytes(orjson.dumps({"bdSeq": 255}))
    wrapped = SparkplugFormat(config(tmp_path), settle=0)
    wrapped.will()
    births = wrapped.connected()
    assert sp.decode(births[0].payload).metric("bdSeq").value == 0


def test_rebirth_on_ncmd_restarts_seq_and_carries_current_values(tmp_path: Path) -> None:
    fmt, _ = started(tmp_path)
    fmt.encode([Reading("press-1", "temperature", 21.5, T0), Reading("press-1", "count", -7, T0)], False)
    fmt.encode([Reading("press-1", "temperature", 22.0, T0 + 5)], False)
    incoming = fmt.handle_incoming(f"spBv1.0/{G}/NCMD/{N}", REBIRTH)
    assert [kind(m) for m in incoming.messages] == ["NBIRTH", "DBIRTH", "DBIRTH"]
    nbirth, dbirth = (sp.decode(m.payload) for m in incoming.messages[:2])
    assert (nbirth.seq, dbirth.seq) == (0, 1)
    assert nbirth.metric("bdSeq").value == fmt.bd_seq  # same session, same bdSeq
    assert dbirth.metric("temperature").value == 22.0 and dbirth.metric("temperature").timestamp == T0 + 5
    assert dbirth.metric("count").value == -7
    assert dbirth.metric("run").is_null
    # A rebirth request that is false, or a stranger's topic, changes nothing.
    no = sp.command([sp.command_metric(False, sp.BOOLEAN, name="Node Control/Rebirth")])
    assert fmt.handle_incoming(f"spBv1.0/{G}/NCMD/{N}", no).messages == []
    assert fmt.handle_incoming(f"spBv1.0/{G}/NCMD/{N}", b"\xff\xff garbage").messages == []


def test_device_outage_gives_ddeath_and_a_dbirth_when_back(tmp_path: Path) -> None:
    fmt, _ = started(tmp_path)
    fmt.encode([Reading("press-1", "temperature", 21.5, T0)], False)
    bad = fmt.encode([Reading("press-1", "temperature", 21.5, T0 + 10, "bad", "timeout")], False)
    assert sp.decode(bad[0].payload).metrics[0].properties == {"Quality": 0}
    death = fmt.device_state(DeviceState("press-1", False, "timeout"))
    assert [m.topic for m in death] == [f"spBv1.0/{G}/DDEATH/{N}/press-1"]
    assert fmt.device_state(DeviceState("press-1", False)) == []  # already dead
    back = fmt.device_state(DeviceState("press-1", True))
    assert [kind(m) for m in back] == ["DBIRTH"]
    birth = sp.decode(back[0].payload)
    assert birth.metric("temperature").value == 21.5
    assert birth.metric("temperature").properties["Quality"] == 0
    good = fmt.encode([Reading("press-1", "temperature", 21.7, T0 + 20)], False)
    assert [kind(m) for m in good] == ["DDATA"]
    assert sp.decode(good[0].payload).metrics[0].properties == {"Quality": 192}  # back to good, said once
    again = fmt.encode([Reading("press-1", "temperature", 21.8, T0 + 30)], False)
    assert sp.decode(again[0].payload).metrics[0].properties == {}
    seqs = [sp.decode(m.payload).seq for m in death + back + good + again]
    assert seqs[0] is not None and seqs == list(range(seqs[0], seqs[0] + 4))


def test_historical_readings_are_flagged_and_do_not_update_the_live_value(tmp_path: Path) -> None:
    fmt, _ = started(tmp_path)
    fmt.encode([Reading("press-1", "count", 5, T0 + 100)], False)
    out = fmt.encode([Reading("press-1", "count", 1, T0), Reading("press-1", "count", 2, T0 + 1)], True)
    data = sp.decode(out[0].payload)
    assert [(m.value, m.is_historical) for m in data.metrics] == [(1, True), (2, True)]
    # An older reading in a live batch cannot move the host's live value backwards either.
    late = sp.decode(fmt.encode([Reading("press-1", "count", 3, T0 + 50)], False)[0].payload)
    assert late.metrics[0].is_historical
    rebirth = fmt.handle_incoming(f"spBv1.0/{G}/NCMD/{N}", REBIRTH)
    assert sp.decode(rebirth.messages[1].payload).metric("count").value == 5


def test_a_new_session_births_with_the_newest_readings_handed_off(tmp_path: Path) -> None:
    fmt, _ = started(tmp_path)
    fmt.observe([Reading("press-1", "count", 1, T0)])
    fmt.encode([Reading("press-1", "count", 1, T0)], False)
    fmt.observe([Reading("press-1", "count", 2, T0 + 1), Reading("press-1", "temperature", 22.5, T0 + 1)])
    # ...still in the live lane when the session is lost, then replayed as history
    fmt.connection_lost(graceful=False)
    outage = [Reading("press-1", "count", i, T0 + i) for i in range(3, 6)]
    outage.append(Reading("oven-2", "setpoint", 180.5, T0 + 3))
    fmt.observe(outage)  # as they reach the forwarder, on their way to the disk buffer
    fmt.will()
    births = fmt.connected()
    press, oven = device_births(births)["press-1"], device_births(births)["oven-2"]
    assert (press.metric("count").value, press.metric("count").timestamp) == (5, T0 + 5)
    assert press.metric("temperature").value == 22.5
    assert (oven.metric("setpoint").datatype, oven.metric("setpoint").value) == (sp.DOUBLE, 180.5)
    replayed = fmt.encode(outage, True)
    assert [kind(m) for m in replayed] == ["DDATA", "DDATA"]
    assert all(metric.is_historical for m in replayed for metric in sp.decode(m.payload).metrics)
    fmt.observe([Reading("press-1", "count", 99, T0 + 99)])  # not yet published
    live = sp.decode(fmt.encode([Reading("press-1", "count", 6, T0 + 6)], False)[0].payload)
    assert [(m.value, m.is_historical) for m in live.metrics] == [(6, False)]
    rebirth = fmt.handle_incoming(f"spBv1.0/{G}/NCMD/{N}", REBIRTH).messages
    assert sp.decode(rebirth[1].payload).metric("count").value == 6  # a rebirth keeps the stream's order


def test_history_of_an_offline_device_is_framed_by_birth_and_death(tmp_path: Path) -> None:
    fmt = SparkplugFormat(config(tmp_path), settle=0)
    fmt.will()
    fmt.device_state(DeviceState("press-1", True))
    fmt.device_state(DeviceState("press-1", False))  # while disconnected: only taken note of
    births = fmt.connected()
    assert [kind(m) for m in births] == ["NBIRTH", "DBIRTH", "DBIRTH", "DDEATH"]
    assert births[3].topic.endswith("/press-1")
    out = fmt.encode([Reading("press-1", "count", 1, T0)], True)
    assert [kind(m) for m in out] == ["DBIRTH", "DDATA", "DDEATH"]
    assert sp.decode(out[1].payload).metrics[0].is_historical


def test_datatypes_known_before_the_birth_are_announced_by_it(tmp_path: Path) -> None:
    fmt = SparkplugFormat(config(tmp_path), settle=0)
    # A scaled int16 (21.5) does not fit Int16, OPC UA tags have no type in the catalog: the
    # readings that reached the forwarder before the session decide.
    fmt.observe([Reading("press-1", "count", 21.5, T0), Reading("oven-2", "setpoint", 180, T0),
                 Reading("oven-2", "batch", "B-17", T0)])
    fmt.will()
    births = device_births(fmt.connected())
    assert births["press-1"].metric("count").datatype == sp.DOUBLE
    assert births["press-1"].metric("temperature").datatype == sp.FLOAT  # the catalog's
    assert (births["oven-2"].metric("setpoint").datatype, births["oven-2"].metric("batch").datatype) == (
        sp.INT64, sp.STRING)
    assert fmt.node.type_changes == 1  # int16 -> Double; OPC UA tags only settled


def test_a_datatype_change_makes_the_node_born_again_once_per_batch(tmp_path: Path) -> None:
    fmt, births = started(tmp_path)
    assert device_births(births)["oven-2"].metrics == []  # no datatype known yet: not born
    batch = [Reading("oven-2", "setpoint", 180.5, T0), Reading("press-1", "count", 21.5, T0),
             Reading("oven-2", "batch", 7, T0 + 1), Reading("oven-2", "setpoint", 181, T0 + 2)]
    out = fmt.encode(batch, False)
    # All DBIRTHs again right after an NBIRTH (same bdSeq), then the data, never a wrongly typed value.
    assert [kind(m) for m in out] == ["NBIRTH", "DBIRTH", "DBIRTH", "DDATA", "DDATA"]
    assert sp.decode(out[0].payload).seq == 0 and bdseq(out[0]) == fmt.bd_seq
    reborn = device_births(out)
    assert reborn["oven-2"].metric("setpoint").datatype == sp.DOUBLE
    assert reborn["oven-2"].metric("setpoint").value == 180.5  # the birth carried the first value
    assert reborn["oven-2"].metric("batch").datatype == sp.INT64
    assert reborn["press-1"].metric("count").datatype == sp.DOUBLE
    oven = sp.decode(next(m for m in out if kind(m) == "DDATA" and m.topic.endswith("oven-2")).payload)
    assert [m.value for m in oven.metrics] == [7, 181.0]  # an int travels as the Double it now is
    assert fmt.node.birth_count == 2
    again = fmt.encode([Reading("oven-2", "setpoint", 182, T0 + 3)], False)
    assert [kind(m) for m in again] == ["DDATA"]


@pytest.mark.parametrize(
    ("value", "datatype"),
    [
        (-5, sp.INT64),
        (2**64 - 1, sp.UINT64),
        ([1.5, -2.0], sp.DOUBLE_ARRAY),
        ([3, -4], sp.INT64_ARRAY),
        ([True, False, False, True, True, False, True, False, True], sp.BOOLEAN_ARRAY),
        (["a", "bc", ""], sp.STRING_ARRAY),
    ],
)
def test_values_round_trip_through_an_independent_decoder(tmp_path: Path, value: Any, datatype: int) -> None:
    fmt = SparkplugFormat(config(tmp_path), settle=0)
    fmt.observe([Reading("oven-2", "batch", value, T0)])
    fmt.will()
    birth = device_births(fmt.connected())["oven-2"]
    out = fmt.encode([Reading("oven-2", "batch", value, T0 + 1)], False)
    data = sp.decode(out[-1].payload)
    assert birth.metric("batch").datatype == datatype
    metric = data.metrics[0]
    if isinstance(value, list):
        assert sp.unpack_array(datatype, metric.value) == value
    else:
        assert sp.signed(metric.value, datatype) == value  # data messages carry no datatype: the birth's


def test_signed_catalog_types_travel_as_twos_complement(tmp_path: Path) -> None:
    fmt, _ = started(tmp_path)
    out = fmt.encode([Reading("press-1", "count", -2, T0)], False)
    metric = sp.decode(out[0].payload).metrics[0]
    assert metric.value_field == 10  # int_value
    assert metric.value == 0xFFFFFFFE and sp.signed(metric.value, sp.INT16) == -2


def test_tags_and_devices_outside_the_catalog_are_added_with_new_aliases(tmp_path: Path) -> None:
    fmt, births = started(tmp_path)
    known = {m.alias for b in device_births(births).values() for m in b.metrics}
    out = fmt.encode([Reading("press-1", "pressure", 2.5, T0 + 1), Reading("mixer-9", "speed", 3, T0)], False)
    assert [kind(m) for m in out] == ["NBIRTH", "DBIRTH", "DBIRTH", "DBIRTH", "DDATA", "DDATA"]
    reborn = device_births(out)
    pressure, speed = reborn["press-1"].metric("pressure"), reborn["mixer-9"].metric("speed")
    assert (pressure.datatype, speed.datatype) == (sp.DOUBLE, sp.INT64)
    assert len({pressure.alias, speed.alias}) == 2 and {pressure.alias, speed.alias}.isdisjoint(known)
    data = {m.topic.rsplit("/", 1)[-1]: sp.decode(m.payload).metrics[0] for m in out[4:]}
    assert (data["press-1"].alias, data["press-1"].value) == (pressure.alias, 2.5)
    assert (data["mixer-9"].alias, data["mixer-9"].value) == (speed.alias, 3)


def test_primary_host_state_gates_births_and_offline_ends_the_session(tmp_path: Path) -> None:
    fmt, (will, *births) = started(tmp_path, primary_host="scada-a")
    state = "spBv1.0/STATE/scada-a"
    assert (state, 1) in fmt.subscriptions()
    assert births == [] and not fmt.ready
    offline = fmt.handle_incoming(state, orjson.dumps({"online": False, "timestamp": T0}))
    assert offline.messages == [] and not offline.reconnect
    online = fmt.handle_incoming(state, orjson.dumps({"online": True, "timestamp": T0 + 1}))
    assert [kind(m) for m in online.messages] == ["NBIRTH", "DBIRTH", "DBIRTH"] and fmt.ready
    stale = fmt.handle_incoming(state, orjson.dumps({"online": False, "timestamp": T0}))
    assert stale.messages == [] and fmt.ready  # older than the online one: ignored
    gone = fmt.handle_incoming(state, orjson.dumps({"online": False, "timestamp": T0 + 2}))
    assert gone.reconnect and [kind(m) for m in gone.messages] == ["NDEATH"]
    assert bdseq(gone.messages[0]) == bdseq(will)
    assert not fmt.ready
    fmt.connection_lost(graceful=True)
    fmt.will()
    assert fmt.connected() == []  # a new session waits for a fresh STATE
    again = fmt.handle_incoming(state, orjson.dumps({"online": True, "timestamp": T0 + 3}))
    assert sp.decode(again.messages[0].payload).metric("bdSeq").value == 1
    assert fmt.handle_incoming(state, b"not json").messages == []


def test_a_tag_with_neither_a_catalog_type_nor_a_value_is_not_born_until_its_first_value(
    tmp_path: Path,
) -> None:
    fmt = SparkplugFormat(config(tmp_path), settle=0)
    fmt.observe([Reading("oven-2", "batch", None, T0, "bad", "BadNodeIdUnknown")])
    fmt.will()
    births = fmt.connected()
    assert device_births(births)["oven-2"].metrics == []  # a birth must give a datatype: none known
    # A reading without a value changes nothing the host knows of; the first value births it.
    assert fmt.encode([Reading("oven-2", "batch", None, T0 + 1, "bad", "BadNodeIdUnknown")], False) == []
    out = fmt.encode([Reading("oven-2", "batch", 42, T0 + 2)], False)
    assert [kind(m) for m in out] == ["NBIRTH", "DBIRTH", "DBIRTH"]
    batch = device_births(out)["oven-2"].metric("batch")
    assert (batch.datatype, batch.value, batch.timestamp) == (sp.INT64, 42, T0 + 2)  # the birth carried it
    assert fmt.node.type_changes == 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_first_birth_waits_for_the_first_values_of_untyped_tags(tmp_path: Path) -> None:
    clock = Clock()
    fmt = SparkplugFormat(config(tmp_path), settle=5.0, clock=clock)
    fmt.will()
    assert fmt.connected() == [] and not fmt.ready  # oven-2's tags have no datatype yet
    readings = [Reading("press-1", "count", 3, T0), Reading("oven-2", "setpoint", 180.5, T0)]
    fmt.observe(readings)
    clock.now += 1
    assert fmt.tick() == []  # oven-2/batch not heard from yet
    fmt.observe([Reading("oven-2", "batch", "B-17", T0 + 1)])
    births = fmt.tick()
    assert [kind(m) for m in births] == ["NBIRTH", "DBIRTH", "DBIRTH"] and fmt.ready
    oven = device_births(births)["oven-2"]
    assert (oven.metric("setpoint").datatype, oven.metric("setpoint").value) == (sp.DOUBLE, 180.5)
    assert (oven.metric("batch").datatype, oven.metric("batch").value) == (sp.STRING, "B-17")
    # The readings held meanwhile go out (as history, from the buffer) without another birth.
    out = fmt.encode([*readings, Reading("oven-2", "batch", "B-17", T0 + 1)], True)
    assert [kind(m) for m in out] == ["DDATA", "DDATA"]
    assert fmt.node.birth_count == 1 and fmt.tick() == []


def test_the_settle_wait_is_bounded_and_happens_once(tmp_path: Path) -> None:
    clock = Clock()
    fmt = SparkplugFormat(config(tmp_path), settle=5.0, clock=clock)
    fmt.will()
    assert fmt.connected() == []
    fmt.observe([Reading("oven-2", "setpoint", 180.5, T0)])
    clock.now += 4.9
    assert fmt.tick() == []
    clock.now += 0.2  # past the settle time: born without the tag that never answered
    births = fmt.tick()
    assert [kind(m) for m in births] == ["NBIRTH", "DBIRTH", "DBIRTH"]
    assert [m.name for m in device_births(births)["oven-2"].metrics] == ["setpoint"]
    fmt.connection_lost(graceful=False)
    fmt.will()
    assert [kind(m) for m in fmt.connected()] == ["NBIRTH", "DBIRTH", "DBIRTH"]  # no wait again


def test_a_primary_host_online_during_the_settle_wait_gets_the_births_when_it_ends(tmp_path: Path) -> None:
    clock = Clock()
    fmt = SparkplugFormat(config(tmp_path, primary_host="scada-a"), settle=5.0, clock=clock)
    fmt.will()
    assert fmt.connected() == []
    online = fmt.handle_incoming("spBv1.0/STATE/scada-a", orjson.dumps({"online": True, "timestamp": T0}))
    assert online.messages == [] and fmt.tick() == []
    fmt.observe([Reading("oven-2", "setpoint", 180.5, T0), Reading("oven-2", "batch", 3, T0)])
    assert [kind(m) for m in fmt.tick()] == ["NBIRTH", "DBIRTH", "DBIRTH"]


def test_births_held_by_the_settle_wait_are_never_sent_after_the_session_ends(tmp_path: Path) -> None:
    clock = Clock()
    fmt = SparkplugFormat(config(tmp_path), settle=5.0, clock=clock)
    fmt.will()
    assert fmt.connected() == []
    fmt.connection_lost(graceful=False)
    clock.now += 10
    assert fmt.tick() == [] and not fmt.ready  # no session: nothing to be born in
    fmt.will()
    assert [kind(m) for m in fmt.connected()] == ["NBIRTH", "DBIRTH", "DBIRTH"]


def test_datatypes_learned_from_values_survive_a_restart_of_the_forwarder(tmp_path: Path) -> None:
    fmt, _ = started(tmp_path)
    fmt.encode([Reading("oven-2", "setpoint", 180.5, T0), Reading("oven-2", "batch", "B-17", T0)], False)
    fmt.tick()  # a datatype learned is saved with the bdSeq
    state = orjson.loads((tmp_path / "buffer" / "sparkplug.json").read_bytes())
    assert sorted(state["datatypes"]) == [["oven-2", "batch", "String"], ["oven-2", "setpoint", "Double"]]
    clock = Clock()
    again = SparkplugFormat(config(tmp_path), settle=5.0, clock=clock)  # restarted: no value yet
    again.will()
    births = again.connected()  # nothing to wait for: every datatype is known
    oven = device_births(births)["oven-2"]
    assert [(m.name, m.datatype, m.is_null) for m in oven.metrics] == [
        ("setpoint", sp.DOUBLE, True), ("batch", sp.STRING, True)]
    out = again.encode([Reading("oven-2", "setpoint", 181.0, T0 + 5)], False)
    assert [kind(m) for m in out] == ["DDATA"]  # born with the right datatype: no rebirth
    # A learned datatype that no longer fits (the node was changed) is changed as any other.
    changed = again.encode([Reading("oven-2", "batch", 7, T0 + 6)], False)
    assert [kind(m) for m in changed][:3] == ["NBIRTH", "DBIRTH", "DBIRTH"]


def test_a_state_file_that_cannot_be_written_holds_up_no_birth(tmp_path: Path) -> None:
    clock = Clock()
    fmt = SparkplugFormat(config(tmp_path), settle=5.0, clock=clock)
    fmt.will()
    assert fmt.connected() == []
    fmt.observe([Reading("oven-2", "setpoint", 180.5, T0), Reading("oven-2", "batch", 3, T0)])
    fmt.node.types_version += 1  # as if a datatype had been learned meanwhile
    state = tmp_path / "buffer" / "sparkplug.json"
    state.unlink()
    state.mkdir()  # os.replace onto a directory fails
    assert [kind(m) for m in fmt.tick()] == ["NBIRTH", "DBIRTH", "DBIRTH"]


def test_a_damaged_list_of_learned_datatypes_is_ignored(tmp_path: Path) -> None:
    state = tmp_path / "buffer" / "sparkplug.json"
    state.parent.mkdir(parents=True)
    state.write_bytes(orjson.dumps({"bdSeq": 4, "datatypes": [
        ["oven-2", "setpoint", "NoSuchType"], ["oven-2"], "x", ["press-1", "count", "Double"],
        ["nosuch", "tag", "Double"], ["oven-2", "batch", "Int64"]]}))
    fmt = SparkplugFormat(config(tmp_path), settle=0)
    will = fmt.will()
    assert will is not None and bdseq(will) == 5
    births = device_births(fmt.connected())
    assert births["press-1"].metric("count").datatype == sp.INT16  # the catalog's wins
    assert [(m.name, m.datatype) for m in births["oven-2"].metrics] == [("batch", sp.INT64)]


def test_dcmd_becomes_a_typed_write_and_its_result_publishes_nothing(tmp_path: Path) -> None:
    fmt, births = started(tmp_path)
    birth = device_births(births)["press-1"]
    dcmd = f"spBv1.0/{G}/DCMD/{N}/press-1"
    incoming = fmt.handle_incoming(dcmd, sp.command([
        sp.command_metric(1, sp.INT32, name="run"),  # an int for a bool tag: converted
        sp.command_metric("R-9", sp.STRING, alias=birth.metric("recipe").alias),
    ]))
    assert [(w.device, w.tag, w.value) for w in incoming.writes] == [("press-1", "run", True),
                                                                    ("press-1", "recipe", "R-9")]
    assert incoming.writes[0].id != incoming.writes[1].id
    # The host learns the value the device holds from the collector's read-back, not the command.
    assert fmt.write_result(WriteResult(incoming.writes[0].id, "press-1", "run", True)) == []
    assert fmt.stats.writes_done == 1
    failed = WriteResult(incoming.writes[1].id, "press-1", "recipe", False, "device error")
    assert fmt.write_result(failed) == []
    assert fmt.stats.write_errors == 1


def test_dcmd_to_a_tag_of_unknown_type_keeps_the_commands_type(tmp_path: Path) -> None:
    fmt, births = started(tmp_path)
    assert device_births(births)["oven-2"].metrics == []  # no value yet: no datatype, not born
    incoming = fmt.handle_incoming(f"spBv1.0/{G}/DCMD/{N}/oven-2", sp.command([
        sp.command_metric(181.5, sp.DOUBLE, name="setpoint")]))
    assert [(w.tag, w.value) for w in incoming.writes] == [("setpoint", 181.5)]


@pytest.mark.parametrize(
    ("metric", "why"),
    [
        (sp.command_metric(5, sp.INT16, name="count"), "not writable"),
        (sp.command_metric(1.5, sp.DOUBLE, name="run"), "not a bool"),
        (sp.command_metric(1, sp.INT32, name="nosuch"), "unknown metric"),
    ],
)
def test_dcmd_refusals_make_no_write(tmp_path: Path, metric: bytes, why: str) -> None:
    fmt, _ = started(tmp_path)
    fmt.encode([Reading("press-1", "count", 1, T0)], False)
    incoming = fmt.handle_incoming(f"spBv1.0/{G}/DCMD/{N}/press-1", sp.command([metric]))
    assert incoming.writes == [], why
    assert fmt.stats.commands_refused == 1


def test_disconnecting_says_ndeath_with_the_session_bdseq(tmp_path: Path) -> None:
    fmt, (will, *_) = started(tmp_path)
    goodbye = fmt.disconnecting()
    assert [m.topic for m in goodbye] == [will.topic]
    assert bdseq(goodbye[0]) == bdseq(will)
    assert not fmt.ready


def test_an_unreadable_state_file_starts_bdseq_again_at_0(tmp_path: Path) -> None:
    state = tmp_path / "buffer" / "sparkplug.json"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"{not json")
    fmt = SparkplugFormat(config(tmp_path), settle=0)
    will = fmt.will()
    assert will is not None and bdseq(will) == 0
    assert orjson.loads(state.read_bytes()) == {"bdSeq": 0, "datatypes": []}


def test_legacy_text_state_is_understood(tmp_path: Path) -> None:
    fmt, _ = started(tmp_path, primary_host="scada-a")
    online = fmt.handle_incoming("spBv1.0/STATE/scada-a", b"ONLINE")
    assert kind(online.messages[0]) == "NBIRTH"
    assert fmt.handle_incoming("spBv1.0/STATE/scada-a", b"OFFLINE").reconnect


def test_a_large_backlog_is_split_into_bounded_messages_in_order(tmp_path: Path) -> None:
    fmt, _ = started(tmp_path)
    backlog = [Reading("press-1", "count", i % 30000, T0 + i) for i in range(4500)]
    out = fmt.encode(backlog, True)
    assert [kind(m) for m in out] == ["DDATA", "DDATA", "DDATA"]
    metrics = [metric for m in out for metric in sp.decode(m.payload).metrics]
    assert [len(sp.decode(m.payload).metrics) for m in out] == [2000, 2000, 500]
    assert [m.timestamp for m in metrics] == [T0 + i for i in range(4500)]
    seqs = [sp.decode(m.payload).seq for m in out]
    assert seqs == [3, 4, 5]


def test_a_float32_tag_with_a_value_beyond_float32_becomes_double(tmp_path: Path) -> None:
    fmt, _ = started(tmp_path)
    fmt.encode([Reading("press-1", "temperature", 21.5, T0)], False)
    out = fmt.encode([Reading("press-1", "temperature", 1e300, T0 + 1)], False)
    assert [kind(m) for m in out] == ["NBIRTH", "DBIRTH", "DBIRTH"]
    birth = device_births(out)["press-1"]
    assert (birth.metric("temperature").datatype, birth.metric("temperature").value) == (sp.DOUBLE, 1e300)
    assert fmt.node.type_changes == 1


def test_data_before_the_birth_is_a_bug_of_the_caller(tmp_path: Path) -> None:
    fmt = SparkplugFormat(config(tmp_path, primary_host="scada-a"), settle=0)
    fmt.will()
    assert fmt.connected() == [] and not fmt.ready
    with pytest.raises(RuntimeError, match="before the NBIRTH"):
        fmt.encode([Reading("press-1", "count", 1, T0)], False)
