"""A start-first update on the docker runtime is a sequence of steps the supervisor's loop
drives (start the new container beside the old one -> wait until it is healthy -> hand over,
or roll back), each of which returns at once: no step blocks the loop while a container
starts.

A fake Engine keeps the containers (create, start, stop, remove, rename) and lets the test say
when a container's health check passes or when it exits; it records what happened, in order.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.plan import Policy
from gateway.runtime.common import RunDir
from gateway.runtime.docker import DockerRuntime
from gateway.runtime.engine_api import APIClient, APIError, ImageNotFound, NotFound, Transport
from gateway.supervisor import Supervisor, load, read_status
from tests.gateway.test_compose_render import plant

pytestmark = pytest.mark.unit

POLICY = Policy(start_grace=600, unhealthy_grace=600)
STEP_BUDGET = 1.0  # seconds one loop round may take; the old runtime blocked for up to 90 s


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Box:
    """One container of the fake Engine."""

    ids = itertools.count(1)

    def __init__(self, engine: FakeEngine, args: dict[str, Any]) -> None:
        self.engine = engine
        self.id = f"{next(self.ids):064x}"
        self.name: str = args["name"]
        self.labels: dict[str, str] = args["labels"]
        self.checked = bool(args.get("healthcheck") and args["healthcheck"].get("test") != ["NONE"])
        self.args = args
        image = args["image"]
        self.attrs: dict[str, Any] = {
            "State": {"Status": "created", "StartedAt": "0001-01-01T00:00:00Z",
                      "FinishedAt": "0001-01-01T00:00:00Z", "ExitCode": 0},
            "RestartCount": 0, "Image": engine.images_present[image], "Config": {"Image": image}}

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def status(self) -> str:
        return str(self.attrs["State"]["Status"])

    def start(self) -> None:
        self.attrs["State"].update({"Status": "running", "StartedAt": _now()})
        if self.checked:
            self.attrs["State"]["Health"] = {"Status": "starting"}
        self.engine.events.append(f"start {self.name}")
        if self.engine.on_start is not None:
            self.engine.on_start(self)

    def stop(self, timeout: int = 10) -> None:
        self.attrs["State"].update({"Status": "exited", "FinishedAt": _now()})
        self.attrs["State"].pop("Health", None)
        self.engine.events.append(f"stop {self.name}")

    def remove(self, force: bool = False) -> None:
        del self.engine.boxes[self.id]
        self.engine.events.append(f"remove {self.name}")

    def reload(self) -> None:
        pass  # the attributes are always current

    def rename(self, name: str) -> None:
        self.engine.events.append(f"rename {self.name} -> {name}")
        self.name = name


class FakeEngine:
    def __init__(self, images: list[str]) -> None:
        self.images_present = {image: f"sha256:{n:064x}" for n, image in enumerate(images)}
        self.boxes: dict[str, Box] = {}
        self.events: list[str] = []
        self.on_start: Callable[[Box], None] | None = None
        self.containers = self
        self.images = _Images(self)
        self.volumes = _Anything()
        self.networks = _Anything()
        self.api = _Api(self)

    # containers.*
    def list(self, all: bool = False, filters: dict[str, str] | None = None) -> list[Box]:
        return list(self.boxes.values())

    def get(self, key: str) -> Box:
        for box in self.boxes.values():
            if key in (box.id, box.name):
                return box
        raise NotFound(f"no container {key}")

    def close(self) -> None:
        pass

    # what the test does to the containers
    def box(self, name: str) -> Box:
        return self.get(name)

    def healthy(self, name: str) -> None:
        self.box(name).attrs["State"]["Health"] = {"Status": "healthy"}
        self.events.append(f"healthy {name}")

    def exits(self, name: str, code: int) -> None:
        box = self.box(name)
        box.attrs["State"].update({"Status": "exited", "ExitCode": code, "FinishedAt": _now()})
        box.attrs["State"].pop("Health", None)
        self.events.append(f"exited {name}")


class _Images:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    def list(self, name: str) -> list[object]:
        return [object()] if name in self.engine.images_present else []

    def get(self, name: str) -> Any:
        if name not in self.engine.images_present:
            raise ImageNotFound(name)
        return type("Image", (), {"id": self.engine.images_present[name]})()


class _Anything:
    def get(self, name: str) -> object:
        return object()

    def list(self, **kwargs: Any) -> list[object]:
        return [object()]


class _Api:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self._local = APIClient(Transport("/nonexistent.sock"), version="1.41")

    def create_host_config(self, **kwargs: Any) -> Any:
        return self._local.create_host_config(**kwargs)

    def create_container(self, **args: Any) -> dict[str, str]:
        box = Box(self.engine, args)
        self.engine.boxes[box.id] = box
        self.engine.events.append(f"create {box.name} {args['image']}")
        return {"Id": box.id}


IMAGES = ["fieldgate/forwarder:0.1.0", "fieldgate/collector-modbus:0.1.0", "fieldgate/collector-opcua:0.1.0",
          "fieldgate/collector-opcua:0.2.0", "fieldgate/collector-opcua:0.3.0"]


async def timed_step(supervisor: Supervisor) -> None:
    started = time.monotonic()
    await supervisor.step()
    took = time.monotonic() - started
    assert took < STEP_BUDGET, f"one loop round took {took:.1f}s"


def set_image(config_dir: Path, image: str, supervisor: Supervisor | None = None) -> None:
    """Edit gateway.yaml's image of that repository; with a supervisor, apply it as a config change does."""
    gateway = config_dir / "gateway.yaml"
    text = gateway.read_text()
    repository = image.rsplit(":", 1)[0]
    old = next(line for line in text.splitlines() if f"{repository}:" in line)
    gateway.write_text(text.replace(old, f"    image: {image}"))
    if supervisor is not None:
        config, errors = load(config_dir)
        assert config is not None, errors
        supervisor.desired = supervisor.runtime.desired(config, config_dir)


