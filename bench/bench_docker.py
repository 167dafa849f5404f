"""The docker runtime's figures: image sizes, start time, RSS idle and under load, kill -> resume.

    python bench/bench_docker.py [--base fieldgate/base:bookworm] [--rate 1000] [--seconds 10]

Needs a running engine and the images (`.ci/docker.sh` or `fieldgate images build`), mosquitto
and socat on the host. Processes: Mosquitto, a Modbus and an OPC UA simulator (`fieldgate
simulate`) on the host, `fieldgate up DIR --runtime docker` (network host), and this script
subscribing to everything.

  images   each image's size and what it adds over the base (the Engine's uncompressed sizes)
  start    `fieldgate up` started -> the first reading at the broker
  idle     RSS of each container (sum of VmRSS of its processes, from the host's /proc) with
           one Modbus tag at 1 s and one OPC UA tag
  load     the Modbus device file edited to `--rate` readings/s (tags x 10 Hz, deadband 0);
           the supervisor recreates the Modbus container only; readings/s counted at the
           subscriber over `--seconds`, then RSS again
  kill     `docker kill` of the Modbus container -> the next reading at the broker
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from gateway.images import IMAGES, image_name  # noqa: E402
from tests.docker.stack import Stack, after, opcua_device, readings  # noqa: E402
from tests.support.broker import Mosquitto, free_port  # noqa: E402
from tests.support.mqtt import Subscriber  # noqa: E402


def modbus_device(port: int, tags: int, poll: str) -> str:
    lines = [
        "name: press-1", "protocol: modbus", "connection:", f"  tcp: {{host: 127.0.0.1, port: {port}}}",
        "unit: 1", f"poll: {poll}", "tags:",
    ]
    for i in range(tags):
        lines += [f"  - name: t{i:03d}", "    table: holding", f"    address: {i}", "    type: uint16",
                  "    simulate: {kind: counter, step: 10, max: 60000}"]
    return "\n".join(lines) + "\n"


def rss_mib(container: object) -> float:
    """Sum of VmRSS of the container's processes (docker-init and python), from the host's /proc."""
    top = container.top(ps_args="-o pid")  # type: ignore[attr-defined]
    total_kib = 0
    for row in top["Processes"]:
        try:
            status = Path(f"/proc/{row[0]}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="fieldgate/base:bookworm")
    parser.add_argument("--rate", type=int, default=1000, help="readings/s under load (10 Hz x rate/10 tags)")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    client = docker.from_env()
    base = client.images.get(args.base).attrs["Size"]
    print(f"{'image':<36} {'size':>9} {'over base':>10}")
    for image in IMAGES:
        size = client.images.get(image_name(image)).attrs["Size"]
        print(f"{image_name(image):<36} {size / 1e6:>7.1f}MB {(size - base) / 1e6:>8.1f}MB")
    print(f"{'base ' + args.base:<36} {base / 1e6:>7.1f}MB")

    with tempfile.TemporaryDirectory(prefix="bench-docker-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work).start()
        sub = Subscriber(broker.host, broker.port)
        stack = Stack(work / "stack", broker.port)
        try:
            modbus_port = free_port()
            device = stack.add_device("press-1", modbus_device(modbus_port, 1, "1s"),
                                      sim_text=modbus_device(modbus_port, args.rate // 10, "1s"))
            stack.add_device("oven-2", opcua_device("oven-2", free_port()))
            started = time.time()
            stack.up()
            first = sub.wait_for(readings(stack.topic_prefix, "press-1", "t000"), timeout=180)[0]
            print(f"\nstart: `fieldgate up` -> first reading at the broker: {first.at - started:.1f}s")

            time.sleep(15)
            containers = stack.containers()
            idle = {name: rss_mib(c) for name, c in sorted(containers.items())}

            device.write_text(modbus_device(modbus_port, args.rate // 10, "100ms"))
            edited = time.time()
            last = f"{stack.topic_prefix}/press-1/t{args.rate // 10 - 1:03d}"
            sub.wait_for(lambda m: m.topic == last and m.at > edited, timeout=120)
            time.sleep(5)
            window_start = time.time()
            time.sleep(args.seconds)
            window_end = time.time()
            prefix = f"{stack.topic_prefix}/press-1/"
            count = len([m for m in list(sub.messages)
                         if m.topic.startswith(prefix) and window_start <= m.at < window_end])
            rate = count / (window_end - window_start)
            containers = stack.containers()
            loaded = {name: rss_mib(c) for name, c in sorted(containers.items())}
            print(f"load: {rate:.0f} readings/s at the subscriber (asked {args.rate})")
            print(f"\n{'RSS (MiB)':<12} {'idle':>7} {'load':>7}")
            for name in sorted(idle):
                print(f"{name:<12} {idle[name]:>7.1f} {loaded.get(name, float('nan')):>7.1f}")
            time.sleep(6)  # one more stats round, so CPU and readings/s describe the load
            print("\n`fieldgate status` under load:\n" + stack.status().stdout)

            sub.clear()
            containers["modbus"].kill()
            killed = time.time()
            resumed = sub.wait_for(after(killed + 0.2, readings(stack.topic_prefix, "press-1", "t000")),
                                   timeout=120)[0]
            print(f"\nkill: `docker kill` of the modbus container -> readings resume: "
                  f"{resumed.at - killed:.1f}s")
        finally:
            stack.close()
            sub.close()
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
