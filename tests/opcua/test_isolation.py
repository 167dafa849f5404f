"""Device isolation: an exception nobody expected, in one device's session, subscription, poll,
decode or reporting, makes only that device `bad` with a reason; it is logged once, the device
backs off and recovers when the cause is gone, and the other device's readings keep arriving good.

The fault is injected at a seam of the collector (a test double of one function, for one device
only); the servers, the sessions and the hand-off are real."""
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collectors.core.model import Quality, Reading
from collectors.opcua import reader as reader_module
from collectors.opcua.config import OpcuaDevice
from collectors.opcua.reader import DeviceReader
from collectors.opcua.session import Session
from collectors.opcua.simulator import OpcuaSimulator
from tests.opcua.support import running_collector
from tests.support.broker import free_port

pytestmark = pytest.mark.sim


class Gremlin(Exception):
    """Stands for any exception the collector was not written to expect."""


def device(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "protocol": "opcua",
        "endpoint": f"opc.tcp://127.0.0.1:{free_port()}",
        "subscription": {"publishing_interval": "100ms", "sampling_interval": "50ms"},
        "tags": [
            {"name": "temperature", "node": "ns=2;s=Oven.Temperature",
             "simulate": {"kind": "ramp", "min": 0, "max": 100, "period": "5s"}},
            {"name": "batch", "node": "ns=2;s=Oven.Batch", "mode": "poll", "poll": "300ms",
             "simulate": {"kind": "counter", "min": 0, "max": 1000000, "step": 5}},
        ],
    }


class Injector:
    """Raises Gremlin from one seam, for the device `broken` only, while `active`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
        self.active = False
        self.raised = 0
        self.where = where
        if where == "session":  # while connecting, after the channel is open
            self._wrap(monkeypatch, Session, "_read_limits", lambda args: args[0].device.name)
        elif where == "poll":  # every Read service call: the first values, then the polls
            self._wrap(monkeypatch, Session, "read_readings", lambda args: args[1])
        elif where == "decode":  # each data change notification of the subscription
            self._wrap(monkeypatch, reader_module, "reading_of", lambda args: args[0])
        else:  # the reader's reporting (deadband, heartbeat), reached from an asyncio callback too
            self._wrap(monkeypatch, DeviceReader, "offer", lambda args: args[0].device.name)

    def _wrap(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, device_of: Callable[..., str]) -> None:
        original = getattr(owner, name)
        injector = self

        def check(args: tuple[Any, ...]) -> None:
            if injector.active and device_of(args) == "broken":
                injector.raised += 1
                raise Gremlin(f"injected into {injector.where}")

        if asyncio.iscoroutinefunction(original):
            async def wrapper(*args: Any) -> Any:
                check(args)
                return await original(*args)
        else:
            def wrapper(*args: Any) -> Any:  # type: ignore[misc]
                check(args)
                return original(*args)
        monkeypatch.setattr(owner, name, wrapper)


async def until(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("where", ["session", "poll", "decode", "report"])
async def test_an_unexpected_exception_in_one_device_leaves_the_other_good(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    devices = [device("good"), device("broken")]
    gremlin = Injector(monkeypatch, where)
    caplog.set_level(logging.INFO, logger="collectors.opcua")
    async with OpcuaSimulator([OpcuaDevice.model_validate(d) for d in devices], tick=0.1):
        # A fault while connecting is there from the start; the others strike a device that was working.
        gremlin.active = where == "session"
        injected_at = time.time() * 1000
        errors_before = len(caplog.records)
        async with running_collector(devices, tmp_path) as (collector, sink):
            link = collector.sessions["broken"]
            failures_before = link.failures
            if not gremlin.active:
                await sink.wait_for(lambda r: r.device == "broken" and r.quality == Quality.GOOD, within=20)
                failures_before = link.failures
                errors_before = len(caplog.records)
                gremlin.active = True
                injected_at = time.time() * 1000
            # the broken device goes bad with the reason, and keeps failing (backing off) while the fault lasts
            bad = await sink.wait_for(
                lambda r: r.device == "broken" and r.quality == Quality.BAD and r.ts_ms >= injected_at, within=20
            )
            await sink.wait_state(lambda s: s.device == "broken" and not s.online)
            await until(lambda: link.failures >= failures_before + 3, 30, "three failed sessions")
            window = (injected_at, time.time() * 1000)
            tasks = [t for t in asyncio.all_tasks() if t.get_name() == "opcua-collector-under-test"]
            assert tasks and not tasks[0].done()  # the collector runs on
            gremlin.active = False
            healed_at = time.time() * 1000
            await sink.wait_for(
                lambda r: r.device == "broken" and r.quality == Quality.GOOD and r.ts_ms >= healed_at, within=30
            )
    # The good device's readings kept arriving, good, all through the fault.
    good: list[Reading] = [r for r in sink.got if r.device == "good" and window[0] <= r.ts_ms <= window[1]]
    assert len([r for r in good if r.tag == "temperature"]) >= 5, good
    assert all(r.quality == Quality.GOOD for r in good), [r for r in good if r.quality != Quality.GOOD]
    # One ERROR for the whole episode, with the traceback; its repeats went to DEBUG.
    errors = [r for r in caplog.records[errors_before:] if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage()[:200] for r in errors]
    message = errors[0].getMessage()
    assert "opcua device broken" in message and "Gremlin" in message and "Traceback" in message
    assert gremlin.raised >= 3
    # The reason names the error's type, on the readings and on the device's state.
    assert bad[0].reason == "internal error: Gremlin"
    assert any(s.device == "broken" and s.reason == "internal error: Gremlin" for s in sink.states)
