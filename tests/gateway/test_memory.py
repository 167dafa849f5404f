"""Memory of the running gateway (issue 10): the supervisor keeps no config models and no driver
library, and `fieldgate status` shows each service's memory.

`fieldgate up DIR --runtime process` runs once for the module, on a one-device plant served by
`fieldgate simulate` with a real Mosquitto. The figures at 1,000 readings/s, with the forwarder
and the Modbus collector, come from `python bench/bench_memory.py`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.runtime.common import RunDir
from gateway.runtime.docker import DockerRuntime
from gateway.runtime.process import ProcessRuntime, child_environment
from gateway.supervisor import load, read_status
from tests.gateway.test_process_runtime import plant_for, popen_cli, run_cli, stop, wait_sync
from tests.support.broker import Mosquitto
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.sim

MIB = 1024 * 1024
SUPERVISOR_PSS_MAX = 20 * MIB  # issue 10: it needs no driver library and keeps no config models
# Issue 10: the three at most 65 MiB PSS (the closest Python peer's one process). Measured with
# bench_memory.py at 1,000 readings/s: 15 / 18-19 / 18 MiB; a component that imported pydantic
# again would take 25-27.
COMPONENT_PSS_MAX = 23 * MIB
TOTAL_PSS_MAX = 65 * MIB
# What the supervisor never imports: the config models' libraries and every driver, docker-py and
# its HTTP stack included (the docker runtime has its own Engine client).
NOT_IN_SUPERVISOR = ("pydantic", "pydantic_core", "yaml", "pymodbus", "asyncua", "paho", "orjson", "docker",
                     "requests", "urllib3")


def pss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no Pss in /proc/{pid}/smaps_rollup")


@dataclass
class Running:
    plant: Path
    supervisor: int
    broker: Mosquitto


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp_path = tmp_path_factory.mktemp("memory")
    broker = Mosquitto(tmp_path).start()
    try:
        with plant_for(tmp_path, broker) as plant:
            up = popen_cli(tmp_path / "up.log", "up", str(plant), "--runtime", "process")
            try:
                run_dir = RunDir.for_config(plant)
                wait_sync(lambda: [s["health"] for s in (read_status(run_dir) or {}).get("services", [])]
                          == ["healthy", "healthy"], within=60, what="both services healthy")
                yield Running(plant, up.pid, broker)
            finally:
                stop(up)
    finally:
        broker.stop()


def test_the_supervisor_holds_no_config_models_nor_driver_libraries(running: Running) -> None:
    # The config was loaded (and checked) in a short-lived child: no extension module of those
    # libraries is mapped in the running supervisor...
    mapped = {line.split()[-1] for line in Path(f"/proc/{running.supervisor}/maps").read_text().splitlines()
              if ".so" in line}
    assert not [path for path in mapped if any(re.search(rf"/{name}[/.]", path) for name in NOT_IN_SUPERVISOR)]
    # ...and its modules import none of them, pure-Python ones included.
    assert not supervisor_modules("gateway.runtime.process") & set(NOT_IN_SUPERVISOR)
    assert pss(running.supervisor) <= SUPERVISOR_PSS_MAX, f"supervisor PSS {pss(running.supervisor) / MIB:.1f} MiB"


def mapped_libraries(pid: int) -> set[str]:
    return {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if ".so" in line}


def test_the_components_run_on_their_slices_without_pydantic_nor_pyyaml(running: Running) -> None:
    # The supervisor validated each slice it rendered: the forwarder and the collector build their
    # config with collectors.core.lite, and neither the models' libraries nor PyYAML get loaded...
    services = (read_status(RunDir.for_config(running.plant)) or {}).get("services", [])
    pids = {s["name"]: s["pid"] for s in services}
    assert sorted(pids) == ["forwarder", "modbus"] and all(pids.values()), services
    for name, pid in pids.items():
        heavy = [path for path in mapped_libraries(pid) if re.search(r"/(pydantic_core|_yaml)[/.]", path)]
        assert heavy == [], f"{name} (pid {pid}) maps {heavy}"
    # ...and readings still arrive, with the value and unit of the device file.
    subscriber = Subscriber(running.broker.host, running.broker.port, "fieldgate/line9/press-1/#")
    try:
        message = subscriber.wait_for(lambda m: m.topic.endswith("/temperature"), 30)[0].json()
    finally:
        subscriber.close()
    assert 20 <= message["value"] <= 30 and message["unit"] == "degC" and message["quality"] == "good"


def test_supervisor_forwarder_and_collector_take_at_most_65_mib_pss(running: Running) -> None:
    services = (read_status(RunDir.for_config(running.plant)) or {}).get("services", [])
    taken = {"supervisor": pss(running.supervisor), **{s["name"]: pss(s["pid"]) for s in services}}
    said = ", ".join(f"{name} {value / MIB:.1f}" for name, value in taken.items())
    assert sorted(taken) == ["forwarder", "modbus", "supervisor"], said
    assert sum(taken.values()) <= TOTAL_PSS_MAX, f"PSS MiB: {said}"
    assert max(taken["forwarder"], taken["modbus"]) <= COMPONENT_PSS_MAX, f"PSS MiB: {said}"


def supervisor_modules(runtime: str) -> set[str]:
    """The top-level packages a supervisor with that runtime imports, read in a fresh interpreter."""
    modules = subprocess.run(
        [sys.executable, "-c", f"import sys, gateway.cli, gateway.supervisor, {runtime}, asyncio.subprocess; "
         "print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True, env=child_environment(), timeout=60).stdout.split()
    return {m.split(".")[0] for m in modules}


def test_the_docker_runtimes_supervisor_holds_no_config_models() -> None:
    # It renders the project in a child too, and speaks to the Engine with its own client.
    assert not supervisor_modules("gateway.runtime.docker") & set(NOT_IN_SUPERVISOR)


def test_status_shows_each_services_memory(running: Running) -> None:
    run_dir = RunDir.for_config(running.plant)
    wait_sync(lambda: all(s.get("memory") for s in (read_status(run_dir) or {}).get("services", [])),
              within=30, what="each service's memory in status.json")
    table = run_cli("status", str(running.plant))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert re.fullmatch(r"supervisor pid \d+ \(process runtime, \d+\.\dMiB PSS\), updated \d+s ago", lines[0])
    header = lines[1].split()
    assert "MEMORY" in header and "CPU" not in header  # the process runtime measures no CPU
    rows = {line.split()[0]: line for line in lines[2:]}
    assert sorted(rows) == ["forwarder", "modbus"]
    for name, row in rows.items():
        match = re.search(r"\s(\d+\.\d)MiB PSS\s", row)
        assert match and float(match.group(1)) > 1, f"{name}: {row}"

    as_json = run_cli("status", str(running.plant), "--json")
    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    assert status["supervisor"]["alive"] is True
    assert status["supervisor"]["memory_source"] == "pss" and status["supervisor"]["memory"] > MIB
    assert {s["name"]: (s["memory_source"], s["memory"] > MIB) for s in status["services"]} == {
        "forwarder": ("pss", True), "modbus": ("pss", True)}


def test_a_config_loaded_in_the_child_gives_the_services_loaded_here(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)  # only its port: nothing connects here
    with plant_for(tmp_path, broker) as plant:
        runtime = ProcessRuntime(RunDir.for_config(plant))
        loaded = runtime.load_desired(plant)
        assert loaded.errors == "" and loaded.runtime == "process"
        assert loaded.specs == runtime.desired(load_config(plant), plant)

        device = plant / "devices" / "press-1.yaml"
        device.write_text(device.read_text().replace("type: int16", "type: int17"))
        refused = runtime.load_desired(plant)
        assert refused.specs is None
        assert refused.errors == load(plant)[1]
        assert re.search(r"press-1\.yaml:\d+:\d+: ", refused.errors)


def test_a_project_rendered_in_the_child_is_the_one_rendered_here(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)  # only its port: nothing connects here
    with plant_for(tmp_path, broker) as plant:
        runtime = DockerRuntime(plant, RunDir.for_config(plant), printer=lambda line: None)  # no Engine needed
        loaded = runtime.load_desired(plant)
        assert loaded.errors == "" and loaded.specs is not None
        project = runtime.project
        assert project is not None and all(svc.config is None for svc in project.services.values())
        assert loaded.specs == runtime.desired(load_config(plant), plant)
        assert project == runtime.project  # the config models are left out of the comparison

        device = plant / "devices" / "press-1.yaml"
        device.write_text(device.read_text().replace("type: int16", "type: int17"))
        refused = runtime.load_desired(plant)
        assert (refused.specs, refused.errors) == (None, load(plant)[1])
        assert runtime.project is not None and runtime.project == project  # the running project stays


@pytest.mark.parametrize(("child", "says"), [
    ((sys.executable, "-c", "import sys; sys.exit(3)"), "failed: exited with code 3"),
    (("/nonexistent/python",), "failed: [Errno 2] No such file or directory"),
    ((sys.executable, "-c", "print('not JSON')"), "failed: Expecting value"),
])
def test_a_check_that_cannot_run_refuses_the_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, child: tuple[str, ...], says: str
) -> None:
    # Whatever happens to the child, the supervisor gets a refusal (and keeps what runs), never
    # an exception that would end its loop.
    import gateway.runtime.desired

    monkeypatch.setattr(gateway.runtime.desired, "CHILD", child)
    loaded = ProcessRuntime(RunDir.for_config(tmp_path)).load_desired(tmp_path)
    assert loaded.specs is None
    assert loaded.errors.startswith(f"{tmp_path}: the config could not be checked") and says in loaded.errors


def test_a_component_on_a_good_slice_does_not_import_pyyaml() -> None:
    # Slices are JSON (orjson); PyYAML (~1 MiB resident) is loaded only to report a broken one.
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, collectors.forwarder.__main__, collectors.forwarder.app, "
         "collectors.modbus.__main__, collectors.opcua.__main__; print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True, env=child_environment(), timeout=60).stdout.split()
    assert [m for m in loaded if m.split(".")[0] == "yaml"] == []
