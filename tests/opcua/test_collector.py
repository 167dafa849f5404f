"""The OPC UA collector against real asyncua servers, through the real hand-off."""
# mypy: disable-error-code="arg-type"
# (asyncua types its NodeId/StatusCode/DateTime arguments as NewTypes; the tests pass plain values)

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from asyncua import Server, ua

from collectors.core.model import Quality, WriteRequest, iso_ms
from collectors.opcua.config import OpcuaDevice
from collectors.opcua.simulator import OpcuaSimulator
from tests.opcua.conftest import PASSWORD, USER
from tests.opcua.support import SimulatorProcess, running_collector
from tests.support.broker import free_port
from tests.support.http import http_get

pytestmark = pytest.mark.sim

REPO = Path(__file__).resolve().parents[2]

SOURCE_TS = datetime(2026, 11, 28, 8, 0, 0, 123000, tzinfo=UTC)
GUID = uuid.UUID("12345678-1234-5678-1234-567812345678")

# name -> (variant, expected JSON value)
TYPED: dict[str, tuple[ua.Variant, Any]] = {
    "boolean": (ua.Variant(True, ua.VariantType.Boolean), True),
    "sbyte": (ua.Variant(-5, ua.VariantType.SByte), -5),
    "byte": (ua.Variant(250, ua.VariantType.Byte), 250),
    "int16": (ua.Variant(-32000, ua.VariantType.Int16), -32000),
    "uint16": (ua.Variant(65000, ua.VariantType.UInt16), 65000),
    "int32": (ua.Variant(-2_000_000_000, ua.VariantType.Int32), -2_000_000_000),
    "uint32": (ua.Variant(4_000_000_000, ua.VariantType.UInt32), 4_000_000_000),
    "int64": (ua.Variant(-(2**62), ua.VariantType.Int64), -(2**62)),
    "uint64": (ua.Variant(2**63 + 5, ua.VariantType.UInt64), 2**63 + 5),
    "float": (ua.Variant(1.5, ua.VariantType.Float), 1.5),
    "double": (ua.Variant(21.25, ua.VariantType.Double), 21.25),
    "string": (ua.Variant("hello", ua.VariantType.String), "hello"),
    "datetime": (ua.Variant(SOURCE_TS, ua.VariantType.DateTime), "2026-11-28T08:00:00.123Z"),
    "guid": (ua.Variant(GUID, ua.VariantType.Guid), str(GUID)),
    "bytestring": (ua.Variant(b"\x00\x01\xff", ua.VariantType.ByteString), "AAH/"),
    "text": (ua.Variant(ua.LocalizedText("Ofen"), ua.VariantType.LocalizedText), "Ofen"),
    "nodeid": (ua.Variant(ua.NodeId(42, 2), ua.VariantType.NodeId), "ns=2;i=42"),
    "xml": (ua.Variant(ua.XmlElement("<a>1</a>"), ua.VariantType.XmlElement), "<a>1</a>"),
    "expanded": (ua.Variant(ua.ExpandedNodeId(7, 2), ua.VariantType.ExpandedNodeId), "ns=2;i=7"),
    "status": (ua.Variant(ua.StatusCode(ua.StatusCodes.BadTimeout), ua.VariantType.StatusCode), "BadTimeout"),
    "qualified": (ua.Variant(ua.QualifiedName("Name", 3), ua.VariantType.QualifiedName), "3:Name"),
    "structure": (ua.Variant(ua.Range(0.0, 200.0), ua.VariantType.ExtensionObject), {"Low": 0.0, "High": 200.0}),
    "datavalue": (ua.Variant(ua.DataValue(ua.Variant(3, ua.VariantType.Int32)), ua.VariantType.DataValue), 3),
    "variant": (ua.Variant(ua.Variant("inner", ua.VariantType.String), ua.VariantType.Variant), "inner"),
    "diagnostic": (
        ua.Variant(ua.DiagnosticInfo(SymbolicId=4, AdditionalInfo="pump 2"), ua.VariantType.DiagnosticInfo),
        {"SymbolicId": 4, "AdditionalInfo": "pump 2"},
    ),
    "int_array": (ua.Variant([1, 2, 3], ua.VariantType.Int32), [1, 2, 3]),
    "bool_array": (ua.Variant([True, False], ua.VariantType.Boolean), [True, False]),
    "byte_array": (ua.Variant([1, 255], ua.VariantType.Byte), [1, 255]),
    "uint64_array": (ua.Variant([0, 2**64 - 1], ua.VariantType.UInt64), [0, 2**64 - 1]),
    "float_array": (ua.Variant([0.5, float("nan")], ua.VariantType.Float), [0.5, None]),
    "datetime_array": (ua.Variant([SOURCE_TS], ua.VariantType.DateTime), ["2026-11-28T08:00:00.123Z"]),
    "bytestring_array": (ua.Variant([b"\x01", b""], ua.VariantType.ByteString), ["AQ==", ""]),
    "text_array": (ua.Variant([ua.LocalizedText("a")], ua.VariantType.LocalizedText), ["a"]),
    "guid_array": (ua.Variant([GUID], ua.VariantType.Guid), [str(GUID)]),
    "double_array": (ua.Variant([0.5, -1.0], ua.VariantType.Double), [0.5, -1.0]),
    "string_array": (ua.Variant(["a", "b"], ua.VariantType.String), ["a", "b"]),
}
# name -> (StatusCode, quality, reason, value: a Bad DataValue carries none, Part 4 7.7.1)
STATUSES = {
    "uncertain": (
        ua.StatusCodes.UncertainLastUsableValue,
        Quality.UNCERTAIN,
        "UncertainLastUsableValue",
        7.5,
    ),
    "bad_sensor": (ua.StatusCodes.BadSensorFailure, Quality.BAD, "BadSensorFailure", None),
}


