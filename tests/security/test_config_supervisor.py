"""A running supervisor (`fieldgate up DIR`, process runtime) gets every hostile file of
hostile_config.py dropped into devices/: each change is refused with the file named, the
services keep their pids, readings keep flowing, and a good change is applied afterwards.

Before: `devices/x.yaml` holding `description: &r [*r]` made the supervisor stop every service
and exit with RecursionError.
"""

from __future__ import annotations

import functools
import shutil
import signal
import time
from pathlib import Path

import pytest

from gateway.runtime.process import RunDir
from tests.gateway.test_process_runtime import (
    plant_for,
    popen_cli,
    reading,
    service_pids,
    stop,
    wait_sync,
)
from tests.security.hostile_config import HOSTILE
from tests.support.broker import Mosquitto
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.security

TEMPERATURE = "fieldgate/line9/press-1/temperature"  # a sine: a new reading every poll


def said_more(log: Path, words: str, before: int) -> bool:
    """The supervisor's log holds `words` more often than `before` times (it did, since)."""
    return log.read_text(errors="replace").count(words) > before


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


# 23 files, each written and removed: 46 changes, each read once it settled (1-2 s) and checked
# in a short-lived child (gateway.runtime.desired, ~0.5 s): about 2 minutes on an idle machine.
@pytest.mark.timeout(360)
def test_a_running_supervisor_refuses_every_hostile_file_and_keeps_its_services(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    with plant_for(tmp_path, broker) as plant:
        run_dir = RunDir.for_config(plant)
        log = tmp_path / "up.log"
        up = popen_cli(log, "up", str(plant))
        try:
            reading(subscriber, TEMPERATURE, lambda p: p["quality"] == "good")
            wait_sync(lambda: all(service_pids(run_dir).values()) and len(service_pids(run_dir)) == 2,
                      what="both services running")
            pids = service_pids(run_dir)
            hostile = plant / "devices" / "x.yaml"
            for case in HOSTILE:
                refused = log.read_text(errors="replace").count("config change refused")
                started = time.monotonic()
                case.make(hostile)
                wait_sync(functools.partial(said_more, log, "config change refused", refused),
                          within=60, what=f"{case.name}: refusal")
                answer = log.read_text(errors="replace").split("config change refused")[-1]
                print(f"{case.name}: refused {time.monotonic() - started:.1f} s after the file was written")
                assert up.poll() is None, f"{case.name}: the supervisor exited:\n{answer}"
                assert f"{hostile.parent / case.file}{case.where}:" in answer and case.says[0] in answer, answer[:2000]
                assert service_pids(run_dir) == pids, case.name
                reading(subscriber, TEMPERATURE, lambda p: p["quality"] == "good")

                applied = log.read_text(errors="replace").count("config change applied")
                for path in hostile.parent.glob("x*.yaml"):
                    remove(path)
                wait_sync(functools.partial(said_more, log, "config change applied", applied),
                          within=60, what=f"{case.name}: removal applied")
                assert service_pids(run_dir) == pids, case.name

            # a good change after all that is applied, in place (the collector reloads its slice)
            device = plant / "devices" / "press-1.yaml"
            device.write_text(device.read_text().replace("scale: 2\n", "scale: 4\n"))
            assert reading(subscriber, "fieldgate/line9/press-1/level", lambda p: p["value"] == 200)
            assert service_pids(run_dir)["forwarder"] == pids["forwarder"]
            assert service_pids(run_dir)["modbus"] == pids["modbus"]
            assert stop(up) == 0
        finally:
            stop(up, signal.SIGKILL)
