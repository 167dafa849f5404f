"""OPC UA end to end: notifications/s, the collector's CPU per 1,000 notifications and RSS, recovery time.

    python bench/bench_opcua.py [--tags 1000] [--tick 0.05] [--seconds 10] [--restarts 5]
    python bench/bench_opcua.py --broker [--layout device]

An asyncua server (collectors.opcua.simulator, its own process) changes `--tags` variables every
`--tick` seconds; the collector (`python -m collectors.opcua`, its own process) subscribes to all
of them and hands readings off to this script's HandoffServer, which counts them. With
`--broker` the readings go on through the real forwarder (`python -m collectors.forwarder`,
json, layout tag, QoS 0) to a Mosquitto, and a subscriber counts what arrives there.
The collector's CPU is read from /proc (utime + stime) over the measuring window, its RSS at
the end. Recovery: the server is killed and started again (a new process) `--restarts` times;
recovery is the time from the server listening again to the first good reading after it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collectors.core.handoff import HandoffServer  # noqa: E402
from collectors.core.model import DeviceState, Reading, WriteResult  # noqa: E402
from tests.support.broker import Mosquitto, free_port, wait_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


class Counter:
    """The forwarder's side of the hand-off, counting."""

    def __init__(self) -> None:
        self.count = 0
        self.last_good_at = 0.0
        self.online: list[bool] = []

    async def readings(self, collector: str, readings: list[Reading]) -> None:
        self.count += len(readings)
        if any(r.quality == "good" for r in readings):
            self.last_good_at = time.monotonic()

    async def device_state(self, collector: str, state: DeviceState) -> None:
        self.online.append(state.online)

    def write_result(self, collector: str, result: WriteResult) -> None:
        pass


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def device(port: int, tags: int) -> dict[str, Any]:
    return {
        "name": "bench",
        "protocol": "opcua",
        "endpoint": f"opc.tcp://127.0.0.1:{port}",
        "subscription": {"publishing_interval": "100ms", "sampling_interval": "0ms", "queue_size": 10},
        "max_silence": "1h",
        "tags": [
            {
                "name": f"v{i:04d}",
                "node": f"ns=2;i={10000 + i}",
                "simulate": {"kind": "ramp", "min": 0, "max": 1000, "period": f"{7 + i % 13}s"},
            }
            for i in range(tags)
        ],
    }


