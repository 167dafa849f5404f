"""A power cut of the whole stack, as the boot unit meets it: supervisor, forwarder and collector
killed with SIGKILL at once while the broker is away, a half-written record left at the end of
the buffer, then `fieldgate up` again (what systemd does at the next boot). With
`durability: always` every reading the forwarder acknowledged to the collector reaches the
broker, and the torn record is cut off, never published.

tests/forwarder/test_outage.py kills the forwarder alone, with its hand-off driven by the test;
tests/forwarder/test_buffer.py cuts a torn record inside one Buffer. This one runs the real
processes under the process runtime's supervisor."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import struct
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from gateway.runtime.common import RunDir
from gateway.runtime.metrics import parse_metrics
from tests.gateway.test_process_runtime import plant_for, popen_cli, service_pids, stop, wait_sync
from tests.support.broker import Mosquitto
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.sim


def readings_in(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return parse_metrics(response.read().decode()).get("fieldgate_forwarder_readings_in_total", 0.0)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"
    return True


def test_a_power_cut_loses_no_acknowledged_reading_and_publishes_no_torn_record(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    broker = Mosquitto.durable(tmp_path / "broker").start()
    subscriber = Subscriber(broker.host, broker.port, "fieldgate/line9/press-1/#", persistent=True)
    try:
        with plant_for(tmp_path, broker) as plant:
            gateway = plant / "gateway.yaml"
            gateway.write_text(gateway.read_text().replace("buffer: {dir: ", "buffer: {durability: always, dir: "))
            metrics_port = int(re.search(r"metrics: \{port: (\d+)\}", gateway.read_text()).group(1))  # type: ignore[union-attr]
            run_dir = RunDir.for_config(plant)
            first = popen_cli(tmp_path / "up1.log", "up", str(plant))
            second = None
            try:
                subscriber.wait_for(lambda m: True, timeout=60)  # readings flow
                broker.stop()  # from now on what the forwarder acknowledges exists only on its disk
                floor = readings_in(metrics_port)
                wait_sync(lambda: readings_in(metrics_port) >= floor + 40, within=60,
                          what="40 readings taken while the broker is away")
                acknowledged = readings_in(metrics_port)  # each one acknowledged after its buffer write
                pids = [first.pid, *(p for p in service_pids(run_dir).values() if p)]
                assert len(pids) == 3, pids
                for pid in pids:  # the power cut: nobody gets to clean up
                    os.kill(pid, signal.SIGKILL)
                cut = time.time()
                first.wait(10)
                wait_sync(lambda: not any(alive(p) for p in pids), within=10, what="every process gone")

                # The write that was under way when the power went: a record header and half its rows.
                segment = max((tmp_path / "buffer").glob("*/*.seg"), key=lambda p: p.stat().st_mtime)
                with segment.open("ab") as file:
                    file.write(struct.pack(">II", 400, 5) + b'[["press-1","level",999999,')

                broker.start()
                second = popen_cli(tmp_path / "up2.log", "up", str(plant))

                def before_cut() -> set[tuple[str, str]]:
                    keys = set()
                    for message in list(subscriber.messages):
                        payload = message.json()
                        stamp = payload.get("ts")
                        if stamp and datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() <= cut:
                            keys.add((message.topic, stamp))
                    return keys

                wait_sync(lambda: len(before_cut()) >= acknowledged, within=90,
                          what=f"the {acknowledged:.0f} acknowledged readings at the broker")
                published = before_cut()
                print(f"\n{acknowledged:.0f} readings acknowledged before the cut "
                      f"({acknowledged - floor:.0f} while the broker was away); {len(published)} distinct "
                      f"readings from before the cut at the broker after the restart")
                for message in list(subscriber.messages):  # nothing torn: every payload whole
                    payload = message.json()
                    assert payload.get("value") != 999999, payload
                log = (tmp_path / "up2.log").read_text()
                assert "cutting a torn record" in log, log[-3000:]
                assert "readings from a previous run to send" in log, log[-3000:]
            finally:
                if second is not None:
                    assert stop(second) == 0
                stop(first, signal.SIGKILL)
    finally:
        subscriber.close()
        broker.stop()
