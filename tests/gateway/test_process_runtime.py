"""The process runtime and the supervisor loop, with real child processes.

First with stand-in services (a few lines serving /healthz and /metrics), to pin the
mechanics: start order, health, restart after kill -9, SIGKILL after the stop timeout,
nothing left behind. Then `fieldgate up DIR --runtime process` as a user runs it, with the
real forwarder and Modbus collector, a Modbus simulator and a real Mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.demo import free_port_run
from gateway.plan import Policy, ServiceSpec
from gateway.runtime.common import RunDir
from gateway.runtime.metrics import QUARANTINED_GAUGES, first_of, http_get, parse_metrics
from gateway.runtime.process import ProcessRuntime, child_environment
from gateway.supervisor import ConfigWatcher, Supervisor, format_table, read_status, status_rows
from tests.support.broker import Mosquitto, free_port, wait_port
from tests.support.mqtt import Subscriber

STAND_IN = """
import asyncio, signal, sys
from collectors.core.metrics import Metrics

port, mode = int(sys.argv[1]), sys.argv[2]
count = 0

async def main():
    global count
    metrics = Metrics()
    metrics.counter("readings_total", "readings", lambda: count)
    metrics.health_check(lambda: "sick on purpose" if mode == "unhealthy" else None)
    await metrics.serve(port, "127.0.0.1")
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"stand-in up on {port}", flush=True)
    if mode == "crash":
        await asyncio.sleep(0.2)
        sys.exit(3)
    while True:
        count += 100
        await asyncio.sleep(0.1)