class Server:
    def __init__(self, work: Path, dev: dict[str, Any], tick: float) -> None:
        self.file = work / "server.yaml"
        self.file.write_text(yaml.safe_dump(dev))
        self.port = int(dev["endpoint"].rsplit(":", 1)[1])
        self.tick = tick
        self.work = work
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it; returns when it listens (monotonic time)."""
        log = (self.work / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "collectors.opcua.simulator",
                str(self.file),
                "--state-dir",
                str(self.work / "server-state"),
                "--tick",
                str(self.tick),
            ],
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
        wait_port(self.port, timeout=60)
        return time.monotonic()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


async def measure(args: argparse.Namespace, work: Path) -> None:
    port = free_port()
    dev = device(port, args.tags)
    server = Server(work, dev, args.tick)
    counter = Counter()
    socket = work / "handoff.sock"
    config = {
        "name": "opcua",
        "handoff": {"socket": str(socket)},
        "state_dir": str(work / "state"),
        "metrics_port": None,
        "log_level": "WARNING",
        "devices": [dev],
    }
    (work / "collector.yaml").write_text(yaml.safe_dump(config))
    server.start()
    broker = forwarder = subscriber = None
    try:
        if args.broker:
            broker, forwarder, subscriber = start_forwarder(work, dev, socket, args.layout)
            sink_counter: Any = subscriber
        else:
            sink_counter = None
        async with HandoffServer(socket, counter) if not args.broker else _nothing():
            collector = subprocess.Popen(  # noqa: ASYNC220 - a bench: starting it blocks nothing that matters
                [sys.executable, "-m", "collectors.opcua", "--config", str(work / "collector.yaml")],
                stderr=(work / "collector.log").open("ab"),
                cwd=ROOT,
            )
            try:
                others = {"server": server.process.pid if server.process else 0}
                if forwarder is not None:
                    others["forwarder"] = forwarder.pid
                await run_rates(args, collector.pid, counter, sink_counter, others)
                if not args.broker and args.restarts > 0:
                    await run_recovery(args, server, counter)
            finally:
                collector.terminate()
                collector.wait(10)
                await asyncio.sleep(0.2)  # let the hand-off see the collector leave
    finally:
        server.kill()
        if forwarder is not None:
            forwarder.terminate()
            forwarder.wait(10)
        if subscriber is not None:
            subscriber.close()
        if broker is not None:
            broker.stop()


class _nothing:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


async def run_rates(
    args: argparse.Namespace, pid: int, counter: Counter, subscriber: Any, others: dict[str, int]
) -> None:
    seen = {"index": 0, "readings": 0}

    def received() -> int:
        if subscriber is None:
            return counter.count
        if args.layout == "tag":
            return len(subscriber.messages)
        messages = subscriber.messages  # layout device: one message carries a batch of readings
        for message in messages[seen["index"] :]:
            seen["readings"] += len(message.json().get("readings", {}))
        seen["index"] = len(messages)
        return seen["readings"]

    deadline = time.monotonic() + 60
    # connected, first values in (polling: the counters are plain ints updated elsewhere)
    while received() < args.tags and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    await asyncio.sleep(args.warmup)
    n0, c0, t0 = received(), cpu_seconds(pid), time.monotonic()
    o0 = {name: cpu_seconds(p) for name, p in others.items()}
    await asyncio.sleep(args.seconds)
    n1, c1, t1 = received(), cpu_seconds(pid), time.monotonic()
    o1 = {name: cpu_seconds(p) for name, p in others.items()}
    rate = (n1 - n0) / (t1 - t0)
    where = "broker subscriber" if subscriber is not None else "hand-off"
    print(
        f"tags {args.tags}, server tick {args.tick * 1000:.0f} ms"
        + (f", json layout {args.layout}, QoS 0" if subscriber is not None else "")
        + " "
        f"(offered {args.tags / args.tick:,.0f} changes/s)"
    )
    print(f"notifications/s at the {where}: {rate:,.0f}")
    print(
        f"collector CPU: {(c1 - c0) / (n1 - n0) * 1000 * 1000:.1f} ms per 1,000 notifications "
        f"({(c1 - c0) / (t1 - t0) * 100:.0f} % of one core)"
    )
    print(f"collector RSS: {rss_mb(pid):.1f} MB")
    print(
        "others: "
        + ", ".join(f"{name} {(o1[name] - o0[name]) / (t1 - t0) * 100:.0f} % of one core" for name in others)
    )


async def run_recovery(args: argparse.Namespace, server: Server, counter: Counter) -> None:
    times = []
    for _ in range(args.restarts):
        server.kill()
        killed = time.monotonic()
        while not counter.online or counter.online[-1]:  # noqa: ASYNC110 - until the collector noticed
            await asyncio.sleep(0.01)
        noticed = time.monotonic() - killed
        await asyncio.sleep(1.0)
        back = await asyncio.to_thread(server.start)
        while counter.last_good_at < back:
            await asyncio.sleep(0.01)
            if time.monotonic() - back > 60:
                raise TimeoutError("no good reading 60 s after the restart")
        times.append(counter.last_good_at - back)
        print(
            f"  loss noticed after {noticed * 1000:.0f} ms; readings again {times[-1]:.2f} s after the "
            "server listened"
        )
    print(
        f"recovery after a server restart: median {statistics.median(times):.2f} s "
        f"(min {min(times):.2f}, max {max(times):.2f}, n={len(times)})"
    )


def start_forwarder(work: Path, dev: dict[str, Any], socket: Path, layout: str) -> tuple[Any, Any, Any]:
    from tests.support.mqtt import Subscriber

    broker = Mosquitto(work).start()
    config = {
        "gateway": {"id": "bench"},
        "mqtt": {"host": broker.host, "port": broker.port, "qos": 0, "format": "json", "layout": layout},
        "buffer": {"dir": str(work / "buffer")},
        "metrics": {"port": None},
        "handoff": {"socket": str(socket)},
        "devices": [
            {"name": dev["name"], "collector": "opcua", "tags": [{"name": t["name"]} for t in dev["tags"]]}
        ],
        "log_level": "WARNING",
    }
    (work / "forwarder.yaml").write_text(yaml.safe_dump(config))
    forwarder = subprocess.Popen(
        [sys.executable, "-m", "collectors.forwarder", "--config", str(work / "forwarder.yaml")],
        stderr=(work / "forwarder.log").open("ab"),
        cwd=ROOT,
    )
    subscriber = Subscriber(
        broker.host,
        broker.port,
        "fieldgate/bench/bench/#" if layout == "tag" else "fieldgate/bench/bench",
        qos=0,
    )
    return broker, forwarder, subscriber


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tags", type=int, default=1000)
    parser.add_argument("--tick", type=float, default=0.05, help="seconds between server value changes")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--broker", action="store_true", help="through the forwarder to Mosquitto")
    parser.add_argument(
        "--layout", choices=["tag", "device"], default="tag", help="json layout with --broker"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-opcua-"))
    try:
        asyncio.run(measure(args, work))
    finally:
        if args.keep:
            print(f"work dir: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
