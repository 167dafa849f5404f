"""The Sparkplug edge node taking a new catalog in place (pure, no I/O): only the changed devices
are told (DBIRTH / DDEATH), aliases of what stays are kept, seq goes on; an OPC UA tag added
while running joins by its device's DBIRTH once its collector declares its datatype."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.core.model import DeviceState, DeviceTypes, Reading
from collectors.forwarder.config import CatalogDevice, ForwarderConfig
from collectors.forwarder.formats import CatalogChange, OutMessage
from collectors.forwarder.json_format import JsonFormat
from collectors.forwarder.sparkplug import SparkplugFormat
from tests.forwarder.test_sparkplug import T0, config, device_births, kind, started
from tests.support import sparkplug as sp

pytestmark = pytest.mark.unit


def catalog(fmt_config: ForwarderConfig, edit: dict[str, list[dict[str, object]] | None]) -> list[CatalogDevice]:
    """The config's catalog with devices replaced (a list of tags), removed (None) or added."""
    devices = {d.name: d for d in fmt_config.devices}
    for name, tags in edit.items():
        if tags is None:
            devices.pop(name)
        else:
            collector = devices[name].collector if name in devices else "modbus"
            devices[name] = CatalogDevice.model_validate({"name": name, "collector": collector, "tags": tags})
    return list(devices.values())


def reload(fmt: SparkplugFormat | JsonFormat, old: list[CatalogDevice], new: list[CatalogDevice]) -> list[OutMessage]:
    return fmt.reload(CatalogChange.between(old, new))


def where(message: OutMessage) -> tuple[str, str]:
    return kind(message), message.topic.rsplit("/", 1)[-1]


def seqs(messages: list[OutMessage]) -> list[int | None]:
    return [sp.decode(m.payload).seq for m in messages]


def test_only_the_changed_devices_are_born_and_aliases_stay(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    fmt, births = started(tmp_path)
    old_press = device_births(births)["press-1"]
    data = fmt.encode([Reading("press-1", "temperature", 21.5, T0)], False)
    new = catalog(cfg, {
        "press-1": [{"name": "temperature", "type": "float32", "unit": "K"}, {"name": "level", "type": "uint16"},
                    {"name": "run", "type": "bool", "writable": True}],
        "mill-3": [{"name": "speed", "type": "uint16", "unit": "rpm"}],
    })
    out = reload(fmt, cfg.devices, new)
    assert [where(m) for m in out] == [("DBIRTH", "press-1"), ("DBIRTH", "mill-3")]  # oven-2: nothing
    last = sp.decode(data[-1].payload).seq
    assert seqs(out) == [last + 1, last + 2]  # seq goes on
    press = sp.decode(out[0].payload)
    assert [m.name for m in press.metrics] == ["temperature", "level", "run"]
    assert press.metric("temperature").alias == old_press.metric("temperature").alias
    assert press.metric("temperature").value == 21.5  # its value carried over
    assert press.metric("temperature").properties["engUnit"] == "K"
    taken = {m.alias for m in old_press.metrics} | {m.alias for m in device_births(births)["oven-2"].metrics}
    assert press.metric("level").alias not in taken
    assert press.metric("level").is_null
    # the new metric's readings go out by its alias, no birth in between
    more = fmt.encode([Reading("press-1", "level", 7, T0 + 1), Reading("mill-3", "speed", 1500, T0 + 1)], False)
    assert [kind(m) for m in more] == ["DDATA", "DDATA"]
    assert sp.decode(more[0].payload).metrics[0].alias == press.metric("level").alias

    # a device removed: its DDEATH only; states it sends later are ignored, not a new device
    gone = reload(fmt, new, [d for d in new if d.name != "mill-3"])
    assert [where(m) for m in gone] == [("DDEATH", "mill-3")]
    assert fmt.device_state(DeviceState("mill-3", True)) == []
    assert "mill-3" not in fmt.node.devices


def test_a_catalog_change_before_the_birth_changes_the_model_only(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    fmt = SparkplugFormat(cfg, settle=0)
    new = catalog(cfg, {"press-1": [{"name": "level", "type": "uint16"}]})
    assert reload(fmt, cfg.devices, new) == []
    fmt.will()
    births = device_births(fmt.connected())
    assert [m.name for m in births["press-1"].metrics] == ["level"]


def test_an_offline_device_changed_is_born_when_it_answers(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    fmt, _ = started(tmp_path)
    fmt.device_state(DeviceState("press-1", False, "timeout"))
    new = catalog(cfg, {"press-1": [{"name": "level", "type": "uint16"}]})
    assert reload(fmt, cfg.devices, new) == []
    back = fmt.device_state(DeviceState("press-1", True))
    assert [where(m) for m in back] == [("DBIRTH", "press-1")]
    assert [m.name for m in sp.decode(back[0].payload).metrics] == ["level"]


def test_an_opcua_tag_added_joins_by_its_device_dbirth_when_declared(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    fmt, _ = started(tmp_path)
    fmt.encode([Reading("oven-2", "setpoint", 180.0, T0), Reading("oven-2", "batch", 3, T0)], False)
    new = catalog(cfg, {"oven-2": [{"name": "setpoint", "writable": True}, {"name": "batch"}, {"name": "zone"}]})
    assert reload(fmt, cfg.devices, new) == []  # `zone` has no datatype yet: nothing to tell
    declared = fmt.datatypes(DeviceTypes("oven-2", {"zone": "int16"}))
    assert [where(m) for m in declared] == [("DBIRTH", "oven-2")]  # the one birth; not the node, not press-1
    zone = sp.decode(declared[0].payload).metric("zone")
    assert zone.datatype == sp.INT16
    data = fmt.encode([Reading("oven-2", "zone", 4, T0 + 1)], False)
    assert [kind(m) for m in data] == ["DDATA"]
    assert sp.decode(data[0].payload).metrics[0].alias == zone.alias


def test_json_clears_the_retained_message_of_a_removed_tag_only_with_retain(tmp_path: Path) -> None:
    cfg = config(tmp_path).model_copy(update={"mqtt": config(tmp_path).mqtt.model_copy(
        update={"format": "json", "retain": True})})
    new = catalog(cfg, {"press-1": [{"name": "temperature", "type": "float32", "unit": "K"}], "oven-2": None})
    fmt = JsonFormat(cfg)
    assert reload(fmt, cfg.devices, new) == []  # not connected: kept for the next session
    online, *clears = fmt.connected()
    assert online.payload == b"online"
    assert [(m.topic, m.payload, m.retain) for m in clears] == [
        (f"fieldgate/line3/{d}/{t}", b"", True) for d, t in sorted(
            [("press-1", "count"), ("press-1", "run"), ("press-1", "recipe"), ("oven-2", "setpoint"),
             ("oven-2", "batch")])]
    assert fmt.encode([Reading("press-1", "temperature", 300.0, T0)], False)[0].payload.endswith(b'"unit":"K"}')
    plain = JsonFormat(cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"retain": False})}))
    plain.connected()
    assert reload(plain, cfg.devices, new) == []
