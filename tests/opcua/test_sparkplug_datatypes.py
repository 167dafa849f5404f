"""OPC UA datatypes reach a Sparkplug host as the nodes' own: simulator -> `python -m collectors.opcua`
-> `python -m collectors.forwarder` (Sparkplug B) -> Mosquitto, decoded with tests/support/sparkplug.py.

The collector reads each node's DataType and ValueRank when it subscribes and hands them off before
the first readings; the births declare them (Int16 stays Int16, not the Int64 an int suggests)."""
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import asyncio
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from asyncua import ua

from collectors.opcua.config import OpcuaDevice
from collectors.opcua.simulator import OpcuaSimulator
from tests.forwarder.test_sparkplug_mqtt import GROUP, NODE, Spb, node_messages
from tests.support import sparkplug as sp
from tests.support.broker import Mosquitto, free_port
from tests.support.entry import start_entry_point, stop_entry_point
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.sim

STAMP = datetime(2026, 11, 28, 8, 0, 0, 123000, tzinfo=UTC)
INT16_ARRAY, UINT32_ARRAY, FLOAT_ARRAY = 23, 28, 30
# tag -> (node, variant the server holds); added to the simulator's server next to its own tags
TYPED: dict[str, tuple[str, ua.Variant]] = {
    "mode": ("ns=2;s=Oven.Mode", ua.Variant(-3, ua.VariantType.Int16)),
    "count": ("ns=2;s=Oven.Count", ua.Variant(4_000_000_000, ua.VariantType.UInt32)),
    "ratio": ("ns=2;s=Oven.Ratio", ua.Variant(1.5, ua.VariantType.Float)),
    "stamp": ("ns=2;s=Oven.Stamp", ua.Variant(STAMP, ua.VariantType.DateTime)),
    "zones": ("ns=2;s=Oven.Zones", ua.Variant([1, -2, 3], ua.VariantType.Int16)),
}


def oven(port: int) -> dict[str, Any]:
    return {
        "name": "oven",
        "protocol": "opcua",
        "endpoint": f"opc.tcp://127.0.0.1:{port}",
        "subscription": {"publishing_interval": "100ms", "sampling_interval": "50ms"},
        "tags": [
            {"name": "temperature", "node": "ns=2;s=Oven.Temperature",
             "simulate": {"kind": "ramp", "min": 0, "max": 100, "period": "5s"}},
            {"name": "running", "node": "ns=2;i=2001", "simulate": {"kind": "constant", "value": True}},
            {"name": "recipe", "node": "ns=2;s=Oven.Recipe", "simulate": {"kind": "constant", "value": "R-17"}},
        ],
    }


async def test_births_carry_the_datatype_of_each_node(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    device = oven(free_port())
    async with OpcuaSimulator([OpcuaDevice.model_validate(device)], tick=0.1) as sim:
        server = sim.servers["oven"]
        folder = server.nodes.objects
        for name, (node, variant) in TYPED.items():
            created = await folder.add_variable(ua.NodeId.from_string(node), name, variant.Value, variant.VariantType)
            if isinstance(variant.Value, list):  # a one-dimensional array (Part 3, 5.6.2)
                await created.write_value_rank(1)
                await created.write_array_dimensions([0])
        # the collector reads these too; the simulator's device file does not know them
        extra = [{"name": name, "node": node} for name, (node, _) in TYPED.items()]
        collector_device = {**device, "tags": device["tags"] + extra}
        socket = tmp_path / "handoff.sock"
        forwarder = {
            "gateway": {"id": NODE, "group": GROUP},
            "mqtt": {"host": broker.host, "port": broker.port, "format": "sparkplug", "keepalive": "5s"},
            "buffer": {"dir": str(tmp_path / "buffer")},
            "metrics": {"port": None},
            "handoff": {"socket": str(socket)},
            "devices": [{"name": "oven", "collector": "opcua",
                         "tags": [{"name": t["name"]} for t in collector_device["tags"]]}],
        }
        collector = {"name": "opcua", "handoff": {"socket": str(socket)}, "state_dir": str(tmp_path / "state"),
                     "metrics_port": None, "devices": [collector_device]}
        procs = []
        try:
            for name, module, config in (("forwarder", "collectors.forwarder", forwarder),
                                         ("opcua", "collectors.opcua", collector)):
                file = tmp_path / f"{name}.yaml"
                file.write_text(yaml.safe_dump(config))
                log = tmp_path / f"{name}.log"
                procs.append((start_entry_point(module, file, log), log))

            def born_with_values(message: Any) -> bool:
                if not message.topic.startswith(f"spBv1.0/{GROUP}/DBIRTH/{NODE}/oven"):
                    return False
                birth = sp.decode(message.payload)
                return {m.name for m in birth.metrics if not m.is_null} >= set(TYPED)

            await asyncio.to_thread(subscriber.wait_for, born_with_values, 40)
        finally:
            for proc, log in reversed(procs):
                stop_entry_point(proc, log)
    births: list[Spb] = [m for m in node_messages(subscriber) if m.kind == "DBIRTH" and m.device == "oven"]
    birth = births[-1].payload
    types = {m.name: m.datatype for m in birth.metrics}
    assert types == {
        "temperature": sp.DOUBLE, "running": sp.BOOLEAN, "recipe": sp.STRING,
        "mode": sp.INT16, "count": sp.UINT32, "ratio": sp.FLOAT, "stamp": sp.DATETIME, "zones": INT16_ARRAY,
    }
    mode = birth.metric("mode")
    assert sp.signed(mode.value, mode.datatype) == -3
    assert birth.metric("count").value == 4_000_000_000
    assert birth.metric("ratio").value == 1.5
    assert birth.metric("stamp").value == int(STAMP.timestamp() * 1000)
    assert list(struct.unpack("<3h", birth.metric("zones").value)) == [1, -2, 3]
    assert [m.kind for m in node_messages(subscriber)].count("NBIRTH") == 1