asyncio.run(main())
"""


def stand_in(tmp_path: Path, name: str, mode: str = "ok", port: int | None = None) -> ServiceSpec:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    port = port or free_port()
    return ServiceSpec(name=name, command=(sys.executable, str(script), str(port), mode),
                       config_hash=f"{name}-{mode}", metrics_port=port)


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for whichever process adopted it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def until(check: Callable[[], bool], within: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met after {within}s")
        await asyncio.sleep(0.05)


def quiet_runtime(run_dir: RunDir) -> ProcessRuntime:
    return ProcessRuntime(run_dir, printer=lambda _: None, relay=io.StringIO(), health_interval=0.2)


FAST = Policy(backoff_initial=0.2, backoff_factor=2, backoff_cap=1, stable_after=60, unhealthy_grace=1.5,
              start_grace=10)


@pytest.mark.sim
async def test_supervisor_starts_restarts_and_stops_real_processes(tmp_path: Path) -> None:
    lines: list[str] = []
    relay = io.StringIO()
    run_dir = RunDir(tmp_path / "state")
    desired = {s.name: s for s in (stand_in(tmp_path, "modbus"), stand_in(tmp_path, "forwarder"))}
    async with ProcessRuntime(run_dir, printer=lines.append, relay=relay, health_interval=0.2) as runtime:
        sup = Supervisor(tmp_path, runtime, run_dir, desired, FAST, out=io.StringIO())
        task = asyncio.create_task(sup.run())
        children = runtime.children
        await until(lambda: all(c.health == "healthy" for c in children().values()) and len(children()) == 2,
                    what="both healthy")
        # forwarder first: collectors dial its hand-off socket
        assert [line.split()[0] for line in lines[:2]] == ["forwarder", "modbus"]
        assert "stand-in up on" in relay.getvalue() and "modbus    | " in relay.getvalue()

        first = children()["modbus"].pid
        os.kill(first, signal.SIGKILL)
        await until(lambda: children()["modbus"].pid != first and children()["modbus"].health == "healthy",
                    what="modbus restarted")
        assert children()["modbus"].restarts == 1
        assert any("modbus    exited with code -9" in line for line in lines)

        await until(lambda: (read_status(run_dir) or {}).get("services", [{}])[-1].get("restarts") == 1,
                    what="status file shows the restart")
        status = read_status(run_dir)
        assert status is not None
        rows = {row[0]: row for row in status_rows(status, time.time())}
        assert rows["modbus"][1:3] == ["running", "healthy"]
        assert rows["modbus"][5] == "1"
        assert "SERVICE" in format_table(status_rows(status, time.time()))

        pids = [c.pid for c in children().values()]
        sup.stopping.set()
        await asyncio.wait_for(task, 30)
    assert not any(alive(pid) for pid in pids)
    final = read_status(run_dir)
    assert final is not None and final["supervisor"]["running"] is False


@pytest.mark.sim
async def test_crash_loop_backs_off_and_shows_in_status(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "state")
    crashing = stand_in(tmp_path, "modbus", "crash")
    async with quiet_runtime(run_dir) as rt:
        sup = Supervisor(tmp_path, rt, run_dir, {"modbus": crashing}, FAST, out=io.StringIO())
        task = asyncio.create_task(sup.run())
        await until(lambda: sup.backoff.crash_looping("modbus"), what="crash loop detected")
        await until(lambda: "crash-looping" in json.dumps(read_status(run_dir)), what="crash loop in status")
        restarts = rt.children()["modbus"].restarts
        await until(lambda: rt.children()["modbus"].restarts >= restarts + 2, what="keeps restarting")
        sup.stopping.set()
        await asyncio.wait_for(task, 30)


@pytest.mark.sim
async def test_unhealthy_service_is_restarted(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "state")
    sick = stand_in(tmp_path, "opcua", "unhealthy")
    async with quiet_runtime(run_dir) as rt:
        sup = Supervisor(tmp_path, rt, run_dir, {"opcua": sick}, FAST, out=io.StringIO())
        task = asyncio.create_task(sup.run())
        await until(lambda: "opcua" in rt.children() and rt.children()["opcua"].restarts >= 1,
                    what="unhealthy service restarted")
        answers = []
        for _ in range(50):  # it may be between two lives right now
            try:
                answers.append(await http_get(sick.metrics_port or 0, "/healthz"))
                break
            except OSError:
                await asyncio.sleep(0.1)
        assert [(status, body.strip()) for status, body in answers] == [(503, "sick on purpose")]
        sup.stopping.set()
        await asyncio.wait_for(task, 30)


@pytest.mark.sim
async def test_a_child_ignoring_sigterm_is_killed_after_the_stop_timeout(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "state")
    stubborn = stand_in(tmp_path, "forwarder", "ignore-term")
    lines: list[str] = []
    async with ProcessRuntime(run_dir, printer=lines.append, relay=io.StringIO(), stop_timeout=1.0,
                              health_interval=0.2) as rt:
        sup = Supervisor(tmp_path, rt, run_dir, {"forwarder": stubborn}, FAST, out=io.StringIO())
        task = asyncio.create_task(sup.run())
        await until(lambda: "forwarder" in rt.children() and rt.children()["forwarder"].health == "healthy")
        pid = rt.children()["forwarder"].pid
        started = time.monotonic()
        sup.stopping.set()
        await asyncio.wait_for(task, 30)
        assert 0.9 <= time.monotonic() - started < 10
    assert not alive(pid)
    assert any("sending SIGKILL" in line for line in lines)


@pytest.mark.sim
async def test_metrics_are_scraped_into_readings_per_second(tmp_path: Path) -> None:
    spec = stand_in(tmp_path, "modbus")
    run_dir = RunDir(tmp_path / "state")
    async with quiet_runtime(run_dir) as rt:
        sup = Supervisor(tmp_path, rt, run_dir, {"modbus": spec}, FAST, out=io.StringIO())
        task = asyncio.create_task(sup.run())
        await until(lambda: "modbus" in rt.children() and rt.children()["modbus"].readings_per_s is not None,
                    within=30, what="a rate")
        rate = rt.children()["modbus"].readings_per_s or 0
        assert 300 < rate < 1500  # the stand-in counts ~1000/s
        _, text = await http_get(spec.metrics_port or 0, "/metrics")
        assert parse_metrics(text)["fieldgate_readings_total"] > 0
        sup.stopping.set()
        await asyncio.wait_for(task, 30)


@pytest.mark.sim
async def test_a_service_that_cannot_start_is_reported_and_the_others_run(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "state")
    broken = ServiceSpec(name="opcua", command=(str(tmp_path / "no-such-program"),), config_hash="x")
    out = io.StringIO()
    async with quiet_runtime(run_dir) as rt:
        desired = {"opcua": broken, "forwarder": stand_in(tmp_path, "forwarder")}
        sup = Supervisor(tmp_path, rt, run_dir, desired, FAST, out=out)
        task = asyncio.create_task(sup.run())
        await until(lambda: out.getvalue().count("opcua: start failed: [Errno 2]") >= 2, what="retried")
        assert rt.children()["forwarder"].exited is None
        sup.stopping.set()
        await asyncio.wait_for(task, 30)


@pytest.mark.sim
async def test_a_protocol_no_longer_used_is_removed_and_a_new_one_started(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "state")
    forwarder, modbus, opcua = (stand_in(tmp_path, name) for name in ("forwarder", "modbus", "opcua"))
    slice_file = str(run_dir.slice_file("modbus"))
    modbus = dataclasses.replace(modbus, config_file=slice_file, config_text="devices: []\n")
    lines: list[str] = []
    async with ProcessRuntime(run_dir, printer=lines.append, relay=io.StringIO(), health_interval=0.2) as rt:
        desired = {"forwarder": forwarder, "modbus": modbus}
        sup = Supervisor(tmp_path, rt, run_dir, desired, FAST, out=io.StringIO())
        task = asyncio.create_task(sup.run())
        await until(lambda: "modbus" in rt.children() and rt.children()["modbus"].health == "healthy")
        assert run_dir.slice_file("modbus").read_text() == "devices: []\n"
        pids = {name: child.pid for name, child in rt.children().items()}
        sup.desired = {"forwarder": forwarder, "opcua": opcua}  # what a config change does
        await until(lambda: set(rt.children()) == {"forwarder", "opcua"}, what="modbus out, opcua in")
        assert not alive(pids["modbus"]) and rt.children()["forwarder"].pid == pids["forwarder"]
        assert not run_dir.slice_file("modbus").exists()
        assert "modbus    removed (no longer configured)" in lines
        sup.stopping.set()
        await asyncio.wait_for(task, 30)


@pytest.mark.unit
def test_the_config_watcher_reports_a_change_once_the_files_have_settled(tmp_path: Path) -> None:
    (tmp_path / "devices").mkdir()
    (tmp_path / "gateway.yaml").write_text("gateway: {id: a}\n")
    device = tmp_path / "devices" / "press-1.yaml"
    device.write_text("name: press-1\n")
    watcher = ConfigWatcher(tmp_path)
    assert watcher.poll() is False
    device.write_text("name: press-1\nunit: 2\n")
    assert watcher.poll() is False  # maybe half written: look again
    assert watcher.poll() is True
    assert watcher.poll() is False
    (tmp_path / "devices" / ".press-1.yaml.swp").write_text("editor")  # not a device file
    (tmp_path / "devices" / "notes.txt").write_text("x")
    assert [watcher.poll(), watcher.poll()] == [False, False]
    device.rename(tmp_path / "devices" / "press-1.yaml~")  # a backup name: the device is gone
    assert [watcher.poll(), watcher.poll()] == [False, True]


SUPERVISOR = """
import asyncio, sys
from pathlib import Path
from gateway.plan import ServiceSpec
from gateway.runtime.process import ProcessRuntime, RunDir
from gateway.supervisor import Supervisor

