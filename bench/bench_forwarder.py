"""The json forwarder against paho-mqtt's own ceiling, and the store-and-forward replay.

    python bench/bench_forwarder.py [--readings 60000] [--outage 60] [--rate 1000]

Processes: Mosquitto; the forwarder (`python -m collectors.forwarder`, its own process);
a subscriber (this script with --subscribe, its own process) counting what arrives; and
this script, which hands readings off through a real HandoffClient.

  paho alone   one message per reading, the same topics and payloads as the forwarder's, paho's
               loop_start() thread, QoS 0 and QoS 1: messages/s until the last one is written
               (QoS 0) or acked (QoS 1). QoS 1 runs with paho's default in-flight limit (20) and
               with none (0, as the forwarder's session at QoS 1); the better is the ceiling. The
               subscriber consumes these messages too, so the broker and the machine do the same
               work for paho alone as for the forwarder.
  live         `--readings` handed off at once; readings/s from the first to the last reading
               the forwarder reports delivered (its /metrics), for layout tag at QoS 0 and 1
               and layout device (QoS 1, 50 tags per device message).
  outage       layout tag, QoS 1: `--rate` readings/s keep flowing while the broker is stopped
               for `--outage` seconds; then the broker is back and the flow goes on. The replay
               rate is the backlog's readings over the time it took to drain (live readings
               keep flowing meanwhile; those of tags still in the backlog queue behind it, json's
               per-tag order, so the drain includes them); bytes on disk per buffered reading come from /metrics
               just before the broker returns. Lost = readings handed off that never reached
               the subscriber (a persistent session, so its own reconnect loses nothing).
               `--outage 0` skips this part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from collectors.core.config import HandoffConfig  # noqa: E402
from collectors.core.handoff import HandoffClient  # noqa: E402
from collectors.core.model import Reading, WriteRequest, WriteResult, iso_ms  # noqa: E402
from tests.support.broker import Mosquitto, free_port, wait_port  # noqa: E402

TS0 = 1_764_316_800_000
TAGS = [f"t{i:02d}" for i in range(50)]


# --------------------------------------------------------------------------- subscriber process


def subscribe(port: int, out: str) -> None:
    """Count distinct readings (topic, value) until SIGTERM; write the count to `out`."""
    import signal
    import threading

    import paho.mqtt.client as paho

    seen: set[tuple[str, Any]] = set()
    messages = [0]
    ceiling = [0]

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        if message.topic.endswith("/status"):
            return
        body = orjson.loads(message.payload)
        if message.topic.startswith("ceiling/"):
            ceiling[0] += 1
            return
        messages[0] += 1
        if "readings" in body:
            for tag, reading in body["readings"].items():
                seen.add((message.topic + "/" + tag, reading["value"]))
        elif "value" in body:
            seen.add((message.topic, body["value"]))

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe([("bench/#", 1), ("ceiling/#", 1)])

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-sub", clean_session=False)
    client.reconnect_delay_set(1, 2)
    client.on_message = on_message
    client.on_connect = on_connect
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    client.connect("127.0.0.1", port)
    client.loop_start()  # paho's thread reconnects after the broker's outage
    while not stop.wait(0.2):
        pass
    client.loop_stop()
    Path(out).write_text(json.dumps({"distinct": len(seen), "messages": messages[0], "ceiling": ceiling[0]}))


# --------------------------------------------------------------------------- paho alone


def paho_ceiling(port: int, qos: int, count: int, max_inflight: int = 20) -> float:
    import threading

    import paho.mqtt.client as paho

    # What the forwarder publishes for the same readings (its catalog is empty: no units).
    payloads = [
        (f"ceiling/{r.device}/{r.tag}",
         orjson.dumps({"value": r.value, "ts": iso_ms(r.ts_ms), "quality": "good", "unit": None}))
        for r in readings(0, count)
    ]
    done = threading.Event()
    acked = [0]

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        acked[0] += 1
        if acked[0] == count:
            done.set()

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-paho-{qos}")
    client.max_inflight_messages_set(max_inflight)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(0.3)
    start = time.perf_counter()
    for topic, payload in payloads:
        client.publish(topic, payload, qos)
    done.wait(120)
    elapsed = time.perf_counter() - start
    client.loop_stop()
    client.disconnect()
    return count / elapsed


# --------------------------------------------------------------------------- the forwarder


class ForwarderUnderTest:
    def __init__(self, workdir: Path, broker_port: int, name: str, **mqtt: Any) -> None:
        self.metrics_port = free_port()
        self.socket = workdir / f"{name}.sock"
        self.config = {
            "gateway": {"id": "line3"},
            "mqtt": {"host": "127.0.0.1", "port": broker_port, "topic_prefix": f"bench/{name}", **mqtt},
            "buffer": {"dir": str(workdir / f"buffer-{name}")},
            "metrics": {"port": self.metrics_port},
            "handoff": {"socket": str(self.socket)},
            # the hand-off takes only readings of catalog devices (see readings())
            "devices": [{"name": f"d{d}", "collector": "bench", "tags": [{"name": t} for t in TAGS]}
                        for d in range(100)],
            "log_level": "WARNING",
        }
        config_file = workdir / f"{name}.json"
        config_file.write_text(json.dumps(self.config))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "collectors.forwarder", "--config", str(config_file)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        wait_port(self.metrics_port, 20)

    def metrics(self) -> dict[str, float]:
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            match = re.match(r"fieldgate_forwarder_(\w+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
            if match:
                out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
        return out

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def readings(start: int, count: int, devices: int = 100) -> list[Reading]:
    """Device-major: 50 tags of a device, then the next device; the tags of one poll share its timestamp."""
    return [
        Reading(f"d{(i // 50) % devices}", TAGS[i % 50], i, TS0 + i // 50)
        for i in range(start, start + count)
    ]


async def _no_writes(request: WriteRequest) -> WriteResult:
    return WriteResult(request.id, request.device, request.tag, False, "bench")


async def live(forwarder: ForwarderUnderTest, count: int) -> float:
    settings = HandoffConfig(socket=forwarder.socket, linger=0.002)
    async with HandoffClient(settings, "bench", _no_writes) as client:
        all_readings = readings(0, count)
        start = time.perf_counter()
        for offset in range(0, count, 5000):
            client.publish(all_readings[offset : offset + 5000])
            await asyncio.sleep(0)
        first = None
        while True:
            out = await asyncio.to_thread(forwarder.metrics)
            delivered = out.get("readings_out_total", 0)
            if first is None and delivered > 0:
                first = (time.perf_counter(), delivered)
            if delivered >= count:
                break
            await asyncio.sleep(0.1)
        assert await client.drain(30)
    end = time.perf_counter()
    return count / (end - start)


async def outage(workdir: Path, broker: Mosquitto, seconds: float, rate: int) -> dict[str, float]:
    forwarder = ForwarderUnderTest(workdir, broker.port, "outage", qos=1)
    sent = 0
    try:
        settings = HandoffConfig(socket=forwarder.socket, linger=0.005)
        async with HandoffClient(settings, "bench", _no_writes) as client:
            loop = asyncio.get_running_loop()

            async def flow(duration: float) -> None:
                nonlocal sent
                end = loop.time() + duration
                step = rate // 100
                next_at = loop.time()
                while loop.time() < end:
                    client.publish(readings(sent, step))
                    sent += step
                    next_at += 0.01
                    await asyncio.sleep(max(0.0, next_at - loop.time()))

            await flow(2)
            broker.stop()
            await flow(seconds)
            before = await asyncio.to_thread(forwarder.metrics)
            backlog = before['buffered_readings{lane="backlog"}']
            disk = before["buffered_bytes"]
            broker.start()
            back_at = loop.time()
            drained_at = connected_at = None
            while drained_at is None or loop.time() < drained_at + 1:
                await flow(0.1)
                now = await asyncio.to_thread(forwarder.metrics)
                if connected_at is None and now["broker_connected"]:
                    connected_at = loop.time()
                if drained_at is None and connected_at and now['buffered_readings{lane="backlog"}'] == 0:
                    drained_at = loop.time()
                if loop.time() - back_at > 300:
                    raise TimeoutError("backlog did not drain in 300 s")
            assert await client.drain(30)
            final = await asyncio.to_thread(forwarder.metrics)
    finally:
        forwarder.stop()
    assert connected_at is not None and drained_at is not None
    return {
        "backlog": backlog, "disk": disk, "drain_s": drained_at - connected_at, "sent": sent,
        "reconnect_s": connected_at - back_at,
        "dropped": final.get("dropped_readings_total", 0),
    }


# --------------------------------------------------------------------------- main


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-forwarder-"))
    store = workdir / "store"
    store.mkdir()
    # persistence: the subscriber's session outlives the outage; `user root`: it may write workdir
    conf = f"persistence true\npersistence_location {store}/\nuser root\n"
    broker = Mosquitto(workdir, extra_conf=conf).start()
    sub_out = workdir / "sub.json"
    subscriber = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
        [sys.executable, __file__, "--subscribe", str(broker.port), str(sub_out)]
    )
    await asyncio.sleep(1.0)
    try:
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; Mosquitto on loopback")
        q1 = {inflight: paho_ceiling(broker.port, 1, args.readings // 2, inflight) for inflight in (20, 0)}
        ceiling = {0: paho_ceiling(broker.port, 0, args.readings), 1: max(q1.values())}
        print(f"paho-mqtt alone, one message per reading, QoS 0: {ceiling[0]:>9,.0f} msg/s")
        print(f"paho-mqtt alone, one message per reading, QoS 1: {ceiling[1]:>9,.0f} msg/s"
              f"  (in-flight limit 20: {q1[20]:,.0f}, none: {q1[0]:,.0f})")
        results = {}
        rss = {}
        for name, mqtt in [
            ("tag-q0", {"qos": 0, "layout": "tag"}),
            ("tag-q1", {"qos": 1, "layout": "tag"}),
            ("device-q1", {"qos": 1, "layout": "device"}),
        ]:
            forwarder = ForwarderUnderTest(workdir, broker.port, name, **mqtt)
            try:
                count = args.readings * (5 if mqtt["layout"] == "device" else 1)
                results[name] = await live(forwarder, count)
                rss[name] = forwarder.peak_rss_mb()
            finally:
                forwarder.stop()
        print(f"forwarder json layout tag, QoS 0:        {results['tag-q0']:>9,.0f} readings/s"
              f"  ({results['tag-q0'] / ceiling[0]:.0%} of paho alone)")
        print(f"forwarder json layout tag, QoS 1:        {results['tag-q1']:>9,.0f} readings/s"
              f"  ({results['tag-q1'] / ceiling[1]:.0%} of paho alone)")
        print(f"forwarder json layout device, QoS 1:     {results['device-q1']:>9,.0f} readings/s"
              f"  (50 readings per message; target >= 100,000)")
        print("forwarder peak RSS: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in rss.items()))
        o = {"sent": 0.0, "dropped": 0.0}
        if args.outage > 0:
            o = await outage(workdir, broker, args.outage, args.rate)
            replay = o["backlog"] / o["drain_s"]
            print(f"outage {args.outage:g}s at {args.rate} readings/s (layout tag, QoS 1): "
                  f"{o['backlog']:,.0f} readings in the disk backlog, "
                  f"{o['disk'] / max(o['backlog'], 1):.1f} bytes on disk per reading")
            print(f"replay: reconnected {o['reconnect_s']:.1f}s after the broker's return (backoff), drained in "
                  f"{o['drain_s']:.1f}s = {replay:,.0f} readings/s, {replay / args.rate:.1f}x the live rate "
                  "(live kept flowing)")
        await asyncio.sleep(3)
        subscriber.terminate()
        subscriber.wait(30)
        counted = json.loads(sub_out.read_text())
        expected = sum(
            args.readings * (5 if name.startswith("device") else 1) for name in results
        ) + int(o["sent"])
        print(f"readings lost: {expected - counted['distinct']} of {expected} handed off "
              f"(dropped by max_bytes: {o['dropped']:.0f}); messages received {counted['messages']:,}, "
              f"paho alone's {counted['ceiling']:,}")
    finally:
        if subscriber.poll() is None:
            subscriber.kill()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--subscribe":
        subscribe(int(sys.argv[2]), sys.argv[3])
        sys.exit(0)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=60_000, help="readings per live run (device: 5x)")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the broker is away (0: skip)")
    parser.add_argument("--rate", type=int, default=1000, help="live readings/s during the outage run")
    asyncio.run(main(parser.parse_args()))
