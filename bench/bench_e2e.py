"""End to end, as a user runs it: simulator -> Modbus collector -> forwarder -> Mosquitto -> subscriber.

    python bench/bench_e2e.py [--devices 4] [--tags 250] [--seconds 8] [--latency-seconds 10]

Every part is its own process, started the way `fieldgate` starts it:

  simulator  `python -m gateway.cli simulate devices/*.yaml` (pymodbus' server; one TCP port
             per device, all served by one process, values moving as a sine)
  collector  `python -m collectors.modbus --config run/modbus.yaml`
  forwarder  `python -m collectors.forwarder --config run/forwarder.yaml`
             both slices rendered by the gateway's own code (`load_config` of a config
             directory this script writes, then `process_specs` of the process runtime:
             the same command lines and config text `fieldgate up --runtime process` runs)
  broker     Mosquitto on a free loopback port, default settings but for the queue limits
  subscriber paho-mqtt (its network thread), subscribed to `{prefix}/#` at QoS 0, counting
             readings (one per message with layout tag, one per tag with layout device) and,
             in the latency runs, parsing each reading's `ts`

Runs, one after the other (fresh collector and forwarder each, same simulator/broker/subscriber):

  throughput  devices x tags uint16 registers (scale 0.1, unit degC, deadband 0: every poll is
              reported), 125 registers per request, for json layout tag at QoS 0 and QoS 1 and
              layout device at QoS 1. The poll interval sets the offered load: first a probe at
              `--offer` readings/s; if less arrives, the run is repeated offering 15 % above what
              arrived, so the collector does not spend the machine's two cores on readings the
              forwarder cannot take (they would queue and, past queue_max, be dropped).
              readings/s = what the subscriber counted over `--seconds` after a warm-up.
  paho alone  the same messages (payload bytes and topics captured by the subscriber during the
              tag QoS 0 run), one per reading, published by a bare paho-mqtt client in its own
              process to the same broker while the same subscriber listens: once with paho's
              loop_start() thread and its defaults (the usual way), once driving paho's loop by
              hand as the forwarder does (no paho in-flight limit, at most 2,000 / 400 messages
              outstanding, TCP quick-ack at QoS 1). The better one is the ceiling.
  latency     `--latency-rate` readings/s (default 1,000: 4 devices x 25 tags every 100 ms),
              latency = the subscriber's wall clock when the message arrives minus the reading's
              `ts`, which the collector stamps when the poll response arrives (poller.py:
              now_ms() right after the read) and json_format writes as ISO 8601 with
              milliseconds. `ts` is truncated to the millisecond, so every figure reads
              0 to 1 ms high (0.5 ms on average).

CPU per 1,000 readings comes from /proc/PID/stat (utime + stime) over the measuring window: the
collector's over the readings it reported (its /metrics), the forwarder's over the readings it
delivered (its /metrics). Peak RSS is VmHWM. The simulator's, Mosquitto's and the subscriber's CPU
are printed too: on a 2-core machine they all share the cores with the collector and forwarder.

What limits what: the simulator is pymodbus' server, ~13k requests/s per core (FIELD-NOTES), so
at 125 registers per request it could serve ~1.6M readings/s; it is not the limit here, but it
takes CPU from the others in proportion to the polls. With layout tag the limit is one MQTT
message per reading (paho's per-publish cost in the forwarder, Mosquitto's routing, and the
subscriber's per-message cost, all on the same two cores). With layout device the messages are
large (one per device and batch) and the per-reading costs (hand-off, buffer, encoding) dominate;
there the Modbus side sets the ceiling: one request in flight per device link, a few ms per
request against the simulator, so readings/s grow with devices, not with a shorter poll.

Latency: the collector's hand-off linger (default 2 ms; `--linger` to try others) and, at QoS 1,
the PUBACK round trips of a poll's burst are ours. Mosquitto's default (`set_tcp_nodelay false`)
holds a small message to a subscriber until the subscriber acknowledges the previous one, and
Linux delays that ACK ~40 ms: with sparse messages (layout device at 1,000 readings/s) that, not
the gateway, sets p90/p99; `--broker-nodelay` shows the figures with `set_tcp_nodelay true`.

RSS grows with the tags in the config (slices are JSON read by orjson: the collector ~3 KB per
tag, 43 MB with 8 x 250 tags; the forwarder idles at 40 MB with that catalog and holds ~12 MB
more at 20k readings/s, layout tag): the latency runs (100 tags) show the base, the throughput
runs the `--devices` x `--tags` plant.

Prints figures and compares them with the targets of issue 2; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from tests.support.broker import Mosquitto, free_port, wait_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
PREFIX = "bench/e2e"
TARGET_RATIO = 0.80
TARGET_DEVICE = 100_000
TARGET_RSS_MB = 45
TARGET_P99_MS = 20.0
CAPTURE = 20_000  # messages the subscriber keeps for the paho-alone runs


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def status_mb(pid: int, key: str) -> float:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else 0.0


# --------------------------------------------------------------------------- the subscriber (own process)


def subscriber_main(port: int, conn: Connection) -> None:
    """Count readings under PREFIX; on request, measure latencies or capture messages.

    Commands on `conn`: ("count",) -> (readings, messages, monotonic time);
    ("latency", on) -> on False, the list of latencies in ms since it was switched on;
    ("capture",) -> up to CAPTURE (topic, payload) of layout tag, captured from now on.
    """
    from datetime import datetime

    import paho.mqtt.client as paho

    state: dict[str, Any] = {"readings": 0, "messages": 0, "latency": None, "capture": None}
    ts_ms: dict[bytes, int] = {}
    ts_re = re.compile(rb'"ts":"([^"]+)"')
    wall = time.time

    def ms_of(iso: bytes) -> int:
        value = ts_ms.get(iso)
        if value is None:
            if len(ts_ms) > 100_000:
                ts_ms.clear()
            value = ts_ms[iso] = round(datetime.fromisoformat(iso.decode().replace("Z", "+00:00")).timestamp() * 1000)
        return value

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        now = wall()
        payload = message.payload
        if payload[:1] != b"{":
            return  # {prefix}/status: online / offline
        readings = payload.count(b'"quality"')
        state["readings"] += readings
        state["messages"] += 1
        latency = state["latency"]
        if latency is not None:
            stamps = ts_re.findall(payload)
            if readings > 1 or b'"readings"' in payload:
                stamps = stamps[1:]  # layout device: the first ts is the message's own
            now_ms = now * 1000
            latency.extend(now_ms - ms_of(stamp) for stamp in stamps)
        capture = state["capture"]
        if capture is not None and readings == 1 and len(capture) < CAPTURE:
            capture.append((message.topic, bytes(payload)))

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-e2e-subscriber")
    client.on_message = on_message
    client.on_connect = lambda c, u, f, r, p: c.subscribe(f"{PREFIX}/#", 0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        while True:
            try:
                command = conn.recv()
            except EOFError:
                return
            if command[0] == "count":
                conn.send((state["readings"], state["messages"], time.monotonic()))
            elif command[0] == "latency":
                if command[1]:
                    state["latency"] = []
                    conn.send(None)
                else:
                    latencies, state["latency"] = state["latency"], None
                    conn.send(latencies)
            elif command[0] == "capture":
                if state["capture"] is None:
                    state["capture"] = []
                    conn.send(None)
                else:
                    captured, state["capture"] = state["capture"], None
                    conn.send(captured)
            elif command[0] == "stop":
                conn.send(None)
                return
    finally:
        client.loop_stop()
        client.disconnect()


class Subscriber:
    def __init__(self, port: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=subscriber_main, args=(port, child), daemon=True)
        self.process.start()
        child.close()

    def ask(self, *command: Any) -> Any:
        self._conn.send(command)
        return self._conn.recv()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError, EOFError):
                self.ask("stop")
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


# --------------------------------------------------------------------------- paho alone (own process)


def paho_main(port: int, qos: int, mode: str, messages: list[tuple[str, bytes]], count: int,
              conn: Connection) -> None:
    """Publish `count` messages cycling through `messages`; send back messages/s until the last is
    written (QoS 0) or acknowledged (QoS 1)."""
    import threading

    import paho.mqtt.client as paho

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-e2e-paho-{qos}-{mode}")
    if mode != "thread":
        # as the forwarder drives it: no in-flight limit (its own window bounds what paho holds),
        # and publish() only queues (a write-interest callback set), the loop writes
        client.max_inflight_messages_set(0)
        client.on_socket_register_write = lambda c, u, s: None
    done = threading.Event()
    acked = [0]

    def on_publish(c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        acked[0] += 1
        if acked[0] == count:
            done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    n = len(messages)
    if mode == "thread":
        client.loop_start()
        time.sleep(0.3)
        start = time.perf_counter()
        for i in range(count):
            topic, payload = messages[i % n]
            client.publish(topic, payload, qos)
        done.wait(300)
        elapsed = time.perf_counter() - start
        client.loop_stop()
    else:
        quickack = getattr(socket, "TCP_QUICKACK", None)
        window = 400 if qos else 2000
        while not client.is_connected():
            client.loop(0.1)
        raw = client.socket()
        sock = raw if isinstance(raw, socket.socket) and qos and quickack is not None else None

        def quick_ack() -> None:  # what the forwarder does after each read (see its mqtt.py)
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)  # type: ignore[arg-type]

        start = time.perf_counter()
        i = 0
        while acked[0] < count:
            # at most `window` outstanding, as the forwarder (2000 at QoS 0, 400 at QoS 1)
            for _ in range(min(window - (i - acked[0]), count - i)):
                topic, payload = messages[i % n]
                client.publish(topic, payload, qos)
                i += 1
            client.loop(0)
            quick_ack()
            if i >= count and acked[0] < count:
                client.loop(0.001)
                quick_ack()
            if time.perf_counter() - start > 300:
                break
        elapsed = time.perf_counter() - start
    client.disconnect()
    conn.send(count / elapsed)


def paho_alone(port: int, qos: int, mode: str, messages: list[tuple[str, bytes]], count: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    process = ctx.Process(target=paho_main, args=(port, qos, mode, messages, count, theirs))
    process.start()
    theirs.close()
    try:
        rate = mine.recv()
    finally:
        process.join(30)
    return float(rate)


# --------------------------------------------------------------------------- the plant on disk


def device_file(name: str, port: int, tags: int, poll_ms: float) -> dict[str, Any]:
    return {
        "name": name, "protocol": "modbus",
        "connection": {"tcp": {"host": "127.0.0.1", "port": port}},
        "unit": 1, "poll": f"{poll_ms:g}ms", "timeout": "1s",
        "tags": [
            {"name": f"t{i:03d}", "table": "holding", "address": i, "type": "uint16", "scale": 0.1,
             "unit": "degC", "simulate": {"kind": "sine", "min": 18, "max": 26, "period": "30s"}}
            for i in range(tags)
        ],
    }


def write_plant(folder: Path, ports: list[int], tags: int, poll_ms: float, gateway: dict[str, Any] | None) -> None:
    (folder / "devices").mkdir(parents=True, exist_ok=True)
    for i, port in enumerate(ports):
        (folder / "devices" / f"dev{i}.yaml").write_text(
            yaml.safe_dump(device_file(f"dev{i}", port, tags, poll_ms), sort_keys=False))
    if gateway is not None:
        (folder / "gateway.yaml").write_text(yaml.safe_dump(gateway, sort_keys=False))


def free_port_pair() -> int:
    """A port P with P+1 free too: the forwarder's metrics port and the Modbus collector's."""
    while True:
        port = free_port()
        if port < 65535:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port


# --------------------------------------------------------------------------- one run


@dataclass
class Snapshot:
    t: float
    sub_readings: int
    collected: float
    delivered: float
    queued: float
    buffered: float
    batch_latency: tuple[float, float]  # the forwarder's hand-off -> broker ack: (sum s, batches)
    cpu: dict[str, float]


@dataclass
class RunResult:
    name: str
    offered: float  # readings/s the poll interval asks for
    collected: float  # readings/s the collector reported
    delivered: float  # readings/s the forwarder delivered
    received: float  # readings/s the subscriber counted
    backlog_growth: float  # readings/s the collector queue + forwarder buffer grew by
    cpu: dict[str, float]  # process -> cores (CPU seconds per second)
    cpu_per_k: dict[str, float]  # collector / forwarder -> ms of CPU per 1,000 readings
    rss: dict[str, float]  # collector / forwarder -> VmHWM MB
    latencies: list[float] = field(default_factory=list)
    forwarder_ms: float = 0.0  # mean hand-off -> broker acknowledgement of a batch, in the forwarder


def metrics(port: int) -> dict[str, float]:
    from gateway.runtime.metrics import parse_metrics

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return parse_metrics(text)


class Pipeline:
    """A forwarder and a collector started from a config directory by the gateway's own code."""

    def __init__(self, folder: Path, logs: Path, linger: float | None = None) -> None:
        from gateway.config import load_config
        from gateway.runtime.common import RunDir
        from gateway.runtime.desired import process_specs
        from gateway.runtime.process import child_environment

        config = load_config(folder)
        run_dir = RunDir.for_config(folder)
        run_dir.create()
        specs = process_specs(config, run_dir)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        env = child_environment()
        for name in ("forwarder", "modbus"):  # the order `plan` starts them in
            spec = specs[name]
            assert spec.config_file is not None and spec.metrics_port is not None
            text = spec.config_text
            if linger is not None and name == "modbus":
                rendered = yaml.safe_load(text)
                rendered["handoff"]["linger"] = linger
                text = yaml.safe_dump(rendered, sort_keys=False)
            Path(spec.config_file).write_text(text)
            log = (logs / f"{folder.name}-{name}.log").open("wb")
            self.procs[name] = subprocess.Popen(spec.command, stdout=log, stderr=subprocess.STDOUT, env=env)
            self.ports[name] = spec.metrics_port
            wait_port(spec.metrics_port, 30)
            if spec.ready_path:
                deadline = time.monotonic() + 30
                while not os.path.exists(spec.ready_path):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{name}: {spec.ready_path} did not appear")
                    time.sleep(0.02)

    @property
    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: see its log")

    def stop(self) -> None:
        for name in ("modbus", "forwarder"):  # collectors first, as the supervisor stops them
            proc = self.procs[name]
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
        self.logs = self.workdir / "logs"
        self.logs.mkdir()
        conf = "set_tcp_nodelay true\n" if args.broker_nodelay else ""
        self.broker = Mosquitto(self.workdir, extra_conf=conf).start()
        self.ports = [free_port() for _ in range(args.devices)]
        sim_dir = self.workdir / "sim"
        write_plant(sim_dir, self.ports, args.tags, 1000, None)
        files = sorted(str(p) for p in (sim_dir / "devices").glob("*.yaml"))
        from gateway.runtime.process import child_environment

        self.sim_log = (self.logs / "simulator.log").open("wb")
        self.simulator = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "simulate", *files],
            stdout=self.sim_log, stderr=subprocess.STDOUT, env=child_environment(),
        )
        for port in self.ports:
            wait_port(port, 30)
        self.subscriber = Subscriber(self.broker.port)
        time.sleep(1.0)
        self.runs = 0
        self.captured: list[tuple[str, bytes]] = []

    def close(self) -> None:
        self.subscriber.stop()
        for proc in (self.simulator,):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.broker.stop()
        if self.args.keep:
            print(f"(kept {self.workdir})")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _snapshot(self, pipeline: Pipeline) -> Snapshot:
        readings, _, t = self.subscriber.ask("count")
        fwd = metrics(pipeline.ports["forwarder"])
        col = metrics(pipeline.ports["modbus"])
        pids = {**pipeline.pids, "simulator": self.simulator.pid, "mosquitto": self.broker.process.pid,  # type: ignore[union-attr]
                "subscriber": self.subscriber.pid}
        return Snapshot(
            t, readings,
            collected=col.get("fieldgate_modbus_readings_total", 0.0),
            delivered=fwd.get("fieldgate_forwarder_readings_out_total", 0.0),
            queued=col.get("fieldgate_handoff_queue", 0.0),
            buffered=fwd.get("fieldgate_forwarder_buffered_readings", 0.0),
            batch_latency=(fwd.get("fieldgate_forwarder_publish_latency_seconds_sum", 0.0),
                           fwd.get("fieldgate_forwarder_publish_latency_seconds_count", 0.0)),
            cpu={name: cpu_seconds(pid) for name, pid in pids.items()},
        )

    def run(self, name: str, qos: int, layout: str, devices: int, tags: int, poll_ms: float,
            seconds: float, latency: bool = False, capture: bool = False) -> RunResult:
        self.runs += 1
        folder = self.workdir / f"run{self.runs}-{name}"
        gateway = {
            "gateway": {"id": "bench"},
            "mqtt": {"host": "127.0.0.1", "port": self.broker.port, "client_id": f"fieldgate-bench-{self.runs}",
                     "qos": qos, "format": "json", "layout": layout, "topic_prefix": PREFIX},
            "metrics": {"port": free_port_pair()},
            "buffer": {"dir": str(folder / "buffer")},
            "runtime": "process",
            "log_level": "WARNING",
        }
        write_plant(folder, self.ports[:devices], tags, poll_ms, gateway)
        pipeline = Pipeline(folder, self.logs, self.args.linger)
        try:
            deadline = time.monotonic() + 30
            while self.subscriber.ask("count")[0] == 0 or metrics(pipeline.ports["forwarder"]).get(
                    "fieldgate_forwarder_readings_out_total", 0) == 0:
                pipeline.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name}: no reading arrived in 30 s; logs in {self.logs}")
                time.sleep(0.1)
            time.sleep(self.args.warmup)
            if latency:
                self.subscriber.ask("latency", True)
            if capture:
                self.subscriber.ask("capture")
            before = self._snapshot(pipeline)
            time.sleep(seconds)
            after = self._snapshot(pipeline)
            latencies = self.subscriber.ask("latency", False) if latency else []
            if capture:
                self.captured = self.subscriber.ask("capture")
            pipeline.check_alive()
            rss = {n: status_mb(pid, "VmHWM") for n, pid in pipeline.pids.items()}
        finally:
            pipeline.stop()
        span = after.t - before.t
        collected = after.collected - before.collected
        delivered = after.delivered - before.delivered
        cpu = {n: (after.cpu[n] - before.cpu[n]) / span for n in after.cpu}
        return RunResult(
            name=name,
            offered=devices * tags / (poll_ms / 1000),
            collected=collected / span,
            delivered=delivered / span,
            received=(after.sub_readings - before.sub_readings) / span,
            backlog_growth=((after.queued + after.buffered) - (before.queued + before.buffered)) / span,
            cpu=cpu,
            cpu_per_k={
                "modbus": cpu["modbus"] * span / max(collected, 1) * 1e6,
                "forwarder": cpu["forwarder"] * span / max(delivered, 1) * 1e6,
            },
            rss={"modbus": rss["modbus"], "forwarder": rss["forwarder"]},
            latencies=latencies,
            forwarder_ms=(after.batch_latency[0] - before.batch_latency[0])
            / max(after.batch_latency[1] - before.batch_latency[1], 1) * 1000,
        )

    def throughput(self, name: str, qos: int, layout: str, offer: float, capture: bool = False) -> RunResult:
        """Raise the offered load until less arrives than is offered; the best run counts.

        Offering far more than the pipeline takes would measure an overloaded machine (the
        collector and simulator eating the cores the forwarder needs), so the search starts at
        `offer` and grows it by 1.4x while everything offered arrives; once a run falls short,
        one run between the last two offers, and the best of all is the figure."""
        args = self.args
        per_poll = args.devices * args.tags
        best: RunResult | None = None
        for step in range(args.steps):
            poll_ms = max(1, round(per_poll / offer * 1000))
            result = self.run(name, qos, layout, args.devices, args.tags, poll_ms, args.seconds, capture=capture)
            print(f"  {name}: offered {result.offered:,.0f}/s, collected {result.collected:,.0f}/s, "
                  f"received {result.received:,.0f}/s; peak RSS collector {result.rss['modbus']:.0f} MB, "
                  f"forwarder {result.rss['forwarder']:.0f} MB", flush=True)
            gained = best is None or result.received > 1.05 * best.received
            if best is None or result.received > best.received:
                best = result
            if result.received < 0.93 * result.collected:  # MQTT side saturated: a backlog grows
                if step == 0:
                    offer = result.received * 1.1  # overloaded from the start: once more, just above
                    continue
                break
            if not gained:  # more polls, no more readings: the Modbus side is the limit
                break
            offer = max(result.offered, result.collected) * 1.4
        assert best is not None
        return best


