"""A step that fails to execute (an image not on the engine, a program that cannot start) is an
outcome the runtime reports; the planner backs it off like a crash, so the supervisor neither
spins nor hammers the Engine, and `fieldgate status` says why the service is not running.

The docker runtime runs against a fake Engine that answers what an engine without the images
answers, and counts every call; the process runtime runs for real.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gateway.plan import Policy, ServiceSpec, Start
from gateway.runtime.common import RunDir
from gateway.runtime.docker import DockerRuntime
from gateway.runtime.engine_api import APIClient, ImageNotFound, NotFound, Transport
from gateway.runtime.process import ProcessRuntime
from gateway.supervisor import Supervisor, load, read_status
from tests.gateway.test_compose_render import plant

# Backoff steps of 0.1, 0.2, 0.4, 0.4, ... s: seven attempts fit in two seconds.
POLICY = Policy(backoff_initial=0.1, backoff_factor=2, backoff_cap=0.4, stable_after=60)
WINDOW = 2.0


def backoff_steps(policy: Policy, window: float) -> int:
    """How many attempts the policy allows in `window` seconds, the first one at 0."""
    at, n = 0.0, 0
    while at <= window:
        at += policy.delay(n)
        n += 1
    return n


class FakeEngine:
    """An engine on which no image of the plant exists; every API call is counted."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.containers = _Part(self, "containers")
        self.images = _Part(self, "images")
        self.volumes = _Part(self, "volumes")
        self.networks = _Part(self, "networks")
        self.api = _Api(self)

    def answer(self, call: str, *args: Any, **kwargs: Any) -> Any:
        self.calls[call] += 1
        if call in ("containers.list", "images.list", "networks.list"):
            return [object()] if call == "networks.list" else []
        if call == "containers.get":
            raise NotFound(f"no container {args[0]}")
        if call == "images.get":
            raise ImageNotFound(f"no image {args[0]}")
        if call == "volumes.get":
            return object()
        raise AssertionError(f"the runtime called {call} on an engine that has none of its images")

    def close(self) -> None:
        pass


class _Part:
    def __init__(self, engine: FakeEngine, name: str) -> None:
        self._engine, self._name = engine, name

    def __getattr__(self, method: str) -> Any:
        return lambda *args, **kwargs: self._engine.answer(f"{self._name}.{method}", *args, **kwargs)


class _Api:
    """Host configs are built locally (no call); anything else is an Engine call."""

    def __init__(self, engine: FakeEngine) -> None:
        self._engine = engine
        self._local = APIClient(Transport("/nonexistent.sock"), version="1.41")

    def create_host_config(self, **kwargs: Any) -> Any:
        return self._local.create_host_config(**kwargs)

    def __getattr__(self, method: str) -> Any:
        return lambda *args, **kwargs: self._engine.answer(f"api.{method}", *args, **kwargs)


async def run_for(supervisor: Supervisor, seconds: float) -> None:
    task = asyncio.create_task(supervisor.run())
    await asyncio.sleep(seconds)
    supervisor.stopping.set()
    await asyncio.wait_for(task, 30)


def state_of(run_dir: RunDir, name: str) -> str:
    status = read_status(run_dir) or {}
    return next(str(s["state"]) for s in status.get("services", []) if s["name"] == name)


@pytest.mark.unit
async def test_a_missing_image_costs_one_engine_round_per_backoff_step_and_shows_in_status(
    tmp_path: Path,
) -> None:
    config_dir = plant(tmp_path)
    config, errors = load(config_dir)
    assert config is not None, errors
    run_dir = RunDir.for_config(config_dir)
    engine = FakeEngine()
    out = io.StringIO()
    async with DockerRuntime(config_dir, run_dir, client=engine, printer=lambda _: None,
                             stats_interval=3600) as runtime:
        supervisor = Supervisor(config_dir, runtime, run_dir, runtime.desired(config, config_dir), POLICY,
                                out=out)
        await run_for(supervisor, WINDOW)
        state = state_of(run_dir, "modbus")
    steps = backoff_steps(POLICY, WINDOW)
    attempts = out.getvalue().count("start modbus (")
    rounds = engine.calls["containers.list"]
    print(f"\n{WINDOW:.1f} s, {steps} backoff steps: {attempts} attempts to start modbus, {rounds} "
          f"containers.list, {sum(engine.calls.values())} Engine calls ({dict(engine.calls)}), "
          f"{out.getvalue().count(chr(10))} log lines")
    # Today's runtime kept a private backoff, skipped the step and woke the loop at once:
    # thousands of rounds in two seconds. Now each backoff step is one attempt, and one round.
    assert 3 <= attempts <= steps + 1, out.getvalue()[-2000:]
    assert engine.calls["images.list"] <= 3 * (steps + 1)  # one image check per service per attempt
    # One round per backoff step: observe, an image check per service, observe for the status
    # (and two more observes to shut down).
    assert rounds <= 2 * (steps + 1) + 2, dict(engine.calls)
    assert sum(engine.calls.values()) <= 5 * (steps + 1) + 2, dict(engine.calls)
    assert "api.create_container" not in engine.calls  # checked before anything is created
    assert state.startswith("image missing (image fieldgate/collector-modbus:0.1.0 is not on this engine"), state
    assert "fieldgate images load" in state and "next try in" in state, state
    assert "modbus: start failed: image fieldgate/collector-modbus:0.1.0 is not on this engine" in out.getvalue()


@pytest.mark.sim
async def test_a_program_that_cannot_start_is_a_failed_outcome_backed_off_and_shown(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "state")
    broken = ServiceSpec(name="opcua", command=(str(tmp_path / "no-such-program"),), config_hash="x")
    out = io.StringIO()
    async with ProcessRuntime(run_dir, printer=lambda _: None, relay=io.StringIO()) as runtime:
        outcome = await runtime.execute(Start(broken, "not running"))
        assert not outcome.ok
        assert outcome.failure == "cannot-start"
        assert "No such file or directory" in outcome.reason and "no-such-program" in outcome.reason
        supervisor = Supervisor(tmp_path, runtime, run_dir, {"opcua": broken}, POLICY, out=out)
        await run_for(supervisor, WINDOW)
        state = state_of(run_dir, "opcua")
    attempts = out.getvalue().count("start opcua (")
    assert 3 <= attempts <= backoff_steps(POLICY, WINDOW) + 1, out.getvalue()
    assert state.startswith("start failed ([Errno 2] No such file or directory"), state
    assert json.dumps(read_status(run_dir)).count("no-such-program") >= 1
