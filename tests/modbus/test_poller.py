"""The poller's schedule and failure states, with a scripted link (the pymodbus seam) in place of a device."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from collectors.core.errors import DeviceError
from collectors.core.model import DeviceState, Reading
from collectors.core.report import ReportFilter
from collectors.modbus.config import ModbusDevice, Table
from collectors.modbus.link import Link
from collectors.modbus.poller import DevicePoller, device_unreachable

pytestmark = pytest.mark.unit


class ScriptedLink:
    """Answers reads from a script: a value, a DeviceError to raise, or a delay first."""

    key = "tcp:scripted:502"

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.script: list[Any] = []
        self.default: Any = [7]
        self.delay = 0.0

    async def read(self, device: ModbusDevice, table: Table, start: int, count: int) -> list[int]:
        self.calls.append(asyncio.get_running_loop().time())
        step = self.script.pop(0) if self.script else self.default
        if isinstance(step, float):
            await asyncio.sleep(step)
            step = self.default
        if isinstance(step, DeviceError):
            raise step
        return list(step) * count


def make(link: ScriptedLink, **extra: Any) -> tuple[DevicePoller, list[Reading], list[DeviceState]]:
    device = ModbusDevice.model_validate({
        "name": "d", "protocol": "modbus", "connection": {"tcp": {"host": "scripted"}},
        "tags": [{"name": "a", "table": "holding", "address": 0, "type": "uint16"},
                 {"name": "b", "table": "holding", "address": 1, "type": "uint16"}],
        **extra,
    })
    readings: list[Reading] = []
    states: list[DeviceState] = []
    poller = DevicePoller(device, cast(Link, link), ReportFilter(), readings.extend, states.append)
    return poller, readings, states


async def run_for(poller: DevicePoller, seconds: float) -> None:
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_ticks_stay_on_the_grid_and_an_overrun_skips_instead_of_bursting() -> None:
    link = ScriptedLink()
    link.script = [[7], 0.35]  # the second poll takes 350 ms: the ticks at 200 and 300 ms are missed
    poller, _readings, _states = make(link, poll="100ms")
    await run_for(poller, 0.93)
    start = link.calls[0]
    offsets = [round(t - start, 2) for t in link.calls]
    # 0, 100 (slow until 450), then 500, 600, ...: no catch-up polls at 450
    assert offsets[:2] == pytest.approx([0.0, 0.1], abs=0.06)
    assert offsets[2] == pytest.approx(0.5, abs=0.06)
    gaps = [b - a for a, b in zip(link.calls[2:], link.calls[3:], strict=False)]
    assert gaps and all(gap == pytest.approx(0.1, abs=0.06) for gap in gaps)


async def test_offline_once_then_silent_then_online_again() -> None:
    link = ScriptedLink()
    timeout = DeviceError("d", "timeout")
    link.script = [[5], timeout, timeout, timeout, [5]]
    poller, readings, states = make(link, poll="50ms")
    await run_for(poller, 0.33)
    assert [(r.tag, r.value, r.quality, r.reason) for r in readings[:6]] == [
        ("a", 5, "good", None), ("b", 5, "good", None),
        ("a", 5, "bad", "timeout"), ("b", 5, "bad", "timeout"),  # once, with the last value
        ("a", 5, "good", None), ("b", 5, "good", None),  # back: reported though unchanged
    ]
    assert states == [DeviceState("d", True), DeviceState("d", False, "timeout"), DeviceState("d", True)]
    assert poller.stats.polls_failed == 3


def test_which_reasons_mean_the_device_is_unreachable() -> None:
    assert device_unreachable("timeout")
    assert device_unreachable("connection refused")
    assert device_unreachable("exception 11: gateway target device failed to respond")
    assert not device_unreachable("exception 2: illegal data address")
    assert not device_unreachable("short answer")


async def test_a_cancel_the_library_swallows_still_stops_the_poller() -> None:
    class SwallowingLink(ScriptedLink):
        swallowed = False

        async def read(self, device: ModbusDevice, table: Table, start: int, count: int) -> list[int]:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if self.swallowed:
                    raise
                self.swallowed = True
                return [7] * count  # what 3.11's wait_for does when the answer came with the cancel
            return [7] * count

    poller, _readings, _states = make(SwallowingLink())
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(0.05)
    task.cancel()  # the poller's TaskGroup passes it to the class task, whose read swallows it
    await asyncio.wait({task}, timeout=2)
    assert task.done(), "the poller kept polling after its cancel was swallowed"
    assert task.cancelled()