# --------------------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def describe(result: RunResult) -> str:
    cpu = ", ".join(f"{name} {cores * 100:.0f} %" for name, cores in result.cpu.items())
    return (
        f"    offered {result.offered:>9,.0f}/s  collected {result.collected:>9,.0f}/s  "
        f"delivered {result.delivered:>9,.0f}/s  backlog {result.backlog_growth:+,.0f}/s\n"
        f"    CPU (of one core): {cpu}\n"
        f"    CPU per 1,000 readings: collector {result.cpu_per_k['modbus']:.1f} ms, "
        f"forwarder {result.cpu_per_k['forwarder']:.1f} ms; peak RSS (VmHWM): collector "
        f"{result.rss['modbus']:.1f} MB, forwarder {result.rss['forwarder']:.1f} MB"
    )


def main(args: argparse.Namespace) -> None:
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; Python {sys.version.split()[0]}; "
          f"{args.devices} devices x {args.tags} uint16 tags (125 registers per request), window {args.seconds:g}s"
          + ("; Mosquitto set_tcp_nodelay true" if args.broker_nodelay else ""))
    results: dict[str, RunResult] = {}
    ceilings: dict[tuple[int, str], float] = {}
    latency: dict[str, RunResult] = {}
    lat_poll_ms = args.latency_devices * args.latency_tags / args.latency_rate * 1000
    bench = Bench(args)
    try:
        if args.only != "latency":
            for name, qos, layout, offer, capture in [
                ("tag-q0", 0, "tag", args.offer_tag, True),
                ("tag-q1", 1, "tag", args.offer_tag, False),
                ("device-q1", 1, "device", args.offer_device, False),
            ]:
                results[name] = bench.throughput(name, qos, layout, offer, capture)
            for qos in (0, 1):
                for mode in ("thread", "own-loop"):
                    count = args.paho_messages if qos == 0 else args.paho_messages // 2
                    ceilings[(qos, mode)] = paho_alone(bench.broker.port, qos, mode, bench.captured, count)
        if args.only != "throughput":
            for name, qos, layout in [("tag-q1", 1, "tag"), ("tag-q0", 0, "tag"), ("device-q1", 1, "device")]:
                latency[name] = bench.run(f"latency-{name}", qos, layout, args.latency_devices, args.latency_tags,
                                          lat_poll_ms, args.latency_seconds, latency=True)
    finally:
        bench.close()
    if results:
        report_throughput(args, results, ceilings, len(bench.captured))
    if latency:
        report_latency(args, latency, lat_poll_ms)