@contextlib.asynccontextmanager
async def supervised(config_dir: Path, engine: FakeEngine, out: io.StringIO) -> AsyncIterator[Supervisor]:
    """The plant up on the fake Engine, every container healthy, the supervisor's loop settled."""
    config, errors = load(config_dir)
    assert config is not None, errors
    run_dir = RunDir.for_config(config_dir)
    async with DockerRuntime(config_dir, run_dir, client=engine, printer=lambda _: None,
                             stats_interval=3600) as runtime:
        supervisor = Supervisor(config_dir, runtime, run_dir, runtime.desired(config, config_dir), POLICY,
                                out=out)
        await timed_step(supervisor)
        for name in ("forwarder", "modbus", "opcua"):
            engine.healthy(f"fieldgate-line3-{name}-1")
        await timed_step(supervisor)
        yield supervisor


def opcua_state(run_dir: RunDir) -> str:
    return next(s["state"] for s in (read_status(run_dir) or {})["services"] if s["name"] == "opcua")


async def test_start_first_is_start_new_wait_healthy_hand_over_or_roll_back_each_step_at_once(
    tmp_path: Path,
) -> None:
    config_dir = plant(tmp_path, network="bridge")  # opcua: update start-first, no serial port
    run_dir = RunDir.for_config(config_dir)
    engine = FakeEngine(IMAGES)
    out = io.StringIO()
    main, candidate = "fieldgate-line3-opcua-1", "fieldgate-line3-opcua-1-next"
    async with supervised(config_dir, engine, out) as supervisor:
        old = engine.box(main).id

        # A good update: the new container starts beside the old one; the round returns at once.
        set_image(config_dir, "fieldgate/collector-opcua:0.2.0", supervisor)
        engine.events.clear()
        await timed_step(supervisor)
        assert engine.events == [f"create {candidate} fieldgate/collector-opcua:0.2.0", f"start {candidate}"]
        assert "recreate opcua start-first (image fieldgate/collector-opcua:0.1.0 -> " in out.getvalue()
        for _ in range(3):  # starting: the loop looks again, touches nothing
            await timed_step(supervisor)
        assert engine.box(main).status == "running" and engine.box(main).id == old
        assert opcua_state(run_dir) == "running (new instance fieldgate/collector-opcua:0.2.0 starting beside it)"
        engine.healthy(candidate)
        await timed_step(supervisor)
        assert engine.events[-4:] == [f"healthy {candidate}", f"stop {main}", f"remove {main}",
                                      f"rename {candidate} -> {main}"]
        assert engine.box(main).attrs["Config"]["Image"] == "fieldgate/collector-opcua:0.2.0"
        assert "hand opcua over to the new instance (healthy)" in out.getvalue()
        await timed_step(supervisor)
        assert opcua_state(run_dir) == "running"

        # A bad update: the new container exits; it is removed and the old one never stopped.
        good = engine.box(main).id
        set_image(config_dir, "fieldgate/collector-opcua:0.3.0", supervisor)
        engine.events.clear()
        await timed_step(supervisor)
        engine.exits(candidate, 1)
        await timed_step(supervisor)
        assert engine.events == [f"create {candidate} fieldgate/collector-opcua:0.3.0", f"start {candidate}",
                                 f"exited {candidate}", f"remove {candidate}"]
        assert engine.box(main).id == good and engine.box(main).status == "running"
        assert "roll opcua back to the running instance (the new instance exited with code 1)" in out.getvalue()
        assert opcua_state(run_dir).startswith(
            "running (recreate failed: the new instance exited with code 1; next try in"), opcua_state(run_dir)
        await timed_step(supervisor)  # held for its backoff: nothing is created again at once
        assert engine.events[-1] == f"remove {candidate}"


