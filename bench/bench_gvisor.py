"""What `sandbox: gvisor` costs: readings/s and CPU per 1,000 readings of a Modbus TCP and an
OPC UA collector under runc, then under runsc (gVisor), in one run on one stack.

    python bench/bench_gvisor.py [--rate 500] [--seconds 20] [--rounds 1]

Needs a running engine with the images and a `runsc` runtime (`.ci/docker.sh`), mosquitto on
the host. Processes: Mosquitto, a Modbus and an OPC UA simulator (`fieldgate simulate`) on the
host, `fieldgate up DIR --runtime docker` (network host), and this script subscribing.

Each collector is asked for `--rate` readings/s (rate/10 tags, Modbus polled at 100 ms, OPC UA
sampled at 100 ms from a simulator that changes every value each 100 ms). For each runtime the
gateway.yaml gets `sandbox: none` or `sandbox: gvisor` on both collectors (the supervisor
recreates them; the forwarder stays on runc); after a settling pause the script counts the
readings each device delivers at the subscriber over `--seconds` and the CPU time of each
collector's container from the Engine's stats (its cgroup: under runsc that holds the sandbox,
the gofer and the ptrace stubs, so gVisor's own work is counted). `--rounds 2` measures
runc, runsc, runc, runsc. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from tests.docker.stack import Stack  # noqa: E402
from tests.support.broker import Mosquitto, free_port  # noqa: E402
from tests.support.mqtt import Subscriber  # noqa: E402

COLLECTORS = {"modbus": "press-1", "opcua": "oven-2"}


def modbus_device(port: int, tags: int) -> str:
    lines = ["name: press-1", "protocol: modbus", "connection:", f"  tcp: {{host: 127.0.0.1, port: {port}}}",
             "unit: 1", "poll: 100ms", "tags:"]
    for i in range(tags):
        lines += [f"  - name: t{i:03d}", "    table: holding", f"    address: {i}", "    type: uint16",
                  "    simulate: {kind: counter, step: 10, max: 60000}"]
    return "\n".join(lines) + "\n"


def opcua_device(port: int, tags: int) -> str:
    lines = ["name: oven-2", "protocol: opcua", f"endpoint: opc.tcp://127.0.0.1:{port}",
             "subscription: {publishing_interval: 200ms, sampling_interval: 100ms}", "tags:"]
    for i in range(tags):
        lines += [f"  - name: t{i:03d}", f'    node: "ns=2;s=Bench.T{i:03d}"',
                  "    simulate: {kind: ramp, min: 0, max: 100000, period: 1000s}"]
    return "\n".join(lines) + "\n"


def set_sandbox(plant: Path, sandbox: str) -> None:
    path = plant / "gateway.yaml"
    lines = [line for line in path.read_text().splitlines() if "sandbox:" not in line]
    out: list[str] = []
    for line in lines:
        out.append(line)
        if line.strip().startswith("update:") and line.startswith("    "):  # collectors.<protocol>.update
            out.append(f"    sandbox: {sandbox}")
    path.write_text("\n".join(out) + "\n")


def cpu_ns(container: Any) -> int:
    stats = container.client.api.stats(container.id, stream=False, one_shot=True)
    return int(stats["cpu_stats"]["cpu_usage"]["total_usage"])


def measure(
    stack: Stack, sub: Subscriber, runtime: str, seconds: float, settle: float
) -> dict[str, tuple[float, float]]:
    """Wait until both collectors run on `runtime` and deliver; then readings/s and CPU-ms/1,000 readings."""
    deadline = time.monotonic() + 240
    while True:
        containers = stack.containers()
        ok = all(name in containers and containers[name].status == "running"
                 and (containers[name].attrs["HostConfig"].get("Runtime") or "runc") == runtime
                 for name in COLLECTORS)
        if ok:
            break
        if time.monotonic() > deadline:
            log = stack.supervisor.text()[-2000:] if stack.supervisor else ""
            raise TimeoutError(f"collectors not running on {runtime}:\n{log}")
        time.sleep(1)
    since = time.time()
    for device in COLLECTORS.values():
        topic = f"{stack.topic_prefix}/{device}/t000"
        sub.wait_for(lambda m, t=topic: m.topic == t and m.at > since, timeout=120)
    time.sleep(settle)
    sub.clear()
    before = {name: cpu_ns(containers[name]) for name in COLLECTORS}
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    after = {name: cpu_ns(containers[name]) for name in COLLECTORS}
    messages = list(sub.messages)
    result: dict[str, tuple[float, float]] = {}
    for name, device in COLLECTORS.items():
        prefix = f"{stack.topic_prefix}/{device}/"
        count = len([m for m in messages if m.topic.startswith(prefix) and start <= m.at < end])
        cpu_s = (after[name] - before[name]) / 1e9
        per_1000 = cpu_s * 1000 / (count / 1000) if count else float("nan")  # CPU-ms per 1,000 readings
        result[name] = (count / (end - start), per_1000)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=500, help="readings/s asked of each collector")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window per runtime")
    parser.add_argument("--settle", type=float, default=10.0, help="pause after the collectors deliver")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--gvisor-runtime", default="runsc")
    args = parser.parse_args()

    client = docker.from_env()
    if args.gvisor_runtime not in (client.info().get("Runtimes") or {}):
        print(f"the engine declares no {args.gvisor_runtime} runtime: run `sudo bash .ci/runsc.sh`", file=sys.stderr)
        return 2
    tags = max(1, args.rate // 10)
    rows: list[tuple[str, str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-gvisor-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work).start()
        sub = Subscriber(broker.host, broker.port)
        stack = Stack(work / "stack", broker.port)
        try:
            stack.add_device("press-1", modbus_device(free_port(), tags))
            stack.add_device("oven-2", opcua_device(free_port(), tags))
            stack.up()
            for _ in range(args.rounds):
                for sandbox, runtime in (("none", "runc"), ("gvisor", args.gvisor_runtime)):
                    set_sandbox(stack.plant, sandbox)
                    for name, (rate, cpu) in measure(stack, sub, runtime, args.seconds, args.settle).items():
                        rows.append((name, runtime, rate, cpu))
                        print(f"  {name} on {runtime}: {rate:.0f} readings/s, {cpu:.0f} CPU-ms per 1,000 readings",
                              flush=True)
        finally:
            stack.close()
            sub.close()
            broker.stop()
    print(f"\neach collector asked for {args.rate} readings/s ({tags} tags at 100 ms); "
          f"{args.seconds:.0f} s windows; limits as gateway.yaml: 0.5 CPU each; CPU from the container's cgroup")
    print(f"{'collector':<10} {'runtime':<8} {'readings/s':>11} {'CPU-ms/1,000 readings':>22} {'vs runc':>8}")
    for name in COLLECTORS:
        for runtime in ("runc", args.gvisor_runtime):
            picked = [(r, c) for n, rt, r, c in rows if n == name and rt == runtime]
            rate = sum(r for r, _ in picked) / len(picked)
            cpu = sum(c for _, c in picked) / len(picked)
            runc_cpu = sum(c for n, rt, _, c in rows if n == name and rt == "runc") / max(
                1, len([1 for n, rt, _, _ in rows if n == name and rt == "runc"]))
            ratio = f"x{cpu / runc_cpu:.2f}" if runtime != "runc" and runc_cpu else ""
            print(f"{name:<10} {runtime:<8} {rate:>11.0f} {cpu:>22.0f} {ratio:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
