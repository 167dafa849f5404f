"""The coalescing planner: gaps, request limits, poll classes, wide tags at block edges."""

from __future__ import annotations

from typing import Any

import pytest

from collectors.core.errors import ConfigError
from collectors.modbus.config import ModbusDevice, Table
from collectors.modbus.planner import describe_plan, plan_device

pytestmark = pytest.mark.unit


def device(tags: list[dict[str, Any]], **extra: Any) -> ModbusDevice:
    named = [{"name": f"t{i}", "table": "holding", "type": "uint16", **tag} for i, tag in enumerate(tags)]
    return ModbusDevice.model_validate({
        "name": "press-1", "protocol": "modbus", "connection": {"tcp": {"host": "10.0.0.5"}},
        "tags": named, **extra,
    })


def layout(dev: ModbusDevice) -> list[tuple[float, str, int, int, int]]:
    return [
        (pc.interval, block.table.value, block.start, block.count, block.gap)
        for pc in plan_device(dev) for block in pc.blocks
    ]


def test_neighbours_join_and_the_gap_is_counted() -> None:
    dev = device([{"address": 0, "type": "float32"}, {"address": 4}, {"address": 5}], max_gap=8)
    assert layout(dev) == [(1.0, "holding", 0, 6, 2)]
    (block,) = plan_device(dev)[0].blocks
    assert [(m.tag.name, m.offset) for m in block.tags] == [("t0", 0), ("t1", 4), ("t2", 5)]


def test_a_gap_wider_than_max_gap_splits() -> None:
    dev = device([{"address": 0}, {"address": 10}, {"address": 19}], max_gap=8)
    assert layout(dev) == [(1.0, "holding", 0, 1, 0), (1.0, "holding", 10, 10, 8)]
    assert layout(device([{"address": 0}, {"address": 1}], max_gap=0)) == [(1.0, "holding", 0, 2, 0)]
    assert len(layout(device([{"address": 0}, {"address": 2}], max_gap=0))) == 2


def test_max_registers_limits_a_block() -> None:
    tags = [{"address": a} for a in range(0, 300)]
    blocks = layout(device(tags))
    assert [(start, count) for _i, _t, start, count, _g in blocks] == [(0, 125), (125, 125), (250, 50)]
    small = layout(device([{"address": a} for a in range(10)], max_registers=4))
    assert [(start, count) for _i, _t, start, count, _g in small] == [(0, 4), (4, 4), (8, 2)]


def test_a_64_bit_tag_at_the_edge_starts_the_next_block() -> None:
    singles: list[dict[str, Any]] = [{"address": a} for a in range(122)]
    fits = layout(device([*singles[:121], {"address": 121, "type": "float64"}]))
    assert fits == [(1.0, "holding", 0, 125, 0)]
    spills = layout(device([*singles, {"address": 122, "type": "uint64"}, {"address": 126}]))
    assert spills == [(1.0, "holding", 0, 122, 0), (1.0, "holding", 122, 5, 0)]


def test_bits_use_max_bits_and_a_wider_gap() -> None:
    coils = [{"table": "coil", "type": "bool", "address": a} for a in (0, 200, 329, 2100)]
    assert layout(device(coils, max_gap=8)) == [
        (1.0, "coil", 0, 1, 0), (1.0, "coil", 200, 130, 128), (1.0, "coil", 2100, 1, 0),
    ]
    many = [{"table": "discrete", "type": "bool", "address": a} for a in range(2500)]
    assert [c for *_x, c, _g in layout(device(many))] == [2000, 500]


def test_tables_and_poll_classes_never_mix() -> None:
    tags: list[dict[str, Any]] = [
        {"address": 0},
        {"address": 1, "table": "input"},
        {"address": 2, "poll": "250ms"},
        {"address": 3},
        {"address": 0, "table": "coil", "type": "bool", "poll": "250ms"},
    ]
    assert layout(device(tags)) == [
        (0.25, "coil", 0, 1, 0), (0.25, "holding", 2, 1, 0),
        (1.0, "input", 1, 1, 0), (1.0, "holding", 0, 4, 2),
    ]
    assert [pc.interval for pc in plan_device(device(tags, poll="2s"))] == [0.25, 2.0]


def test_overlapping_tags_share_registers() -> None:
    tags: list[dict[str, Any]] = [
        {"address": 10, "bit": 0}, {"address": 10, "bit": 7}, {"address": 10, "type": "int32"},
    ]
    assert layout(device(tags)) == [(1.0, "holding", 10, 2, 0)]


def test_a_tag_longer_than_a_request_is_a_config_error() -> None:
    dev = device([{"address": 0, "type": "string", "length": 20}], max_registers=16)
    with pytest.raises(ConfigError, match="t0 spans 20 registers, more than one request reads"):
        plan_device(dev)


def test_describe_reads_like_the_plan_verb() -> None:
    dev = device([
        {"name": "temperature", "address": 0, "type": "float32", "poll": "250ms"},
        {"name": "pressure", "address": 8, "type": "float32", "poll": "250ms"},
        {"name": "run", "address": 3, "table": "coil", "type": "bool"},
    ])
    classes = plan_device(dev)
    expected = "holding 0..9 (10 regs, 6 gap) every 250ms: temperature, pressure"
    assert classes[0].blocks[0].describe() == expected
    assert classes[1].blocks[0].table is Table.COIL
    assert describe_plan(dev).splitlines() == [
        "press-1 (unit 1, tcp:10.0.0.5:502): 2 requests",
        "  every 250ms: 1 request",
        "    holding 0..9 (10 regs, 6 gap) every 250ms: temperature, pressure",
        "  every 1s: 1 request",
        "    coil 3..3 (1 bit, 0 gap) every 1s: run",
    ]
