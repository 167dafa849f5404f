"""What a live change costs the data: the gap in each device's readings, readings lost, time to live.

    python bench/bench_updates.py                                   # every row: 3.5 min, up to 5 on a busy engine
    python bench/bench_updates.py --only tag-added,image-bad --seconds short

Needs a running engine with the fieldgate images (`.ci/docker.sh`), and mosquitto on the host.
Never pulls or rebuilds an image. It makes, and removes at the end, `fieldgate/collector-modbus:
TAG-bench-good` and `fieldgate/forwarder:TAG-bench-good` (new tags of the :TAG images, TAG being
FIELDGATE_TEST_IMAGE_TAG or 0.1.0, so an update is a real recreate) and `fieldgate/collector-
modbus:TAG-bench-bad` (the :TAG image committed with an entrypoint that sleeps: it runs, never
answers its health check, never turns healthy).
Its gateway id is `bench-<hex>`, so its compose project and containers are
`fieldgate-bench-<hex>-*`.

One stack for all rows, as a plant engineer runs it: a Mosquitto on a free port, two Modbus
TCP devices (`press-1`, `press-2`, a pymodbus server each, in this process) polled every
100 ms by the Modbus collector (`update: start-first`), `fieldgate up DIR --runtime docker`
(network host), and a subscriber to the gateway's topics. Each row applies one change to the
running stack (the rows build on each other in the order below) and watches from `--pre`
seconds before it until `--seconds` after the change is live:

  tag-added      a tag (address 1) added to press-1's device file
  poll-changed   press-2's poll 100ms -> 200ms
  device-added   press-3 (its own server) added to devices/
  device-removed press-3's file removed
  image-good     `fieldgate update DIR modbus --image fieldgate/collector-modbus:TAG-bench-good`
  image-bad      the same to :TAG-bench-bad, `--timeout 20`: rolled back to the previous image
  forwarder      `fieldgate update DIR forwarder --image fieldgate/forwarder:TAG-bench-good`

Columns, for each of press-1 and press-2 (the devices that are there for the whole row):

  live      seconds from the change (the file written, `fieldgate update` started) until it is
            live: the new tag's / the new device's first reading at the subscriber, press-2's
            readings 200 ms apart (the first of three such gaps), press-3's last reading,
            `fieldgate update` returned (healthy on the new image, or rolled back: exit 1).
            Limited by the subscriber's clock and by `fieldgate update`'s own status polling
            (0.5 s).
  gap ts    the widest gap between consecutive readings of the device's counter tag, by the
            reading's `ts` (when the collector polled it); what the plant lost sight of. Its
            floor is the poll period (100 ms; 200 ms for press-2 after poll-changed).
  gap arr   the same by arrival at the subscriber; wider than `gap ts` when readings were held
            (hand-off or forwarder buffer) and delivered late. Includes broker and subscriber
            scheduling on this 2-core machine (tens of ms).
  missed    polls that did not happen: over consecutive readings by `ts`, round(gap / period) - 1
            summed. Limited by poll jitter (a poll late by half a period counts as one missed).
  lost      readings polled but never delivered: each device's server adds one to its counter
            register (holding 0) on every read of it, so the counter values missing from the
            subscriber's sequence were read by a collector and not published. Exact, except a
            read whose answer never reached the collector (counted as lost too).
  dup       readings delivered twice (the same counter value again): QoS 1 redelivery or two
            collectors publishing one poll.
Under each row: what `{prefix}/status` carried during the row's window (a forwarder restart
shows `offline online`; the broker's will for a lost session shows as `offline` too), and the
MQTT sessions the forwarder opened meanwhile (CONNECTs in Mosquitto's log; 0: the session went on).
Prints one row per change; asserts nothing.

Measured before issue 12's items 2-4 (3 runs on the 2-core machine, other work running): gap ts
(both devices) 1.1-1.2 s for a tag added (the forwarder and the collector recreated: `offline
online` on the status topic), 0.6-0.8 s poll changed, 0.7-1.2 s device added, 1.1-1.9 s device
removed, 0.6-0.7 s good collector image (start-first runs as stop-first under network host),
19.6-20.7 s bad image (the old container stopped first, rolled back after the 20 s timeout),
0.1-0.2 s forwarder image (no poll missed, readings held and delivered 0.7-1.1 s late); 0
lost and 0 duplicates in every row.

After issue 12 (2 runs, images of that tree): gap ts 0.10-0.11 s for press-1 in every row and
the poll period for press-2 (0.20 s once it polls every 200 ms); 0 missed, 0 lost, 0 duplicates
in every row; no forwarder CONNECT and a silent status topic for every config change; the bad
image rolled back after its 20 s without touching the running collector; the forwarder image
row still says `offline online` once and delivers 0.8-0.95 s late, nothing lost.

The forwarder taking a catalog change in place (issue 12 item 2, its side): tag added, 4 runs
with images of that tree: the status topic silent, 0 forwarder CONNECTs, gap arr 0.10-0.20 s
(before, 3 runs: `offline online`, 1 CONNECT, gap arr 0.79-1.51 s; gap ts 0.10-0.15 s either way).
The forwarder image row: `offline online` once, 1 CONNECT, 0 lost, 0 duplicates, before and after.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from gateway.compose import project_name  # noqa: E402
from tests.docker.stack import Stack, fieldgate, gateway_yaml, image  # noqa: E402
from tests.support.broker import Mosquitto  # noqa: E402
from tests.support.counting import Devices  # noqa: E402
from tests.support.mqtt import Message, Subscriber  # noqa: E402

ROWS = ("tag-added", "poll-changed", "device-added", "device-removed", "image-good", "image-bad", "forwarder")
MODBUS_IMAGE = image("collector-modbus")
FORWARDER_IMAGE = image("forwarder")
# Named after the images they are made from: two runs on one engine (of different
# FIELDGATE_TEST_IMAGE_TAGs) must not retag or remove each other's.
GOOD = f"{MODBUS_IMAGE}-bench-good"
BAD = f"{MODBUS_IMAGE}-bench-bad"
FORWARDER_GOOD = f"{FORWARDER_IMAGE}-bench-good"
BAD_TIMEOUT = 20.0


def device_yaml(name: str, port: int, poll: str = "100ms", extra_tag: bool = False) -> str:
    """One counter register (tests.docker.stack.modbus_tcp_device has a second tag and simulate keys
    for `fieldgate simulate`; here the device is this process's counting server)."""
    text = f"""\
name: {name}
protocol: modbus
connection:
  tcp: {{host: 127.0.0.1, port: {port}}}
unit: 1
poll: {poll}
tags:
  - name: counter
    table: holding
    address: 0
    type: uint16
"""
    if extra_tag:
        text += "  - name: level\n    table: holding\n    address: 1\n    type: uint16\n"
    return text


class BenchStack(Stack):
    """tests.docker.stack.Stack under a `bench-` gateway id, with start-first for the collector."""

    def __init__(self, workdir: Path, broker_port: int) -> None:
        super().__init__(workdir, broker_port)
        self.gateway_id = f"bench-{uuid.uuid4().hex[:8]}"
        self.project = project_name(self.gateway_id)
        text = gateway_yaml(self.gateway_id, broker_port, self.metrics_port)
        (self.plant / "gateway.yaml").write_text(
            text.replace("update: stop-first", "update: start-first", 1))  # modbus: the TCP collector


@dataclass
class Figures:
    gap_ts: float = 0.0
    gap_arrival: float = 0.0
    missed: int = 0
    lost: int = 0
    dup: int = 0
    count: int = 0


@dataclass
class Row:
    change: str
    live: float | None
    live_means: str
    devices: dict[str, Figures] = field(default_factory=dict)
    note: str = ""
    status: list[str] = field(default_factory=list)
    connects: int = 0  # MQTT sessions the forwarder opened at the broker during the row


def ts_of(message: Message) -> float:
    return datetime.fromisoformat(message.json()["ts"].replace("Z", "+00:00")).timestamp()


def figures(messages: list[Message], period: Callable[[float], float]) -> Figures:
    """The gap/missed/lost/dup figures of one device's counter readings (see the docstring)."""
    out = Figures(count=len(messages))
    if len(messages) < 2:
        return out
    by_arrival = sorted(m.at for m in messages)
    out.gap_arrival = max(b - a for a, b in itertools.pairwise(by_arrival))
    points = sorted((ts_of(m), int(m.json()["value"])) for m in messages)
    stamps = [t for t, _ in points]
    for a, b in itertools.pairwise(stamps):
        out.gap_ts = max(out.gap_ts, b - a)
        out.missed += max(0, round((b - a) / period(b)) - 1)
    values = sorted(v for _, v in points)
    seen: set[int] = set()
    for value in values:
        if value in seen:
            out.dup += 1
        seen.add(value)
    ordered = sorted(seen)
    out.lost = sum(b - a - 1 for a, b in itertools.pairwise(ordered))
    return out


class Bench:
    def __init__(
        self, stack: BenchStack, sub: Subscriber, devices: Devices, pre: float, post: float, broker: Mosquitto
    ) -> None:
        self.stack = stack
        self.broker = broker
        self.sub = sub
        self.devices = devices
        self.pre = pre
        self.post = post
        self.ports: dict[str, int] = {}
        self.files: dict[str, Path] = {}
        self.period: dict[str, float] = {"press-1": 0.1, "press-2": 0.1}
        self.period_changed_at: float = float("inf")

    def connects(self) -> int:
        """CONNECTs the broker accepted from the forwarder so far (Mosquitto logs each one)."""
        return self.broker.log.read_text(errors="replace").count(f" as fieldgate-{self.stack.gateway_id} (")

    def period_at(self, device: str) -> Callable[[float], float]:
        """The device's poll period at a reading's ts (press-2's changes at poll-changed)."""
        changed_at, new = self.period_changed_at, self.period[device]
        return lambda ts: new if ts >= changed_at else 0.1

    def topic(self, device: str, tag: str = "counter") -> str:
        return f"{self.stack.topic_prefix}/{device}/{tag}"

    def add_device(self, name: str) -> None:
        self.ports[name] = self.devices.start(name)
        self.files[name] = self.stack.add_device(name, device_yaml(name, self.ports[name]), simulate=False)

    def wait_reading(self, device: str, since: float, tag: str = "counter", timeout: float = 180) -> Message:
        topic = self.topic(device, tag)
        return self.sub.wait_for(lambda m: m.topic == topic and m.at > since, timeout=timeout)[0]

    def settle(self) -> None:
        """Both devices publishing again before the next row starts its window."""
        now = time.time()
        for device in ("press-1", "press-2"):
            self.wait_reading(device, now, timeout=180)
        time.sleep(self.pre)

    def measure(self, change: str, apply: Callable[[], tuple[float, str, str]]) -> Row:
        self.settle()
        start = time.time() - self.pre
        connects = self.connects()
        changed = time.time()
        live_at, live_means, note = apply()
        live = live_at - changed if live_at == live_at else None  # NaN: never live
        time.sleep(self.post)
        end = time.time()
        row = Row(change, live, live_means, note=note)
        status = f"{self.stack.topic_prefix}/status"
        row.connects = self.connects() - connects
        row.status = [m.payload.decode(errors="replace") for m in list(self.sub.messages)
                      if m.topic == status and start <= m.at <= end]
        for device in ("press-1", "press-2"):
            topic = self.topic(device)
            messages = [m for m in list(self.sub.messages) if m.topic == topic and start <= m.at <= end]
            row.devices[device] = figures(messages, self.period_at(device))
        return row

    # --- the changes -------------------------------------------------------------------------------

    def tag_added(self) -> tuple[float, str, str]:
        edited = time.time()
        self.files["press-1"].write_text(device_yaml("press-1", self.ports["press-1"], extra_tag=True))
        first = self.wait_reading("press-1", edited, tag="level", timeout=180)
        return first.at, "press-1/level's first reading", ""

    def poll_changed(self) -> tuple[float, str, str]:
        edited = time.time()
        self.files["press-2"].write_text(device_yaml("press-2", self.ports["press-2"], poll="200ms"))
        self.period["press-2"] = 0.2
        topic = self.topic("press-2")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            stamps = sorted((ts_of(m), m.at) for m in list(self.sub.messages)
                            if m.topic == topic and m.at > edited)
            for i in range(len(stamps) - 3):
                if all(0.15 <= stamps[j + 1][0] - stamps[j][0] <= 0.25 for j in range(i, i + 3)):
                    self.period_changed_at = stamps[i][0]
                    return stamps[i + 1][1], "press-2 readings 200 ms apart", ""
            time.sleep(0.2)
        return float("nan"), "press-2 readings 200 ms apart", "never seen"

    def device_added(self) -> tuple[float, str, str]:
        port = self.devices.start("press-3")
        self.ports["press-3"] = port
        edited = time.time()
        self.files["press-3"] = self.stack.add_device("press-3", device_yaml("press-3", port), simulate=False)
        first = self.wait_reading("press-3", edited, timeout=180)
        return first.at, "press-3's first reading", ""

    def device_removed(self) -> tuple[float, str, str]:
        if "press-3" not in self.files:  # device-added did not run: add it first, untimed
            self.device_added()
            self.settle()
        removed = time.time()
        self.files.pop("press-3").unlink()
        topic = self.topic("press-3")
        # Live: no press-3 reading for 3 s; the time is that of its last reading.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            last = max((m.at for m in list(self.sub.messages) if m.topic == topic), default=removed)
            if time.time() - last > 3.0:
                return max(last, removed), "press-3's last reading", ""
            time.sleep(0.2)
        return float("nan"), "press-3's last reading", "still publishing"

    def update(self, service: str, image: str, timeout: float) -> tuple[float, str, str]:
        result = subprocess.run(
            # --keep-images: never let the cleanup touch the :0.1.0 images the engine shares.
            fieldgate("update", str(self.stack.plant), service, "--image", image, "--timeout", str(timeout),
                      "--keep-images"),
            capture_output=True, text=True, cwd=ROOT, timeout=timeout * 3 + 120)
        done = time.time()
        last = (result.stdout + result.stderr).strip().splitlines()[-1:] or [""]
        means = "`fieldgate update` returned" + (" (rolled back)" if result.returncode else " (healthy)")
        return done, means, f"exit {result.returncode}: {last[0]}"


def make_images(client: docker.DockerClient) -> list[str]:
    """The bench's images; returns the tags made (removed by remove_images)."""
    made: list[str] = []
    for source, target in ((MODBUS_IMAGE, GOOD), (FORWARDER_IMAGE, FORWARDER_GOOD)):
        repository, tag = target.rsplit(":", 1)
        client.images.get(source).tag(repository, tag)
        made.append(target)
    repository, tag = BAD.rsplit(":", 1)
    holder = client.containers.create(MODBUS_IMAGE, name=f"bench-bad-{uuid.uuid4().hex[:8]}")
    try:
        # It starts and runs, but never serves /metrics: the health check never passes.
        holder.commit(repository=repository, tag=tag, changes=[
            'ENTRYPOINT ["python3", "-c", "import time; time.sleep(1e9)"]'])
        made.append(BAD)
    finally:
        holder.remove(force=True)
    return made


def remove_images(client: docker.DockerClient, tags: list[str]) -> None:
    """Untag what make_images made (by tag, never forced); a busy engine gets three tries."""
    for tag in tags:
        for attempt in range(3):
            try:
                client.images.remove(tag, noprune=True)
                break
            except docker.errors.ImageNotFound:
                break
            except Exception as exc:  # an engine timeout is a requests error
                if attempt == 2:
                    print(f"bench: could not remove {tag} ({exc}); remove it with `docker rmi {tag}`",
                          file=sys.stderr)
                time.sleep(5)


def cleanup(what: str, step: Callable[[], object]) -> None:
    """One cleanup step; its failure is reported and the next steps still run."""
    try:
        step()
    except Exception as exc:
        print(f"bench: cleanup of {what} failed: {exc}", file=sys.stderr)


def seconds(text: str) -> float:
    return {"short": 2.0}.get(text) or float(text)


def print_rows(rows: list[Row]) -> None:
    head = (f"{'change':<15} {'live s':>7}  {'device':<8} {'gap ts':>7} {'gap arr':>7} "
            f"{'missed':>6} {'lost':>5} {'dup':>4} {'n':>5}  live means / note")
    print(head)
    print("-" * len(head))
    for row in rows:
        live = f"{row.live:.2f}" if row.live is not None else "never"
        for i, (device, f) in enumerate(row.devices.items()):
            lead = f"{row.change:<15} {live:>7}" if i == 0 else f"{'':<15} {'':>7}"
            tail = (f"{row.live_means}{'; ' + row.note if row.note else ''}" if i == 0
                    else f"status topic: {' '.join(row.status) or '-'}; forwarder CONNECTs: {row.connects}"
                    if i == 1 else "")
            print(f"{lead}  {device:<8} {f.gap_ts:>7.2f} {f.gap_arrival:>7.2f} {f.missed:>6} {f.lost:>5} "
                  f"{f.dup:>4} {f.count:>5}  {tail}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows of: {', '.join(ROWS)}")
    parser.add_argument("--seconds", type=seconds, default=8.0,
                        help="seconds watched after a change is live ('short': 2)")
    parser.add_argument("--pre", type=float, default=3.0, help="seconds watched before each change")
    args = parser.parse_args(argv)
    wanted = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {unknown}; allowed: {', '.join(ROWS)}")
    selected = [r for r in ROWS if r in wanted]

    client = docker.from_env(timeout=60)
    made: list[str] = []
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-updates-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work).start()
        devices = Devices()
        stack: BenchStack | None = None
        sub: Subscriber | None = None
        try:
            made = make_images(client) if {"image-good", "image-bad", "forwarder"} & set(selected) else []
            stack = BenchStack(work / "stack", broker.port)
            sub = Subscriber(broker.host, broker.port, topics=f"{stack.topic_prefix}/#")
            bench = Bench(stack, sub, devices, args.pre, args.seconds, broker)
            bench.add_device("press-1")
            bench.add_device("press-2")
            started = time.time()
            stack.up()
            bench.wait_reading("press-1", started, timeout=240)
            bench.wait_reading("press-2", started, timeout=60)
            print(f"stack {stack.project}: first reading {time.time() - started:.1f}s after `fieldgate up`; "
                  f"rows: {', '.join(selected)}", flush=True)
            changes: dict[str, Callable[[], tuple[float, str, str]]] = {
                "tag-added": bench.tag_added,
                "poll-changed": bench.poll_changed,
                "device-added": bench.device_added,
                "device-removed": bench.device_removed,
                "image-good": lambda: bench.update("modbus", GOOD, 120),
                "image-bad": lambda: bench.update("modbus", BAD, BAD_TIMEOUT),
                "forwarder": lambda: bench.update("forwarder", FORWARDER_GOOD, 120),
            }
            for name in selected:
                rows.append(bench.measure(name, changes[name]))
                print(f"  row done: {name}", flush=True)
        finally:
            if rows:  # before the cleanup, which a busy engine can make slow
                print()
                print_rows(rows)
            if stack is not None:
                cleanup(f"the stack {stack.project}", stack.close)
            if sub is not None:
                cleanup("the subscriber", sub.close)
            cleanup("the Modbus servers", devices.close)
            cleanup("Mosquitto", broker.stop)
            remove_images(client, made)
            client.close()
    return 0 if len(rows) == len(selected) else 1


if __name__ == "__main__":
    sys.exit(main())