@pytest.fixture
async def typed_server() -> AsyncIterator[tuple[str, Server]]:
    """An in-process asyncua server with a variable of every built-in type, one uncertain, one bad."""
    port = free_port()
    server = Server()
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{port}"
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:test:types")
    folder = await server.nodes.objects.add_folder(ua.NodeId("Types", ns), "Types")
    for name, (variant, _) in TYPED.items():
        node = await folder.add_variable(ua.NodeId(f"T.{name}", ns), name, variant.Value, variant.VariantType)
        await server.write_attribute_value(
            node.nodeid, ua.DataValue(variant, SourceTimestamp=SOURCE_TS, ServerTimestamp=SOURCE_TS)
        )
    for name, (code, *_) in STATUSES.items():
        node = await folder.add_variable(ua.NodeId(f"T.{name}", ns), name, 1.0, ua.VariantType.Double)
        await server.write_attribute_value(
            node.nodeid,
            ua.DataValue(
                ua.Variant(7.5, ua.VariantType.Double),
                StatusCode=ua.StatusCode(code),
                SourceTimestamp=SOURCE_TS,
            ),
        )
    # small OperationLimits, so reads and item creation are split as a strict server demands
    limits = ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead
    await server.get_node(limits).write_value(ua.Variant(5, ua.VariantType.UInt32))
    limits = ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall
    await server.get_node(limits).write_value(ua.Variant(4, ua.VariantType.UInt32))
    limited = await folder.add_variable(ua.NodeId("T.limited", ns), "limited", 0, ua.VariantType.Int16)
    await limited.set_writable()
    async with server:
        yield endpoint, server


def _device(endpoint: str, tags: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "name": "oven",
        "protocol": "opcua",
        "endpoint": endpoint,
        "subscription": {"publishing_interval": "100ms", "sampling_interval": "50ms"},
        "tags": tags,
        **extra,
    }


async def test_every_type_arrives_with_its_value_quality_and_source_timestamp(
    typed_server: tuple[str, Server], tmp_path: Path
) -> None:
    endpoint, _ = typed_server
    tags: list[dict[str, Any]] = [
        {"name": n, "node": f"nsu=urn:test:types;s=T.{n}"} for n in [*TYPED, *STATUSES]
    ]
    tags[0]["mode"] = "poll"  # one polled tag shows the Read path maps the same way
    tags[0]["poll"] = "200ms"
    async with running_collector([_device(endpoint, tags)], tmp_path) as (collector, sink):
        await sink.wait_for(lambda r: True, count=len(tags))
        await asyncio.sleep(0.5)
        reader = collector.sessions["oven"].reader
        assert reader is not None  # read in pieces of 5 nodes, items created 4 per call
        assert (reader.session.max_nodes_per_read, reader.session.max_items_per_call) == (5, 4)
        first: dict[str, Any] = {}
        for reading in sink.got:
            first.setdefault(reading.tag, reading)
    for name, (_, expected) in TYPED.items():
        reading = first[name]
        assert reading.value == expected, name
        assert type(reading.value) is type(expected), name
        assert reading.quality == Quality.GOOD and reading.reason is None, name
        assert iso_ms(reading.ts_ms) == "2026-11-28T08:00:00.123Z", name
    for name, (_, quality, reason, value) in STATUSES.items():
        assert (first[name].value, first[name].quality, first[name].reason) == (value, quality, reason)