def report_throughput(args: argparse.Namespace, results: dict[str, RunResult],
                      ceilings: dict[tuple[int, str], float], captured: int) -> None:
    print("\nthroughput, end to end (readings/s counted by the subscriber):")
    for qos in (0, 1):
        best = max(ceilings[(qos, "thread")], ceilings[(qos, "own-loop")])
        r = results[f"tag-q{qos}"]
        verdict = "meets" if r.received >= TARGET_RATIO * best else "MISSES"
        print(f"  json layout tag, QoS {qos}:    {r.received:>9,.0f} readings/s = {r.received / best:.0%} of paho "
              f"alone ({verdict} target >= {TARGET_RATIO:.0%})")
        print(describe(r))
    r = results["device-q1"]
    verdict = "meets" if r.received >= TARGET_DEVICE else "MISSES"
    print(f"  json layout device, QoS 1: {r.received:>9,.0f} readings/s ({args.tags} readings per message; "
          f"{verdict} target >= {TARGET_DEVICE:,})")
    print(describe(r))
    print(f"\npaho-mqtt alone, the same {captured:,} captured messages cycled, one per reading, same broker "
          "and subscriber (messages/s):")
    for qos in (0, 1):
        print(f"  QoS {qos}: loop_start() thread {ceilings[(qos, 'thread')]:>9,.0f}   "
              f"own loop{' + quick-ack' if qos else ''} {ceilings[(qos, 'own-loop')]:>9,.0f}")


