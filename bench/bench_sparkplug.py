"""Sparkplug B through the real forwarder: readings/s live and replayed from the disk buffer.

    python bench/bench_sparkplug.py [--readings 500000] [--durability always|outage]
                                    [--devices 10] [--tags 100]

Processes: Mosquitto; the forwarder (`python -m collectors.forwarder`, mqtt.format sparkplug);
a subscriber (this script with --subscribe, its own process) that keeps every DDATA; and this
script, which hands readings off through a real HandoffClient and relays the forwarder's
broker connection through a TcpProxy, so it can cut the link without stopping the broker.

  live    `--readings` handed off as fast as the hand-off takes them, the broker up: readings/s
          from the first hand-off to the last reading at the subscriber. With `always`, every
          reading is on disk (the buffer's live lane) before the collector gets its ack.
  replay  the link cut (the proxy refuses connections), `--readings` more handed off: they go
          to the disk backlog. Then the link is back: readings/s from the forwarder's first
          message after the reconnect to the last reading at the subscriber.
Finally the subscriber decodes what it kept (independent wire decoder): every reading has its
own timestamp, so "lost" counts timestamps that never arrived; the replayed ones must be
flagged is_historical. The forwarder's CPU comes from /proc over the live window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collectors.core.config import HandoffConfig  # noqa: E402
from collectors.core.handoff import HandoffClient  # noqa: E402
from collectors.core.model import Reading, WriteRequest, WriteResult  # noqa: E402
from tests.support import sparkplug as sp  # noqa: E402
from tests.support.broker import Mosquitto  # noqa: E402
from tests.support.proxy import TcpProxy  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
TS0 = 1_764_316_800_000
CHUNK = 5000


# --------------------------------------------------------------------------- subscriber process


def _count_metrics(payload: bytes) -> int:
    """Top-level Payload field 2 (metrics), counted without decoding them."""
    count = pos = 0
    end = len(payload)
    while pos < end:
        key, pos = sp.read_varint(payload, pos)
        wire = key & 7
        if wire == 0:
            _, pos = sp.read_varint(payload, pos)
        elif wire == 2:
            length, pos = sp.read_varint(payload, pos)
            pos += length
            count += key >> 3 == 2
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
    return count


def subscribe(port: int) -> None:
    """--subscribe: keep every DDATA, print running counts; on stdin `report`, decode and summarise."""
    import threading

    import paho.mqtt.client as mqtt

    kept: list[bytes] = []
    state = {"count": 0, "first": 0.0, "last": 0.0}
    lock = threading.Lock()
    ready = threading.Event()

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        client.subscribe("spBv1.0/+/DDATA/#", 0)
        ready.set()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        n = _count_metrics(payload)
        now = time.time()
        with lock:
            kept.append(payload)
            state["count"] += n
            state["first"] = state["first"] or now
            state["last"] = now

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sparkplug-sub")
    client.on_connect, client.on_message = on_connect, on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    ready.wait(10)
    print("ready", flush=True)

    stop = threading.Event()

    def ticker() -> None:
        while not stop.wait(0.05):
            with lock:
                print(f"count {state['count']} {state['last']:.6f}", flush=True)

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    for line in sys.stdin:
        if line.strip() == "report":
            time.sleep(0.5)
            client.loop_stop()
            stop.set()
            thread.join()
            stamps: set[int] = set()
            historical = total = 0
            for payload in kept:
                for metric in sp.decode(payload).metrics:
                    total += 1
                    historical += metric.is_historical
                    stamps.add(metric.timestamp or 0)
            print("report " + json.dumps({"metrics": total, "unique": len(stamps), "historical": historical}),
                  flush=True)
            return


# --------------------------------------------------------------------------- the bench


class Sub:
    """The subscriber process, read line by line."""

    def __init__(self, port: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--subscribe", str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"
        self.count = 0
        self.last = 0.0

    def poll(self) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if line and line[0] == "count":
            self.count, self.last = int(line[1]), float(line[2])

    async def until(self, count: int, within: float) -> None:
        deadline = time.monotonic() + within
        while self.count < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"subscriber has {self.count} of {count} readings after {within}s")
            await asyncio.to_thread(self.poll)

    def report(self) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("report\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith("report "):
                self.process.wait(60)
                return dict(json.loads(line[len("report "):]))
        raise RuntimeError("subscriber ended without a report")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*.seg"))


async def no_writes(request: WriteRequest) -> WriteResult:
    return WriteResult(request.id, request.device, request.tag, False, "bench")


def readings(start: int, count: int, devices: int, tags: int) -> list[list[Reading]]:
    """Readings start..start+count in hand-off chunks, each with its own timestamp, over devices and tags."""
    return [
        [Reading(f"dev-{(i // tags) % devices}", f"t{i % tags}", i * 0.5, TS0 + i)
         for i in range(base, min(base + CHUNK, start + count))]
        for base in range(start, start + count, CHUNK)
    ]


async def produce(client: HandoffClient, chunks: list[list[Reading]]) -> None:
    """Hand chunks off as fast as the forwarder takes them (built beforehand: no collector measured)."""
    for chunk in chunks:
        while client.pending > 200_000:  # noqa: ASYNC110 - the hand-off client offers no event for this
            await asyncio.sleep(0.002)
        client.publish(chunk)
        await asyncio.sleep(0)


async def bench(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-sparkplug-"))
    broker = Mosquitto(work).start()
    sub = Sub(broker.port)
    forwarder: asyncio.subprocess.Process | None = None
    n = args.readings
    try:
        async with TcpProxy(broker.host, broker.port) as proxy:
            socket_path = work / "handoff.sock"
            config = {
                "gateway": {"id": "bench", "group": "bench"},
                "mqtt": {"host": "127.0.0.1", "port": proxy.port, "format": "sparkplug", "keepalive": "2s"},
                "buffer": {"dir": str(work / "buffer"), "durability": args.durability, "max_bytes": "2GiB"},
                "metrics": {"port": None},
                "handoff": {"socket": str(socket_path)},
                "devices": [
                    {"name": f"dev-{d}", "collector": "bench",
                     "tags": [{"name": f"t{t}", "type": "float64"} for t in range(args.tags)]}
                    for d in range(args.devices)
                ],
                "log_level": "WARNING",
            }
            (work / "forwarder.json").write_text(json.dumps(config))
            with (work / "forwarder.log").open("wb") as log:
                forwarder = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "collectors.forwarder", "--config", str(work / "forwarder.json"),
                    stdout=log, stderr=log, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
            settings = HandoffConfig(socket=socket_path, batch_max=CHUNK, linger=0.005, queue_max=2_000_000,
                                     queue_max_bytes="1GiB")
            async with HandoffClient(settings, "bench", no_writes) as client:
                while proxy.connections == 0:  # noqa: ASYNC110 - the forwarder's first connection
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)

                # live
                live, outage = (readings(start, n, args.devices, args.tags) for start in (0, n))
                cpu0, t0 = cpu_seconds(forwarder.pid), time.time()
                await produce(client, live)
                await sub.until(n, 120)
                live_s, live_cpu = sub.last - t0, cpu_seconds(forwarder.pid) - cpu0

                # replay from the disk backlog; first let the resend window (2 x keep-alive + 2 s)
                # pass, so the cut resends nothing that the live phase already delivered
                await asyncio.sleep(6.5)
                proxy.refuse()
                proxy.drop()
                await asyncio.sleep(0.3)
                await produce(client, outage)
                if not await client.drain(120):
                    raise TimeoutError("the forwarder did not take the outage readings")
                await asyncio.sleep(0.3)
                on_disk = disk_bytes(work / "buffer")
                before = sub.count
                proxy.resume()
                while sub.count == before:
                    await asyncio.to_thread(sub.poll)
                first = sub.last
                await sub.until(2 * n, 180)
                replay_s = sub.last - first
            report = sub.report()
    finally:
        if forwarder is not None and forwarder.returncode is None:
            forwarder.terminate()
            await asyncio.wait_for(forwarder.wait(), 15)
        sub.close()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)

    lost = 2 * n - report["unique"]
    print(f"sparkplug, durability {args.durability}, {args.devices} devices x {args.tags} tags, "
          f"{n:,} readings per phase")
    print(f"  live:    {n / live_s:>10,.0f} readings/s  ({live_s:.2f} s; forwarder CPU "
          f"{live_cpu / n * 1e6:.1f} us/reading)")
    print(f"  replay:  {n / replay_s:>10,.0f} readings/s  ({replay_s:.2f} s to drain the backlog after the "
          f"first message; {on_disk / n:.1f} bytes on disk per buffered reading)")
    print(f"  arrived: {report['metrics']:,} metrics, {report['unique']:,} distinct readings, "
          f"{report['historical']:,} flagged historical; lost {lost}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=500_000)
    parser.add_argument("--durability", choices=["always", "outage"], default="always")
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--tags", type=int, default=100)
    parser.add_argument("--subscribe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscribe:
        subscribe(args.subscribe)
    else:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