spec = ServiceSpec(name="modbus", command=tuple(sys.argv[2:]), config_hash="x")

async def main():
    run_dir = RunDir(Path(sys.argv[1]))
    async with ProcessRuntime(run_dir) as runtime:
        await Supervisor(Path(sys.argv[1]), runtime, run_dir, {"modbus": spec}).run()

asyncio.run(main())
"""


@pytest.mark.sim
def test_children_die_with_a_supervisor_killed_by_sigkill(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "state")
    service = stand_in(tmp_path, "modbus")
    command = [sys.executable, "-c", SUPERVISOR, str(run_dir.root), *service.command]
    supervisor = subprocess.Popen(command, env=child_environment(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    try:
        pid = wait_sync(lambda: service_pids(run_dir).get("modbus"), what="the child runs")
        assert isinstance(pid, int) and alive(pid)
        supervisor.kill()
        supervisor.wait()
        wait_sync(lambda: not alive(pid), within=10, what="the orphan ended")
    finally:
        stop(supervisor, signal.SIGKILL)


@pytest.mark.unit
def test_a_hand_off_socket_path_too_long_moves_to_a_private_tmp_folder(tmp_path: Path) -> None:
    short = RunDir(tmp_path / "plant" / ".fieldgate")
    assert short.handoff_socket == tmp_path / "plant" / ".fieldgate" / "handoff" / "handoff.sock"
    deep = RunDir(tmp_path / ("x" * 90) / ".fieldgate")
    socket = deep.handoff_socket
    assert socket.parent.parent == Path("/tmp") and socket.parent.name.startswith("fieldgate-")
    assert len(str(socket)) <= 100 and socket == RunDir(deep.root).handoff_socket  # stable
    try:
        deep.create()
        assert socket.parent.stat().st_mode & 0o777 == 0o700
        socket.parent.chmod(0o755)  # someone opened it up: refused
        with pytest.raises(RuntimeError, match="not a private directory"):
            deep.create()
    finally:
        socket.parent.rmdir()


@pytest.mark.unit
def test_slices_are_json_and_a_simulate_edit_restarts_nothing(tmp_path: Path) -> None:
    from collectors.core.config import read_slice
    from gateway.config import load_config
    from gateway.runtime.desired import process_specs

    plant = tmp_path / "plant"
    (plant / "devices").mkdir(parents=True)
    (plant / "gateway.yaml").write_text(GATEWAY_YAML.format(
        broker_port=1883, metrics_port=9300, buffer=tmp_path / "buffer", mqtt_extra=""))
    device = plant / "devices" / "press-1.yaml"
    device.write_text(PRESS_YAML.format(port=5020, scale=2))
    run_dir = RunDir.for_config(plant)

    def specs() -> dict[str, ServiceSpec]:
        return process_specs(load_config(plant, env={}), run_dir)

    before = specs()
    text = before["modbus"].config_text
    assert text.startswith("# Generated by fieldgate from the config directory; do not edit.\n{\n")
    slice_file = tmp_path / "modbus.yaml"
    slice_file.write_text(text)
    tags = read_slice(slice_file)["devices"][0]["tags"]
    assert [t["name"] for t in tags] == ["temperature", "level"]
    assert not any("simulate" in t for t in tags)
    device.write_text(device.read_text().replace("value: 50", "value: 60"))
    assert {n: s.config_hash for n, s in specs().items()} == {n: s.config_hash for n, s in before.items()}
    device.write_text(device.read_text().replace("poll: 250ms", "poll: 1s"))
    after = specs()
    assert after["modbus"].config_hash != before["modbus"].config_hash
    assert after["forwarder"].config_hash == before["forwarder"].config_hash


@pytest.mark.unit
def test_status_table_shows_resources_when_the_runtime_measures_them() -> None:
    now = 1_000_000.0
    status = {"services": [
        {"name": "forwarder", "state": "running", "health": "healthy", "restarts": 0, "since": now - 300,
         "image": "fieldgate/forwarder:0.1.0", "readings_per_s": 120.0, "buffered": 0,
         "cpu_percent": 3.2, "cpu_limit": 0.5, "memory": 40 * 2**20, "memory_limit": 128 * 2**20},
        {"name": "modbus", "state": "crash-looping (exited with code 2; restart in 8s)", "health": None,
         "restarts": 4, "since": now - 5},
    ]}
    rows = status_rows(status, now)
    assert rows == [
        ["SERVICE", "STATE", "HEALTH", "READINGS/S", "BUFFERED", "RESTARTS", "UPTIME", "CPU", "MEMORY",
         "IMAGE"],
        ["forwarder", "running", "healthy", "120.0", "0", "0", "5m", "3.2% of 0.5", "40MiB of 128MiB",
         "fieldgate/forwarder:0.1.0"],
        ["modbus", "crash-looping (exited with code 2; restart in 8s)", "-", "-", "-", "4", "-", "-", "-",
         "-"],
    ]
    table = format_table(rows).splitlines()
    assert table[0].index("HEALTH") == table[1].index("healthy") == table[2].index(" -  ") + 1
    process = {"services": [{"name": "modbus", "state": "running", "health": "starting", "restarts": 1,
                             "since": now - 7200, "pid": 4242}]}
    assert status_rows(process, now)[1] == [
        "modbus", "running", "starting", "-", "-", "1", "2h00m", "pid 4242"]


@pytest.mark.unit
def test_status_table_names_the_memory_the_process_runtime_measures() -> None:
    now = 1_000_000.0
    status = {"services": [
        {"name": "forwarder", "state": "running", "health": "healthy", "restarts": 0, "since": now - 60,
         "pid": 4242, "memory": int(24.6 * 2**20), "memory_source": "pss"},
        {"name": "modbus", "state": "running", "health": "healthy", "restarts": 0, "since": now - 60,
         "pid": 4243, "memory": int(30.25 * 2**20), "memory_source": "rss"},
        {"name": "opcua", "state": "exited with code 1", "health": None, "restarts": 2, "since": now - 5,
         "memory": None, "memory_source": None},
    ]}
    rows = status_rows(status, now)
    assert rows[0] == ["SERVICE", "STATE", "HEALTH", "READINGS/S", "BUFFERED", "RESTARTS", "UPTIME", "MEMORY",
                       "IMAGE"]
    assert [row[7] for row in rows[1:]] == ["24.6MiB PSS", "30.2MiB RSS", "-"]


# ---------------------------------------------------------------------- fieldgate up, end to end

GATEWAY_YAML = """\
gateway: {{id: line9, group: plant1}}
mqtt: {{host: 127.0.0.1, port: {broker_port}, qos: 1{mqtt_extra}}}
metrics: {{port: {metrics_port}}}
buffer: {{dir: {buffer}}}
runtime: process
"""

PRESS_YAML = """\
name: press-1
protocol: modbus
connection:
  tcp: {{host: 127.0.0.1, port: {port}}}
