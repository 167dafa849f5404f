"""OPC UA writes held to the rules every write obeys: limits, finite numbers, Boolean 0/1, the
write's deadline and the cap on pending writes. The collector in-process against asyncua's server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Server, ua

from collectors.core.model import WriteRequest, now_ms
from tests.opcua.support import running_collector
from tests.support.broker import free_port

pytestmark = pytest.mark.sim

NODES = {"setpoint": (20.0, ua.VariantType.Double), "run": (False, ua.VariantType.Boolean)}


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Server]]:
    port = free_port()
    server = Server()
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{port}"
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:test:writes")
    folder = await server.nodes.objects.add_folder(f"ns={ns};s=W", "W")
    for name, (value, variant_type) in NODES.items():
        node = await folder.add_variable(f"ns={ns};s=W.{name}", name, value, variant_type)
        await node.set_writable()
    async with server:
        yield endpoint, server


def oven(endpoint: str, **setpoint: Any) -> dict[str, Any]:
    return {
        "name": "oven", "protocol": "opcua", "endpoint": endpoint,
        "subscription": {"publishing_interval": "100ms", "sampling_interval": "50ms"},
        "tags": [{"name": "setpoint", "node": "nsu=urn:test:writes;s=W.setpoint", "writable": True, **setpoint},
                 {"name": "run", "node": "nsu=urn:test:writes;s=W.run", "writable": True}],
    }


async def value(server: Server, name: str) -> Any:
    return await server.get_node(f"ns=2;s=W.{name}").read_value()


async def test_refused_values_answer_why_and_leave_the_node_alone(
    server: tuple[str, Server], tmp_path: Path
) -> None:
    endpoint, srv = server
    device = oven(endpoint, write_min=0, write_max=250)
    async with running_collector([device], tmp_path) as (collector, sink):
        await sink.wait_for(lambda r: r.tag == "setpoint")
        for write_id, tag, sent, error in [
            ("high", "setpoint", 250.5, "setpoint: 250.5 is above its write_max 250"),
            ("low", "setpoint", -3, "setpoint: -3 is below its write_min 0"),
            ("inf", "setpoint", float("inf"), "setpoint: inf is above its write_max 250"),
            ("two", "run", 2, "this node takes a Boolean (true/false, 0/1), got 2"),
            ("text", "run", "true", "this node takes a Boolean (true/false, 0/1), got 'true'"),
        ]:
            result = await collector.write(WriteRequest(write_id, "oven", tag, sent))
            assert (result.ok, result.error) == (False, error), write_id
        assert await value(srv, "setpoint") == 20.0
        assert await value(srv, "run") is False
        assert (await collector.write(WriteRequest("ok", "oven", "setpoint", 250))).ok
        assert await value(srv, "setpoint") == 250.0


async def test_a_non_finite_value_is_refused_without_limits(server: tuple[str, Server], tmp_path: Path) -> None:
    endpoint, srv = server
    async with running_collector([oven(endpoint)], tmp_path) as (collector, sink):
        await sink.wait_for(lambda r: r.tag == "setpoint")
        result = await collector.write(WriteRequest("inf", "oven", "setpoint", float("inf")))
        assert (result.ok, result.error) == (False, "this node: inf is not a finite number")
        assert await value(srv, "setpoint") == 20.0


async def test_expired_and_excess_writes_are_refused_at_once(server: tuple[str, Server], tmp_path: Path) -> None:
    endpoint, srv = server
    async with running_collector([oven(endpoint)], tmp_path) as (collector, sink):
        await sink.wait_for(lambda r: r.tag == "setpoint")
        late = await collector.write(WriteRequest("late", "oven", "setpoint", 1.0, now_ms() - 10))
        assert late.error is not None and late.error.startswith("expired: not written, its deadline passed")
        # 1 s left; the server may take the device's timeout (5 s) to answer the write
        tight = await collector.write(WriteRequest("tight", "oven", "setpoint", 2.0, now_ms() + 1000))
        assert tight.error is not None and tight.error.endswith("the device may take 5s to answer"), tight.error
        assert await value(srv, "setpoint") == 20.0

        results = await asyncio.gather(*(
            collector.write(WriteRequest(f"w{i}", "oven", "setpoint", 100.0 + i, now_ms() + 9000))
            for i in range(10)))
        assert [r.ok for r in results] == [True] * 4 + [False] * 6
        assert {r.error for r in results[4:]} == {
            "busy: too many pending writes to oven/setpoint (4); not written, try again later"}
        assert collector.writes == {"ok": 4, "failed": 0, "busy": 6, "expired": 2}