async def test_writes_convert_to_the_node_datatype_and_answer_the_status(
    typed_server: tuple[str, Server], tmp_path: Path
) -> None:
    endpoint, server = typed_server
    tags = [
        {"name": "limited", "node": "nsu=urn:test:types;s=T.limited", "writable": True},
        {"name": "double", "node": "nsu=urn:test:types;s=T.double"},
        {"name": "string", "node": "nsu=urn:test:types;s=T.string", "writable": True},
    ]
    async with running_collector([_device(endpoint, tags)], tmp_path) as (collector, sink):
        await sink.wait_for(lambda r: r.tag == "limited")
        ok = await collector.write(
            WriteRequest("w1", "oven", "limited", 1234.0)
        )  # a JSON number, an Int16 node
        assert (ok.ok, ok.error) == (True, None)
        node = server.get_node("ns=2;s=T.limited")
        assert (await node.read_data_value()).Value == ua.Variant(1234, ua.VariantType.Int16)
        await sink.wait_for(lambda r: r.tag == "limited" and r.value == 1234)

        too_big = await collector.write(WriteRequest("w2", "oven", "limited", 70000))
        assert too_big.ok is False and "out of range for Int16" in (too_big.error or "")
        wrong = await collector.write(WriteRequest("w3", "oven", "limited", "many"))
        assert wrong.ok is False and "Int16" in (wrong.error or "")
        read_only = await collector.write(WriteRequest("w4", "oven", "double", 1.0))
        assert (read_only.ok, read_only.error) == (False, "tag double of oven is not writable")
        # writable in the device file, read-only on the server: the server's StatusCode is the answer
        refused = await collector.write(WriteRequest("w5", "oven", "string", "x"))
        assert (refused.ok, refused.error) == (False, "BadUserAccessDenied")
        assert (await server.get_node("ns=2;s=T.string").read_value()) == "hello"