unit: 1
poll: 250ms
tags:
  - name: temperature
    table: holding
    address: 0
    type: float32
    unit: degC
    simulate: {{kind: sine, min: 20, max: 30, period: 10s}}
  - name: level
    table: holding
    address: 10
    type: int16
    scale: {scale}
    unit: cm
    simulate: {{kind: constant, value: 50}}
"""


def run_cli(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          timeout=60, env=child_environment(), **kwargs)  # type: ignore[call-overload]


def popen_cli(log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", *args], stdout=out, stderr=out,
                                env=child_environment())


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            return process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    return process.returncode


def wait_sync(check: Callable[[], object], within: float = 30.0, what: str = "condition") -> object:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met after {within}s")
        time.sleep(0.1)


def service_pids(run_dir: RunDir) -> dict[str, int | None]:
    status = read_status(run_dir) or {}
    return {s["name"]: s.get("pid") for s in status.get("services", [])}


@pytest.fixture
def plant(tmp_path: Path, broker: Mosquitto) -> Iterator[Path]:
    with plant_for(tmp_path, broker) as plant:
        yield plant


@contextlib.contextmanager
def plant_for(tmp_path: Path, broker: Mosquitto, mqtt_extra: str = "") -> Iterator[Path]:
    """A plant directory with one Modbus device, served by `fieldgate simulate` on a free port."""
    plant = tmp_path / "plant"
    (plant / "devices").mkdir(parents=True)
    (plant / "gateway.yaml").write_text(GATEWAY_YAML.format(
        broker_port=broker.port, metrics_port=free_port_run(3), buffer=tmp_path / "buffer", mqtt_extra=mqtt_extra))
    sim_port = free_port()
    (tmp_path / "sim.yaml").write_text(PRESS_YAML.format(port=sim_port, scale=1))
    # The plant reads level (raw 50) with scale 2; the edit below makes it 4. An int16 with a whole
    # scale other than 1 is an int32 in the catalog either way, so the forwarder's slice stays the same.
    (plant / "devices" / "press-1.yaml").write_text(PRESS_YAML.format(port=sim_port, scale=2))
    simulator = popen_cli(tmp_path / "simulator.log", "simulate", str(tmp_path / "sim.yaml"))
    try:
        wait_port(sim_port, timeout=30)
        yield plant
    finally:
        stop(simulator)


def reading(subscriber: Subscriber, topic: str, check: Callable[[Any], bool], within: float = 30.0) -> Any:
    after = time.time()
    msg = subscriber.wait_for(lambda m: m.topic == topic and m.at >= after and check(m.json()), within)[0]
    return msg.json()


@pytest.mark.sim
def test_up_runs_restarts_applies_changes_and_stops_cleanly(
    plant: Path, subscriber: Subscriber, tmp_path: Path
) -> None:
    run_dir = RunDir.for_config(plant)
    log = tmp_path / "up.log"
    up = popen_cli(log, "up", str(plant))  # runtime: process in gateway.yaml
    try:
        # readings arrive, with the device file's value, unit and quality
        temp = reading(subscriber, "fieldgate/line9/press-1/temperature", lambda p: p["quality"] == "good")
        assert 20 <= temp["value"] <= 30 and temp["unit"] == "degC"
        assert reading(subscriber, "fieldgate/line9/press-1/level", lambda p: True)["value"] == 100

        # status: one row per service
        wait_sync(lambda: [s["health"] for s in (read_status(run_dir) or {}).get("services", [])]
                  == ["healthy", "healthy"], what="both healthy")
        status = run_cli("status", str(plant))
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert lines[1].split()[:3] == ["SERVICE", "STATE", "HEALTH"]
        assert [line.split()[:3] for line in lines[2:]] == [
            ["forwarder", "running", "healthy"], ["modbus", "running", "healthy"]]

        # a second supervisor on the same directory is refused
        second = run_cli("up", str(plant), "--runtime", "process")
        assert (second.returncode, second.stderr.strip()) == (
            1, f"fieldgate: another supervisor already runs {run_dir.root}")

        # kill -9 the collector: it is restarted and readings resume
        pids = service_pids(run_dir)
        os.kill(pids["modbus"] or 0, signal.SIGKILL)
        wait_sync(lambda: service_pids(run_dir).get("modbus") not in (None, pids["modbus"]), what="back")
        reading(subscriber, "fieldgate/line9/press-1/temperature", lambda p: p["quality"] == "good")
        restarted = {s["name"]: s for s in (read_status(run_dir) or {})["services"]}["modbus"]
        assert restarted["restarts"] == 1
        assert "restart modbus (exited with code -9" in log.read_text()

        # an edited device file is applied while running: the collector takes it in place
        # (SIGHUP, same process), the forwarder is not touched
        pids = service_pids(run_dir)
        device = plant / "devices" / "press-1.yaml"
        device.write_text(device.read_text().replace("scale: 2\n", "scale: 4\n"))
        level = reading(subscriber, "fieldgate/line9/press-1/level", lambda p: p["value"] == 200)
        assert level["unit"] == "cm"
        assert service_pids(run_dir) == pids
        assert "config change applied: modbus" in log.read_text()
        assert "reload modbus in place" in log.read_text()
        assert "new config applied in place (1 devices started, 1 stopped, 0 untouched)" in log.read_text()

        # an invalid edit is refused with its position, and readings keep flowing
        pids = service_pids(run_dir)
        device.write_text(device.read_text().replace("type: int16", "type: int17"))
        wait_sync(lambda: "config change refused" in log.read_text(), what="refusal")
        assert "press-1.yaml:" in log.read_text().split("config change refused")[1]
        reading(subscriber, "fieldgate/line9/press-1/level", lambda p: p["value"] == 200)
        assert service_pids(run_dir) == pids
        refused = run_cli("status", str(plant))
        assert "config change refused" in refused.stdout

        # SIGTERM stops everything: no child left
        children = [pid for pid in service_pids(run_dir).values() if pid]
        assert stop(up) == 0
        assert not [pid for pid in children if alive(pid)]
        assert run_cli("status", str(plant)).returncode == 1
    finally:
        stop(up, signal.SIGKILL)


@pytest.mark.sim
def test_up_refuses_an_invalid_config_and_starts_nothing(plant: Path) -> None:
    device = plant / "devices" / "press-1.yaml"
    device.write_text(device.read_text().replace("table: holding", "table: holdings", 1))
    result = run_cli("up", str(plant), "--runtime", "process")
    assert result.returncode == 1
    assert "press-1.yaml:" in result.stderr and "nothing started" in result.stderr
    assert not RunDir.for_config(plant).status_file.exists()


def forwarder_healthz(plant: Path) -> tuple[int, str]:
    port = int(re.search(r"metrics: {port: (\d+)}", (plant / "gateway.yaml").read_text()).group(1))  # type: ignore[union-attr]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.sim
def test_up_keeps_a_forwarder_waiting_for_its_broker_running_and_replays_the_outage(tmp_path: Path) -> None:
    """A restart cannot bring a broker back: through an outage longer than the old rule allowed
    (unhealthy after 2 x keepalive), the forwarder stays healthy, is not restarted, and every
    poll taken meanwhile reaches the broker once it is back."""
    broker = Mosquitto.durable(tmp_path).start()
    sub = Subscriber(broker.host, broker.port, "fieldgate/line9/#", persistent=True)
    topic = "fieldgate/line9/press-1/temperature"
    try:
        with plant_for(tmp_path, broker, mqtt_extra=", keepalive: 1s") as plant:
            run_dir = RunDir.for_config(plant)
            log = tmp_path / "up.log"
            up = popen_cli(log, "up", str(plant))
            try:
                wait_sync(lambda: [s["health"] for s in (read_status(run_dir) or {}).get("services", [])]
                          == ["healthy", "healthy"], what="both healthy")
                reading(sub, topic, lambda p: p["quality"] == "good")
                pid = service_pids(run_dir)["forwarder"]

                broker.stop()
                stopped = time.time()
                seen: list[str] = []
                while time.time() < stopped + 8:  # 8 keep-alives: the old rule failed it after 2
                    forwarder = {s["name"]: s for s in (read_status(run_dir) or {})["services"]}["forwarder"]
                    seen.append(forwarder["health"])
                    time.sleep(0.2)
                status, body = forwarder_healthz(plant)
                broker.start()
                back = time.time()
                assert set(seen) == {"healthy"}, seen
                assert status == 200 and body.startswith("degraded: broker 127.0.0.1:"), body

                # every poll of the outage arrives: no hole in the time series
                def outage_covered() -> bool:
                    stamps = sorted({datetime.fromisoformat(m.json()["ts"]).timestamp()
                                     for m in sub.on_topic(topic)})
                    inside = [t for t in stamps if stopped - 2 <= t <= back + 2]
                    gaps = [b - a for a, b in itertools.pairwise(inside)]
                    return bool(gaps) and inside[0] <= stopped and inside[-1] >= back and max(gaps) < 1.5

                wait_sync(outage_covered, within=60, what="the outage's readings")
                forwarder = {s["name"]: s for s in (read_status(run_dir) or {})["services"]}["forwarder"]
                assert (forwarder["pid"], forwarder["restarts"]) == (pid, 0)
                assert "restart forwarder" not in log.read_text()
                wait_sync(lambda: forwarder_healthz(plant) == (200, "ok\n"), within=30, what="ok again")
            finally:
                stop(up, signal.SIGKILL)
    finally:
        sub.close()
        broker.stop()


@pytest.mark.unit
def test_status_shows_quarantined_buffer_segments_beside_the_buffered_readings() -> None:
    """A damaged buffer segment is set aside by the forwarder, never replayed: status says so."""
    now = 1_000_000.0
    scraped = parse_metrics("fieldgate_forwarder_buffered_readings 12\nfieldgate_forwarder_quarantined_segments 2\n")
    assert first_of(scraped, QUARANTINED_GAUGES) == 2
    service = {"name": "forwarder", "state": "running", "health": "healthy", "restarts": 0, "since": now - 60,
               "buffered": 12, "quarantined": 2}
    rows = status_rows({"services": [service, {**service, "quarantined": 0}]}, now)
    column = rows[0].index("BUFFERED")
    assert [rows[1][column], rows[2][column]] == ["12 (2 quarantined)", "12"]
