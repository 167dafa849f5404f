"""Sparkplug B from a whole plant: pymodbus and OPC UA servers -> real collectors -> forwarder -> Mosquitto.

The config directory is read by the gateway (`load_config`) and every component runs on the
slice `fieldgate up` would hand it, as its own process; what a host application reads is
decoded with tests/support/sparkplug.py, never with the forwarder's encoder. These are the
behaviours a host notices: how many times the node is born at start-up, the datatypes it is
told, whether a DCMD a json `/set` would accept is accepted, and which value it shows live
after a write the device clamps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.compose import slice_text
from gateway.config import collector_slices, forwarder_slice, load_config
from tests.forwarder.test_sparkplug_mqtt import GROUP, NODE, Spb, node_messages, replay
from tests.opcua.support import SimulatorProcess
from tests.support import sparkplug as sp
from tests.support.broker import Mosquitto, free_port
from tests.support.entry import start_entry_point, stop_entry_point
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parents[2]
LIMIT_ADDRESS, LIMIT_RAW_MAX = 1, 20000  # the device clamps its `limit` register to 200.00

PRESS_TAGS: list[dict[str, Any]] = [
    {"name": "pressure", "table": "holding", "address": 0, "type": "uint16", "scale": 0.01, "unit": "bar"},
    {"name": "limit", "table": "holding", "address": LIMIT_ADDRESS, "type": "uint16", "scale": 0.01,
     "writable": True},
    {"name": "flow", "table": "holding", "address": 2, "type": "int16", "scale": 10},
    {"name": "level", "table": "holding", "address": 3, "type": "uint16", "offset": 0.5},
    {"name": "temperature", "table": "holding", "address": 4, "type": "float32"},
    {"name": "run", "table": "coil", "address": 0, "type": "bool", "writable": True},
]
REGISTERS = [("holding", 0, [20000]),  # pressure 200.0: a whole number, as a scaled uint16 often is
             ("holding", 1, [15000]),  # limit 150.0
             ("holding", 2, [7]),  # flow 70
             ("holding", 3, [4]),  # level 4.5
             ("holding", 4, [0x41AC, 0x0000]),  # temperature 21.5
             ("coil", 0, [True])]
FC = {"coil": 1, "holding": 3}


def oven(port: int) -> dict[str, Any]:
    return {
        "name": "oven-2", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{port}",
        "subscription": {"publishing_interval": "100ms", "sampling_interval": "50ms"},
        "tags": [
            {"name": "temperature", "node": "ns=2;s=Oven.Temperature", "unit": "degC",
             "simulate": {"kind": "ramp", "min": 0, "max": 100, "period": "5s"}},
            {"name": "setpoint", "node": "ns=2;s=Oven.Setpoint", "writable": True,
             "simulate": {"kind": "constant", "value": 180.0}},
            {"name": "running", "node": "ns=2;i=2001", "simulate": {"kind": "constant", "value": True}},
            {"name": "recipe", "node": "ns=2;s=Oven.Recipe", "simulate": {"kind": "constant", "value": "R-17"}},
        ],
    }


async def clamp(function_code: int, start_address: int, address: int, count: int,
                current_registers: list[int], set_values: list[int] | list[bool] | None) -> None:
    """The device takes at most 200.00 in its `limit` register, as a drive clamps a setpoint."""
    if set_values is not None and function_code in (6, 16):
        for i in range(len(set_values)):
            if address + i == LIMIT_ADDRESS:
                set_values[i] = min(int(set_values[i]), LIMIT_RAW_MAX)


@dataclass
class Plant:
    subscriber: Subscriber
    modbus: ModbusTcpServer

    async def register(self, address: int) -> int:
        return int((await self.modbus.async_getValues(1, FC["holding"], address, 1))[0])


@pytest.fixture
def oven_sim(tmp_path: Path) -> Iterator[dict[str, Any]]:
    port = free_port()
    device = oven(port)
    sim = SimulatorProcess(device, tmp_path, port).start()
    try:
        yield device
    finally:
        sim.stop()


@pytest.fixture
async def plant(tmp_path: Path, broker: Mosquitto, subscriber: Subscriber,
                oven_sim: dict[str, Any]) -> AsyncIterator[Plant]:
    blocks = ([SimData(0, count=16, values=False, datatype=DataType.BITS)],
              [SimData(0, count=16, values=False, datatype=DataType.BITS)],
              [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
              [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)])
    modbus_port = free_port()
    modbus = ModbusTcpServer([SimDevice(id=1, simdata=blocks, action=clamp)], address=("127.0.0.1", modbus_port))
    await modbus.serve_forever(background=True)
    for table, address, values in REGISTERS:
        await modbus.async_setValues(1, FC[table], address, values)

    plant_dir = tmp_path / "plant"
    (plant_dir / "devices").mkdir(parents=True)
    (plant_dir / "gateway.yaml").write_text(yaml.safe_dump({
        "gateway": {"id": NODE, "group": GROUP},
        "mqtt": {"host": broker.host, "port": broker.port, "format": "sparkplug", "keepalive": "5s"},
        "buffer": {"dir": str(tmp_path / "buffer")},
        "runtime": "process",
    }))
    (plant_dir / "devices" / "press-1.yaml").write_text(yaml.safe_dump({
        "name": "press-1", "protocol": "modbus", "poll": "200ms", "timeout": "500ms",
        "connection": {"tcp": {"host": "127.0.0.1", "port": modbus_port}}, "tags": PRESS_TAGS,
    }))
    (plant_dir / "devices" / "oven-2.yaml").write_text(yaml.safe_dump(oven_sim))
    config = load_config(plant_dir)
    socket = tmp_path / "handoff.sock"
    forwarder = forwarder_slice(config, socket)
    forwarder = forwarder.model_copy(update={"metrics": forwarder.metrics.model_copy(update={"port": None})})
    slices = {"forwarder": forwarder, **collector_slices(config, socket, tmp_path / "state", None)}
    procs = []
    try:
        # As `fieldgate up` does: the forwarder first, the collectors right after it.
        for name, module in (("forwarder", "collectors.forwarder"), ("modbus", "collectors.modbus"),
                             ("opcua", "collectors.opcua")):
            file = tmp_path / f"{name}.yaml"
            file.write_text(slice_text(slices[name]))
            log = tmp_path / f"{name}.log"
            procs.append((start_entry_point(module, file, log), log))
        yield Plant(subscriber, modbus)
    finally:
        for proc, log in reversed(procs):
            stop_entry_point(proc, log)
        await modbus.shutdown()


async def wait_for(plant: Plant, predicate: Any, within: float = 30.0, count: int = 1) -> list[Spb]:
    def matches(message: Any) -> bool:
        levels = message.topic.split("/")
        if levels[:2] != ["spBv1.0", GROUP] or len(levels) < 4 or levels[3] != NODE or "CMD" in levels[2]:
            return False
        spb = Spb(levels[2], levels[4] if len(levels) > 4 else None, sp.decode(message.payload), message)
        return bool(predicate(spb))

    found = await asyncio.to_thread(plant.subscriber.wait_for, matches, within, count)
    return [m for m in node_messages(plant.subscriber) if any(m.message is f for f in found)]


def last_birth(plant: Plant, device: str) -> sp.Payload:
    return [m for m in node_messages(plant.subscriber) if m.kind == "DBIRTH" and m.device == device][-1].payload


def dcmd(device: str, metrics: list[bytes]) -> tuple[str, bytes]:
    return f"spBv1.0/{GROUP}/DCMD/{NODE}/{device}", sp.command(metrics)


async def test_start_up_births_the_node_once_with_the_datatypes_of_the_values(plant: Plant) -> None:
    # Every tag of both devices has reached the host, and the oven's ramp has moved on since.
    await wait_for(plant, lambda m: m.kind == "DDATA" and m.device == "oven-2", count=3)
    await wait_for(plant, lambda m: m.kind == "DDATA" and m.device == "press-1")
    await plant.modbus.async_setValues(1, FC["holding"], 0, [19897])  # pressure 198.97
    (moved,) = await wait_for(plant, lambda m: m.kind == "DDATA" and m.device == "press-1" and any(
        metric.value == 198.97 for metric in m.payload.metrics))
    messages = node_messages(plant.subscriber)
    assert [m.kind for m in messages].count("NBIRTH") == 1, [m.kind for m in messages[:12]]
    press, oven = last_birth(plant, "press-1"), last_birth(plant, "oven-2")
    assert {m.name: m.datatype for m in press.metrics} == {
        "pressure": sp.DOUBLE,  # uint16 x 0.01: 200.0 now, 198.97 later
        "limit": sp.DOUBLE,
        "flow": sp.INT32,  # int16 x 10 reaches 327670
        "level": sp.DOUBLE,  # uint16 + 0.5
        "temperature": sp.FLOAT,
        "run": sp.BOOLEAN,
    }
    # The values: in the birth, or (a Modbus collector that joined the hand-off after the birth,
    # whose datatypes the catalog gave) in its first DDATA.
    first_values = {m.name: m.value for m in press.metrics if not m.is_null}
    if len(first_values) < len(press.metrics):
        names = {m.alias: m.name for m in press.metrics}
        first = next(m for m in messages if m.kind == "DDATA" and m.device == "press-1")
        first_values.update({names[x.alias]: x.value for x in first.payload.metrics
                             if x.alias in names and names[x.alias] not in first_values})
    assert first_values == {
        "pressure": 200.0, "limit": 150.0, "flow": 70, "level": 4.5, "temperature": 21.5, "run": True}
    # The OPC UA tags' datatypes come from their values: every one is in the one birth.
    assert {m.name: m.datatype for m in oven.metrics} == {
        "temperature": sp.DOUBLE, "setpoint": sp.DOUBLE, "running": sp.BOOLEAN, "recipe": sp.STRING}
    host, _ = replay(messages)
    assert ("pressure", 198.97, False) in host.values(moved)


async def test_dcmd_to_a_scaled_tag_takes_a_fraction_and_the_host_shows_what_the_device_holds(
    plant: Plant,
) -> None:
    (birth,) = await wait_for(plant, lambda m: m.kind == "DBIRTH" and m.device == "press-1", within=30)
    await wait_for(plant, lambda m: m.kind == "DDATA" and m.device == "oven-2")  # the node is born for good
    limit = birth.payload.metric("limit").alias
    # Births do not wait for Modbus readings (their datatypes come from the catalog): a DCMD
    # before the Modbus collector has joined the hand-off is refused. Wait for its first value.
    await wait_for(plant, lambda m: m.kind in ("DBIRTH", "DDATA") and m.device == "press-1" and any(
        metric.alias == limit and not metric.is_null for metric in m.payload.metrics))
    # 210.5 is a value json /set takes for this tag (raw 21050); the device clamps it to 200.00.
    await asyncio.to_thread(plant.subscriber.publish, *dcmd("press-1", [
        sp.command_metric(210.5, sp.DOUBLE, alias=limit)]), 0)
    await wait_for(plant, lambda m: m.kind == "DDATA" and m.device == "press-1" and any(
        metric.alias == limit and metric.value == 200.0 for metric in m.payload.metrics))
    assert await plant.register(LIMIT_ADDRESS) == LIMIT_RAW_MAX  # written (and clamped), not refused
    # Within the clamp: the device holds what was asked, a fraction.
    await asyncio.to_thread(plant.subscriber.publish, *dcmd("press-1", [
        sp.command_metric(123.45, sp.DOUBLE, name="limit")]), 0)
    await wait_for(plant, lambda m: m.kind == "DDATA" and m.device == "press-1" and any(
        metric.alias == limit and metric.value == 123.45 for metric in m.payload.metrics))
    assert await plant.register(LIMIT_ADDRESS) == 12345
    await asyncio.sleep(0.5)  # anything else the forwarder would say about these writes
    _, seen = replay(node_messages(plant.subscriber))
    limits = [(value, hist) for device, tag, value, hist in seen if device == "press-1" and tag == "limit"]
    changes = [v for i, (v, _) in enumerate(limits) if i == 0 or limits[i - 1][0] != v]
    # The host saw the values the device held, in order (the polls repeat them): never the
    # commanded 210.5, and the read-backs as live values, not history.
    assert changes == [150.0, 200.0, 123.45]
    assert not any(hist for v, hist in limits if v != 150.0)
    assert [m.kind for m in node_messages(plant.subscriber)].count("NBIRTH") == 1
