"""The collector reads each node's DataType and ValueRank when it subscribes and hands them off
(`types`) before the first readings, so formats can declare the node's own datatype."""
# mypy: disable-error-code="arg-type"

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from asyncua import Server

from tests.opcua.support import running_collector
from tests.opcua.test_collector import STATUSES, TYPED, _device, typed_server  # noqa: F401 (a fixture)

pytestmark = pytest.mark.sim

# what each of test_collector's TYPED nodes is declared as; the others are left to their values
DECLARED = {
    "boolean": "boolean", "sbyte": "sbyte", "byte": "byte", "int16": "int16", "uint16": "uint16",
    "int32": "int32", "uint32": "uint32", "int64": "int64", "uint64": "uint64", "float": "float",
    "double": "double", "string": "string", "datetime": "datetime", "guid": "string",
    "bytestring": "string", "text": "string", "nodeid": "string", "xml": "string", "expanded": "string",
    "status": "string", "qualified": "string", "structure": "string",
    "variant": "string",  # asyncua gives a Variant-typed node the DataType of the value inside
    "uncertain": "double", "bad_sensor": "double",
    # The arrays are left to their values: asyncua creates them without ValueRank 1 (one
    # dimension), so the node promises no particular shape (test_sparkplug_datatypes has one).
}


async def test_every_node_is_declared_with_its_datatype_before_its_first_reading(
    typed_server: tuple[str, Server], tmp_path: Path  # noqa: F811 (the fixture imported above)
) -> None:
    endpoint, _ = typed_server
    tags: list[dict[str, Any]] = [{"name": n, "node": f"nsu=urn:test:types;s=T.{n}"} for n in [*TYPED, *STATUSES]]
    tags.append({"name": "missing", "node": "nsu=urn:test:types;s=T.nowhere"})
    async with running_collector([_device(endpoint, tags)], tmp_path) as (_, sink):
        await sink.wait_for(lambda r: True, count=len(tags))
    # (read in pieces: the server allows 5 nodes per Read, 2 attributes per node)
    assert sink.types["oven"] == DECLARED