async def test_an_update_without_a_supervisor_drives_the_same_handover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fieldgate update` when no supervisor runs: the same planner, for the one service."""
    from gateway import update
    from gateway.runtime import docker as docker_runtime

    config_dir = plant(tmp_path, network="bridge")
    config, errors = load(config_dir)
    assert config is not None, errors
    run_dir = RunDir.for_config(config_dir)
    engine = FakeEngine(IMAGES)
    monkeypatch.setattr(docker_runtime, "connect", lambda timeout=60.0: engine)
    async with DockerRuntime(config_dir, run_dir, printer=lambda _: None, stats_interval=3600) as runtime:
        supervisor = Supervisor(config_dir, runtime, run_dir, runtime.desired(config, config_dir), POLICY,
                                out=io.StringIO())
        await supervisor.step()
    for name in ("forwarder", "modbus", "opcua"):
        engine.healthy(f"fieldgate-line3-{name}-1")
    set_image(config_dir, "fieldgate/collector-opcua:0.2.0")
    candidate = "fieldgate-line3-opcua-1-next"
    engine.on_start = lambda box: engine.healthy(box.name) if box.name == candidate else None
    assert await update._update_directly(config_dir, run_dir, "opcua", 20.0)
    assert engine.box("fieldgate-line3-opcua-1").attrs["Config"]["Image"] == "fieldgate/collector-opcua:0.2.0"
    assert engine.events[-3:] == ["stop fieldgate-line3-opcua-1", "remove fieldgate-line3-opcua-1",
                                  f"rename {candidate} -> fieldgate-line3-opcua-1"]


async def test_under_host_network_the_new_instance_starts_first_as_a_standby_on_a_port_of_its_own(
    tmp_path: Path,
) -> None:
    """Host network: two containers cannot both hold opcua's metrics port 9110, so the new one
    gets another port by FIELDGATE_STANDBY_PORT, its health check asks there, and the old one
    runs untouched until the new one is healthy (before: recreated stop-first)."""
    config_dir = plant(tmp_path, network="host")
    run_dir = RunDir.for_config(config_dir)
    engine = FakeEngine(IMAGES)
    out = io.StringIO()
    main, candidate = "fieldgate-line3-opcua-1", "fieldgate-line3-opcua-1-next"
    async with supervised(config_dir, engine, out) as supervisor:
        assert "FIELDGATE_STANDBY_PORT" not in engine.box(main).args["environment"]

        set_image(config_dir, "fieldgate/collector-opcua:0.2.0", supervisor)
        engine.events.clear()
        await timed_step(supervisor)
        assert engine.events == [f"create {candidate} fieldgate/collector-opcua:0.2.0", f"start {candidate}"]
        assert "recreate opcua start-first (image fieldgate/collector-opcua:0.1.0 -> " in out.getvalue()
        args = engine.box(candidate).args
        port = int(args["environment"]["FIELDGATE_STANDBY_PORT"])
        assert port not in (9108, 9109, 9110) and args["labels"]["io.fieldgate.standby-port"] == str(port)
        assert f"http://127.0.0.1:{port}/healthz" in args["healthcheck"]["test"][-1]
        assert engine.box(main).status == "running"
        engine.healthy(candidate)
        await timed_step(supervisor)
        assert engine.events[-3:] == [f"stop {main}", f"remove {main}", f"rename {candidate} -> {main}"]
        assert opcua_state(run_dir) == "running"


async def test_a_serial_collector_stays_stop_first_and_its_gap_is_only_the_new_containers_start(
    tmp_path: Path,
) -> None:
    """One owner of a serial port: the Modbus collector with an RTU device is replaced stop-first
    and its new container is no standby. The new container is created while the old one still
    runs: between the old one's stop and the new one's start the Engine does nothing else (before:
    stop, remove, create, start)."""
    import os
    import pty

    master, slave = pty.openpty()
    main, new = "fieldgate-line3-modbus-1", "fieldgate-line3-modbus-1-next"
    try:
        gateway = plant(tmp_path, network="host", rtu_port=os.ttyname(slave))
        run_dir = RunDir.for_config(gateway)
        engine = FakeEngine([*IMAGES, "fieldgate/collector-modbus:0.2.0"])
        out = io.StringIO()
        async with supervised(gateway, engine, out) as supervisor:
            set_image(gateway, "fieldgate/collector-modbus:0.2.0", supervisor)
            engine.events.clear()
            await timed_step(supervisor)
            status = opcua_state(run_dir)
    finally:
        os.close(master)
        os.close(slave)
    assert "recreate modbus stop-first (image fieldgate/collector-modbus:0.1.0 -> " in out.getvalue()
    assert engine.events == [f"create {new} fieldgate/collector-modbus:0.2.0", f"stop {main}", f"start {new}",
                             f"remove {main}", f"rename {new} -> {main}"]
    box = engine.box(main)
    assert box.attrs["Config"]["Image"] == "fieldgate/collector-modbus:0.2.0" and box.status == "running"
    assert "FIELDGATE_STANDBY_PORT" not in box.args["environment"]
    assert status == "running"


async def test_a_stop_first_new_container_that_cannot_start_gives_the_service_back_to_the_old_one(
    tmp_path: Path,
) -> None:
    config_dir = plant(tmp_path, network="host")
    engine = FakeEngine([*IMAGES, "fieldgate/collector-modbus:0.2.0"])
    main, new = "fieldgate-line3-modbus-1", "fieldgate-line3-modbus-1-next"
    async with supervised(config_dir, engine, io.StringIO()) as supervisor:
        set_image(config_dir, "fieldgate/collector-modbus:0.2.0", supervisor)

        def refuse(box: Box) -> None:
            if box.name == new:
                raise APIError("exec format error")

        engine.on_start = refuse
        engine.events.clear()
        await timed_step(supervisor)
    assert engine.events[:3] == [f"create {new} fieldgate/collector-modbus:0.2.0", f"stop {main}", f"start {new}"]
    assert engine.events[3:] == [f"remove {new}", f"start {main}"]
    assert engine.box(main).status == "running"
