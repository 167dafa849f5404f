"""The forwarder's memory while 4 hand-off clients send it maximal frames.

    python bench/bench_handoff.py [--seconds 10] [--clients 4]

Processes: Mosquitto; the forwarder (`python -m collectors.forwarder`, a fresh one per case);
this script, whose threads are the clients. Each client says hello under a collector name of
its own and sends frames as fast as the forwarder acknowledges them, each as large as the
hand-off allows (collectors.core.handoff.MAX_FRAME):

  junk rows      readings of devices the catalog does not have: parsed, checked, dropped
  one string     one reading of a catalog tag whose string value fills the frame: buffered and
                 published (a 4 MiB MQTT message each)
  over the cap   a header announcing 64 MiB (the old cap): refused before any body is read

Prints the forwarder's RSS at rest and its peak (VmHWM) for each case.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from collectors.core.handoff import MAX_FRAME  # noqa: E402
from tests.support.broker import Mosquitto, free_port, wait_port  # noqa: E402

TS0 = 1_764_316_800_000


def frame(message: object) -> bytes:
    body = orjson.dumps(message)
    assert len(body) <= MAX_FRAME, len(body)
    return struct.pack(">I", len(body)) + body


def junk_rows(seq: int, client: int) -> bytes:
    row = [f"ghost-{client}", "t", 1.5, TS0, "good", None]
    per_row = len(orjson.dumps(row)) + 1
    rows = [row] * ((MAX_FRAME - 64) // per_row)
    return frame({"t": "batch", "seq": seq, "r": rows})


def one_string(seq: int, client: int) -> bytes:
    room = MAX_FRAME - 128
    return frame({"t": "batch", "seq": seq, "r": [[f"dev-{client}", "text", "x" * room, TS0 + seq, "good", None]]})


def over_the_cap(seq: int, client: int) -> bytes:
    return struct.pack(">I", 64 * 1024 * 1024) + b"{" * 1024


def rss_mb(pid: int, field: str) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def client(path: Path, number: int, make: Callable[[int, int], bytes], until: float, sent: list[int]) -> None:
    seq = 0
    while time.monotonic() < until:
        try:
            with socket.socket(socket.AF_UNIX) as peer:
                peer.settimeout(10)
                peer.connect(str(path))
                peer.sendall(frame({"t": "hello", "collector": f"c{number}", "epoch": f"e{time.monotonic_ns()}"}))
                while time.monotonic() < until:
                    seq += 1
                    peer.sendall(make(seq, number))
                    sent[number] += 1
                    if not peer.recv(64):  # the ack (or the close after an error frame)
                        break
        except OSError:
            pass  # refused or closed: connect again, as a stubborn client would
        time.sleep(0.01)


def run_case(work: Path, broker_port: int, clients: int, seconds: float,
             make: Callable[[int, int], bytes]) -> tuple[float, float, int]:
    metrics_port = free_port()
    sock = work / "run" / "handoff.sock"
    config = {
        "gateway": {"id": "bench"},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "qos": 0},
        "buffer": {"dir": str(work / f"buffer-{time.monotonic_ns()}")},
        "metrics": {"port": metrics_port},
        "handoff": {"socket": str(sock)},
        "devices": [{"name": f"dev-{i}", "collector": f"c{i}", "tags": [{"name": "text"}]} for i in range(clients)],
        "log_level": "WARNING",
    }
    (work / "forwarder.json").write_text(json.dumps(config))
    with (work / "forwarder.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "collectors.forwarder", "--config", str(work / "forwarder.json")],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=log,
        )
    try:
        wait_port(metrics_port, 20)
        time.sleep(1.0)
        rest = rss_mb(process.pid, "VmRSS")
        sent = [0] * clients
        until = time.monotonic() + seconds
        threads = [threading.Thread(target=client, args=(sock, i, make, until, sent)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        peak = rss_mb(process.pid, "VmHWM")
        assert process.poll() is None, "the forwarder died"
        return rest, peak, sum(sent)
    finally:
        process.terminate()
        process.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-handoff-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work).start()
        try:
            print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; frame cap {MAX_FRAME} bytes; "
                  f"{args.clients} clients for {args.seconds:g}s per case")
            for name, make in (("junk rows", junk_rows), ("one string", one_string), ("over the cap", over_the_cap)):
                rest, peak, frames = run_case(work, broker.port, args.clients, args.seconds, make)
                print(f"{name:13s} forwarder RSS {rest:.0f} MB at rest, peak {peak:.0f} MB ({frames} frames sent)")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