def report_latency(args: argparse.Namespace, latency: dict[str, RunResult], poll_ms: float) -> None:
    from collectors.core.config import HandoffConfig

    print(f"\nlatency, poll response -> subscriber, at {args.latency_rate:,} readings/s "
          f"({args.latency_devices} devices x {args.latency_tags} tags every {poll_ms:g} ms; ts has ms "
          "resolution, so figures read 0-1 ms high):")
    linger_ms = (args.linger if args.linger is not None else HandoffConfig.model_fields["linger"].default) * 1000
    for name, r in latency.items():
        lat = r.latencies
        if not lat:
            print(f"  {name}: no samples")
            continue
        p99 = percentile(lat, 0.99)
        verdict = "meets" if p99 <= TARGET_P99_MS else "MISSES"
        print(f"  {name:<10} p50 {percentile(lat, 0.5):5.1f} ms  p90 {percentile(lat, 0.9):5.1f} ms  "
              f"p99 {p99:5.1f} ms  max {max(lat):5.1f} ms  ({len(lat):,} readings; {verdict} p99 <= "
              f"{TARGET_P99_MS:g} ms)")
        print(f"    of which in the forwarder (hand-off -> broker ack, mean per batch): {r.forwarder_ms:.1f} ms; "
              f"collector's hand-off linger {linger_ms:g} ms")
        print(f"    CPU per 1,000 readings: collector {r.cpu_per_k['modbus']:.1f} ms, forwarder "
              f"{r.cpu_per_k['forwarder']:.1f} ms; peak RSS (VmHWM): collector {r.rss['modbus']:.1f} MB, "
              f"forwarder {r.rss['forwarder']:.1f} MB "
              f"({'meets' if max(r.rss.values()) <= TARGET_RSS_MB else 'MISSES'} <= {TARGET_RSS_MB} MB each)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=8, help="simulated devices, one TCP port each")
    parser.add_argument("--tags", type=int, default=250, help="uint16 tags per device (125 per request)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring window of each throughput run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds after the first reading arrives")
    parser.add_argument("--offer-tag", type=float, default=20_000, help="first offered readings/s, layout tag")
    parser.add_argument("--offer-device", type=float, default=100_000, help="first offered readings/s, layout device")
    parser.add_argument("--steps", type=int, default=5, help="most runs of the search per layout and QoS")
    parser.add_argument("--linger", type=float, default=None,
                        help="experiment: override the collector's hand-off linger (seconds) in its rendered slice")
    parser.add_argument("--paho-messages", type=int, default=100_000,
                        help="messages of paho alone at QoS 0 (QoS 1: half)")
    parser.add_argument("--latency-rate", type=int, default=1000)
    parser.add_argument("--latency-devices", type=int, default=4)
    parser.add_argument("--latency-tags", type=int, default=25)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--only", choices=["throughput", "latency"], help="run one part only")
    parser.add_argument("--broker-nodelay", action="store_true",
                        help="experiment: Mosquitto with set_tcp_nodelay true (its default leaves Nagle on)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    main(parser.parse_args())