async def test_a_bad_node_among_good_ones_makes_only_that_tag_bad(
    plain_sim: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    _, device = plain_sim
    device = {
        **device,
        "tags": [
            *device["tags"],
            {"name": "ghost", "node": "ns=2;s=Oven.DoesNotExist"},
            {"name": "lost_ns", "node": "nsu=urn:nowhere;s=X"},
            {"name": "ghost_poll", "node": "ns=2;i=999999", "mode": "poll", "poll": "300ms"},
        ],
    }
    async with running_collector([device], tmp_path) as (_, sink):
        ghost = (await sink.wait_for(lambda r: r.tag == "ghost"))[0]
        lost = (await sink.wait_for(lambda r: r.tag == "lost_ns"))[0]
        ghost_poll = (await sink.wait_for(lambda r: r.tag == "ghost_poll"))[0]
        temps = await sink.wait_for(lambda r: r.tag == "temperature", count=5)
        batches = await sink.wait_for(lambda r: r.tag == "batch", count=3)
    assert (ghost.quality, ghost.reason) == (Quality.BAD, "BadNodeIdUnknown")
    assert (lost.quality, lost.reason) == (Quality.BAD, "BadNodeIdUnknown")
    assert (ghost_poll.quality, ghost_poll.reason) == (Quality.BAD, "BadNodeIdUnknown")
    assert all(r.quality == Quality.GOOD for r in temps + batches)
    assert len({r.value for r in temps}) == 5  # it moves
    counts = [float(r.value) for r in batches]
    assert sorted(counts) == counts  # the counter counts up


async def test_values_of_the_simulator_and_nsu_node_ids(
    plain_sim: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    _, device = plain_sim
    started = time.time() * 1000
    port = free_port()
    async with running_collector([device], tmp_path, metrics_port=port) as (collector, sink):
        recipe = (await sink.wait_for(lambda r: r.tag == "recipe"))[0]
        running = (await sink.wait_for(lambda r: r.tag == "running"))[0]
        temps = await sink.wait_for(lambda r: r.tag == "temperature", count=3)
        assert sink.states[0].online is True
        result = await collector.write(WriteRequest("s1", "oven", "setpoint", 200))
        assert result.ok, result.error
        setpoints = await sink.wait_for(lambda r: r.tag == "setpoint", count=2)
        status, metrics = await http_get(port, "/metrics")
        assert status == 200
        assert 'fieldgate_opcua_device_online{device="oven"} 1.0' in metrics
        assert 'fieldgate_opcua_writes_total{result="ok"} 1.0' in metrics
        assert "fieldgate_handoff_connected 1.0" in metrics
        assert await http_get(port, "/healthz") == (200, "ok\n")
    assert (recipe.value, recipe.quality) == ("R-17", Quality.GOOD)
    assert running.value is True
    assert all(isinstance(r.value, float) and 0 <= r.value <= 100 for r in temps)
    assert all(started - 2000 < r.ts_ms < time.time() * 1000 + 1000 for r in temps)
    assert [r.value for r in setpoints] == [180.0, 200.0]


async def test_heartbeat_repeats_an_unchanged_value_after_max_silence(
    plain_sim: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    _, device = plain_sim
    device = {**device, "max_silence": "400ms", "tags": [t for t in device["tags"] if t["name"] == "recipe"]}
    async with running_collector([device], tmp_path) as (_, sink):
        readings = await sink.wait_for(lambda r: r.tag == "recipe", count=4, within=10)
    assert {r.value for r in readings} == {"R-17"}
    beats = readings[1:]  # the first carries the sample's source timestamp, the beats the time of the beat
    gaps = [b.ts_ms - a.ts_ms for a, b in itertools.pairwise(beats)]
    assert all(350 <= gap <= 2000 for gap in gaps), (gaps, [(r.ts_ms, r.value) for r in beats])


async def test_basic256sha256_sign_and_encrypt_with_username_and_password(
    secure_sim: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    _, device = secure_sim
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    device = {
        **device,
        "security": {
            "policy": "Basic256Sha256",
            "mode": "SignAndEncrypt",
            "username": USER,
            "password_file": str(secret),
            "trust": "tofu",
        },
    }
    async with running_collector([device], tmp_path) as (collector, sink):
        temps = await sink.wait_for(lambda r: r.tag == "temperature", count=3)
        result = await collector.write(WriteRequest("s1", "oven", "setpoint", 150.5))
    assert all(r.quality == Quality.GOOD for r in temps)
    assert result.ok, result.error
    own = tmp_path / "state" / "opcua" / "own" / "cert.der"
    pinned = tmp_path / "state" / "opcua" / "pinned" / "oven.der"
    assert own.exists() and pinned.exists()
    # a second start reuses the application certificate and trusts the pinned server
    before = own.read_bytes()
    async with running_collector([device], tmp_path) as (_, sink):
        await sink.wait_for(lambda r: r.tag == "temperature" and r.quality == Quality.GOOD)
    assert own.read_bytes() == before


async def test_a_wrong_password_is_a_clear_error(
    secure_sim: tuple[Any, dict[str, Any]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, device = secure_sim
    device = {
        **device,
        "security": {
            "policy": "Basic256Sha256",
            "mode": "SignAndEncrypt",
            "username": USER,
            "password": "wrong",
        },
    }
    caplog.set_level(logging.ERROR, logger="collectors.opcua")
    async with running_collector([device], tmp_path) as (_, sink):
        state = await sink.wait_state(lambda s: not s.online)
        bad = await sink.wait_for(lambda r: r.tag == "temperature")
    assert state.reason == "BadUserAccessDenied"
    assert (bad[0].quality, bad[0].reason) == (Quality.BAD, "BadUserAccessDenied")
    assert f"the server refused user {USER!r}: BadUserAccessDenied" in caplog.text
    assert "wrong" not in caplog.text  # the secret never reaches a log


async def test_strict_trust_refuses_a_server_certificate_not_in_the_trust_dir(
    secure_sim: tuple[Any, dict[str, Any]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim, device = secure_sim
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    device = {
        **device,
        "security": {
            "policy": "Basic256Sha256",
            "mode": "SignAndEncrypt",
            "username": USER,
            "password": PASSWORD,
            "trust": "strict",
            "trust_dir": str(trusted),
        },
    }
    caplog.set_level(logging.ERROR, logger="collectors.opcua")
    async with running_collector([device], tmp_path) as (_, sink):
        state = await sink.wait_state(lambda s: not s.online)
    assert state.reason == "BadCertificateUntrusted"
    assert "is not in the trust dir" in caplog.text and str(trusted) in caplog.text

    # the same server is accepted once its certificate is in the trust dir
    (trusted / "oven.der").write_bytes((sim.state_dir / "oven" / "server-cert.der").read_bytes())
    async with running_collector([device], tmp_path / "again") as (_, sink):
        await sink.wait_for(lambda r: r.tag == "temperature" and r.quality == Quality.GOOD)


async def test_tofu_pins_the_server_certificate_and_refuses_a_changed_one_with_a_clear_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}"
    security = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", "trust": "tofu"}
    tags = [{"name": "speed", "node": "ns=2;s=Speed", "simulate": {"kind": "constant", "value": 12.5}}]
    device = _device(endpoint, tags, security=security)
    served = [OpcuaDevice.model_validate(device)]
    pin = tmp_path / "state" / "opcua" / "pinned" / "oven.der"
    caplog.set_level(logging.INFO, logger="collectors.opcua")
    async with running_collector([device], tmp_path) as (_, sink):
        async with OpcuaSimulator(served, state_dir=tmp_path / "first-key"):
            await sink.wait_for(lambda r: r.tag == "speed" and r.quality == Quality.GOOD)
        first = pin.read_bytes()
        assert first == (tmp_path / "first-key" / "oven" / "server-cert.der").read_bytes()
        # the same endpoint comes back with another key pair (a replaced device, or a man in the middle)
        async with OpcuaSimulator(served, state_dir=tmp_path / "second-key"):
            refused = await sink.wait_state(lambda s: s.reason == "BadCertificateUntrusted", within=20)
            bad = await sink.wait_for(lambda r: r.quality == Quality.BAD and r.reason == "BadCertificateUntrusted")
    assert not refused.online and bad[0].value == 12.5
    assert pin.read_bytes() == first  # the pin is kept
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    changed = [m for m in errors if "the server certificate changed" in m]
    assert changed, errors
    assert "refusing to connect" in changed[0] and f"delete {pin}" in changed[0]

    pin.unlink()  # as the log line says, when the server was re-keyed on purpose
    async with (
        OpcuaSimulator(served, state_dir=tmp_path / "second-key"),
        running_collector([device], tmp_path) as (_, sink),
    ):
        await sink.wait_for(lambda r: r.tag == "speed" and r.quality == Quality.GOOD)
    assert pin.read_bytes() == (tmp_path / "second-key" / "oven" / "server-cert.der").read_bytes()


async def test_deadbands_absolute_and_percent_of_the_eurange(tmp_path: Path) -> None:
    port = free_port()
    server = Server()
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{port}"
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:test:deadband")
    pressure = await server.nodes.objects.add_variable(ua.NodeId("pressure", ns), "pressure", 0.0)
    level = await server.nodes.objects.add_variable(ua.NodeId("level", ns), "level", 100.0)
    await level.add_property(
        ua.NodeId("level.EURange", ns), ua.QualifiedName("EURange", 0), ua.Range(0.0, 200.0)
    )
    tags = [
        {"name": "pressure", "node": "nsu=urn:test:deadband;s=pressure", "deadband": 1.0},
        {
            "name": "level",
            "node": "nsu=urn:test:deadband;s=level",
            "deadband": 10,
            "deadband_type": "percent",
        },
    ]
    async with server, running_collector([_device(endpoint, tags)], tmp_path) as (_, sink):
        await sink.wait_for(lambda r: r.tag == "level")
        await sink.wait_for(lambda r: r.tag == "pressure")
        for p, lv in [(0.5, 105.0), (2.0, 125.0), (2.4, 130.0), (5.0, 150.0)]:
            await pressure.write_value(p)
            await level.write_value(lv)
            await asyncio.sleep(0.3)
        await sink.wait_for(lambda r: r.tag == "pressure" and r.value == 5.0)
        await sink.wait_for(lambda r: r.tag == "level" and r.value == 150.0)
    assert [r.value for r in sink.got if r.tag == "pressure"] == [0.0, 2.0, 5.0]
    assert [r.value for r in sink.got if r.tag == "level"] == [100.0, 125.0, 150.0]  # 10 % of 0..200 = 20


CREEP = [round(0.3 * i, 6) for i in range(11)]  # 0.0 .. 3.0 in steps of 0.3, a tenth of a degree per 1/3 s
QUIET = [0.0, 0.4, -0.3, 0.2, -0.4, 0.3, 0.0, 0.4, -0.2, 0.1, 0.0]  # never 1.0 away from its first value


@pytest.mark.parametrize("server", ["simulator", "asyncua"])
async def test_a_value_creeping_in_steps_smaller_than_the_deadband_is_reported_once_it_moved_more(
    server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Part 4, 7.22.2: a deadband compares with the last value reported, not the previous sample.

    `simulator`: the collector sends the DataChangeFilter and fieldgate's simulator applies it;
    `asyncua`: a plain asyncua server, which compares with the previous sample (it would report
    `creep` once and never again), so the collector applies the deadband itself.
    """
    port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}"
    tags: list[dict[str, Any]] = [
        {"name": "creep", "node": "ns=2;s=Creep", "deadband": 1.0, "max_silence": "10m"},
        {"name": "quiet", "node": "ns=2;s=Quiet", "deadband": 1.0, "max_silence": "1500ms"},
    ]
    values = {name: 0.0 for name in ("creep", "quiet")}
    caplog.set_level(logging.INFO, logger="collectors.opcua")
    async with contextlib.AsyncExitStack() as stack:
        if server == "simulator":
            served = OpcuaDevice.model_validate(
                _device(endpoint, [{**t, "simulate": {"kind": "constant", "value": 0.0}} for t in tags])
            )
            sim = await stack.enter_async_context(OpcuaSimulator([served], state_dir=tmp_path / "sim"))
            target, nodes = sim.servers["oven"], {n: v.node.nodeid for n, v in sim.variables["oven"].items()}
        else:
            target = Server()
            await target.init()
            target.set_endpoint(endpoint)
            target.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            await target.register_namespace("urn:test:creep")
            nodes = {}
            for tag in tags:
                node = await target.nodes.objects.add_variable(tag["node"], tag["name"], 0.0)
                nodes[tag["name"]] = node.nodeid
            await stack.enter_async_context(target)
        _, sink = await stack.enter_async_context(running_collector([_device(endpoint, tags)], tmp_path))
        await sink.wait_for(lambda r: r.tag == "creep")
        await sink.wait_for(lambda r: r.tag == "quiet")
        for creep, quiet in zip(CREEP, QUIET, strict=True):
            values.update(creep=creep, quiet=quiet)
            for name, value in values.items():
                await target.write_attribute_value(nodes[name], ua.DataValue(ua.Variant(value, ua.VariantType.Double)))
            await asyncio.sleep(0.3)
        await sink.wait_for(lambda r: r.tag == "creep" and r.value == 2.4, within=10)
        await sink.wait_for(lambda r: r.tag == "quiet", count=2, within=10)  # a heartbeat at least
    # moved 1.2 (> 1.0) since the last report: reported; 0.9 and 0.3 steps before that: not
    assert [r.value for r in sink.got if r.tag == "creep"] == [0.0, 1.2, 2.4]
    quiet = [r for r in sink.got if r.tag == "quiet"]
    gaps = [b.ts_ms - a.ts_ms for a, b in itertools.pairwise(quiet)]
    assert all(gap >= 1400 for gap in gaps), gaps  # only the max_silence heartbeat, no sub-deadband move
    assert all(r.quality == Quality.GOOD for r in quiet)
    collector_filters = "the collector applies the deadbands itself" in caplog.text
    assert collector_filters is (server == "asyncua")


async def test_the_shipped_oven_reports_its_temperature_as_the_simulator_moves_it(tmp_path: Path) -> None:
    """devices/oven-2.yaml under `fieldgate simulate`: a sine of 0.08 degC per 0.1 s tick against a
    deadband of 0.1 was once reported a single time in 25 s."""
    device = yaml.safe_load((REPO / "devices" / "oven-2.yaml").read_text())
    port = free_port()
    device["endpoint"] = f"opc.tcp://127.0.0.1:{port}"
    sim = SimulatorProcess(device, tmp_path, port).start()
    try:
        async with running_collector([device], tmp_path) as (_, sink):
            temps = await sink.wait_for(lambda r: r.tag == "temperature", count=6, within=20)
    finally:
        sim.stop()
    values = [r.value for r in temps]
    assert len(set(values)) == 6 and all(isinstance(v, float) and 175 <= v <= 185 for v in values)
    assert all(abs(b - a) >= 0.1 for a, b in itertools.pairwise(values))
