"""Fuzzing the forwarder's command topics on a running plant (issue 9: item 5's "nothing is written
that should not be", items 2 and 10).

A pymodbus server (in this process, so every write request it gets is recorded), the real
Modbus collector and the real forwarder as processes on the slices `fieldgate up` renders, a
real Mosquitto. Hypothesis publishes `/set` payloads (json format) and Sparkplug DCMD/NCMD
payloads (valid protobuf with random metrics, datatypes and values, and random bytes) through
the broker, as any broker client could, while the plant runs. Then:

- nothing crashed: both processes run, and the forwarder logged no unexpected exception (the
  Modbus collector's are printed: on the code this was written on, a `/set` of 1e308 to a
  scaled register raised OverflowError in its codec, answered as a failed write; its write
  checks are another change of issue 9);
- the forwarder stayed healthy: every /healthz during the fuzz answered 200;
- nothing was written that should not be: no write request reached a register or coil of a
  tag that is not `writable` (recorded by the server itself), and those registers still hold
  their values;
- good readings kept being published: readings/s at the subscriber before and during.

The figures are printed (run with -s to see them), e.g.
`fuzz /set: 400 payloads tried, crashes 0, unexpected writes 0, ..., readings/s 61.0 before, 55.2 during`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from collectors.forwarder import sparkplug_b_pb2 as pb
from gateway.compose import slice_text
from gateway.config import collector_slices, forwarder_slice, load_config
from tests.support import sparkplug as sp
from tests.support.broker import Mosquitto, free_port
from tests.support.entry import start_entry_point, stop_entry_point
from tests.support.http import http_get
from tests.support.mqtt import Message, Subscriber

pytestmark = pytest.mark.security

NODE, GROUP = "line3", "plant1"
EXAMPLES = 1500
WINDOW = 3.0  # seconds of readings counted before the fuzz

# (name, table, address, type, writable); scaled and plain, registers and coils.
TAGS: list[tuple[str, str, int, str, bool]] = [
    ("pressure", "holding", 0, "uint16", False),
    ("limit", "holding", 1, "uint16", True),
    ("flow", "holding", 2, "int16", False),
    ("mode", "holding", 3, "int16", True),
    ("temperature", "holding", 4, "float32", False),
    ("run", "coil", 0, "bool", True),
    ("door", "coil", 1, "bool", False),
]
INITIAL = {("holding", 0): 20000, ("holding", 1): 15000, ("holding", 2): 7, ("holding", 3): 1,
           ("holding", 4): 0x41AC, ("holding", 5): 0, ("coil", 0): True, ("coil", 1): True}
FC_READ = {"coil": 1, "holding": 3}
FC_TABLE = {5: "coil", 15: "coil", 6: "holding", 16: "holding"}
NAMES = [name for name, *_ in TAGS]


def protected() -> set[tuple[str, int]]:
    """(table, address) of every register or coil of a tag that is not writable."""
    out: set[tuple[str, int]] = set()
    for _, table, address, kind, writable in TAGS:
        if not writable:
            out |= {(table, address + i) for i in range(2 if kind == "float32" else 1)}
    return out


@dataclass
class Plant:
    subscriber: Subscriber
    modbus: ModbusTcpServer
    metrics_port: int
    procs: list[tuple[Any, Path]]
    fmt: str
    writes: list[tuple[str, int, int]] = field(default_factory=list)  # (table, address, count) asked

    def readings_between(self, start: float, end: float) -> int:
        with self.subscriber._lock:
            messages = [m for m in self.subscriber.messages if start <= m.at < end]
        return sum(self._readings(m) for m in messages)

    def _readings(self, message: Message) -> int:
        if self.fmt == "json":
            return int(message.topic.startswith("fieldgate/line3/press-1/") and "/set" not in message.topic)
        if message.topic == f"spBv1.0/{GROUP}/DDATA/{NODE}/press-1":
            return len(sp.decode(message.payload).metrics)
        return 0

    def crashes(self) -> list[str]:
        """Processes that ended, and unexpected exceptions the forwarder logged (a traceback)."""
        out = [f"{proc.args[2]} exited with {proc.poll()}" for proc, _ in self.procs if proc.poll() is not None]
        return out + self.tracebacks("forwarder")

    def tracebacks(self, name: str) -> list[str]:
        """The last line of each traceback in a component's log (the exception)."""
        log = next(log for _, log in self.procs if log.name == f"{name}.log")
        lines = log.read_text(errors="replace").splitlines()
        out = []
        for i, line in enumerate(lines):
            if line.startswith("Traceback"):
                end = next((j for j in range(i + 1, len(lines)) if not lines[j].startswith(" ")), len(lines) - 1)
                out.append(f"{name}: {lines[end]}")
        return out

    async def protected_values(self) -> dict[tuple[str, int], Any]:
        out = {}
        for table, address in sorted(protected()):
            (out[table, address],) = await self.modbus.async_getValues(1, FC_READ[table], address, 1)
        return out


async def start_plant(tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, fmt: str) -> AsyncIterator[Plant]:
    plant_writes: list[tuple[str, int, int]] = []

    async def record(function_code: int, start_address: int, address: int, count: int,
                     current: list[int], set_values: list[int] | list[bool] | None) -> None:
        if set_values is not None and function_code in FC_TABLE:
            plant_writes.append((FC_TABLE[function_code], address, count))

    blocks = ([SimData(0, count=16, values=False, datatype=DataType.BITS)],
              [SimData(0, count=16, values=False, datatype=DataType.BITS)],
              [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
              [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)])
    modbus_port = free_port()
    modbus = ModbusTcpServer([SimDevice(id=1, simdata=blocks, action=record)], address=("127.0.0.1", modbus_port))
    await modbus.serve_forever(background=True)
    for (table, address), value in INITIAL.items():
        await modbus.async_setValues(1, {"coil": 5, "holding": 6}[table], address, [value])
    plant_writes.clear()

    metrics_port = free_port()
    plant_dir = tmp_path / "plant"
    (plant_dir / "devices").mkdir(parents=True)
    (plant_dir / "gateway.yaml").write_text(yaml.safe_dump({
        "gateway": {"id": NODE, "group": GROUP},
        "mqtt": {"host": broker.host, "port": broker.port, "format": fmt, "keepalive": "5s"},
        "buffer": {"dir": str(tmp_path / "buffer")},
        "metrics": {"port": metrics_port},
        "runtime": "process",
    }))
    tags = [{"name": name, "table": table, "address": address, "type": kind, "writable": writable,
             **({"scale": 0.01} if name in ("pressure", "limit") else {})}
            for name, table, address, kind, writable in TAGS]
    (plant_dir / "devices" / "press-1.yaml").write_text(yaml.safe_dump({
        "name": "press-1", "protocol": "modbus", "poll": "100ms", "timeout": "500ms",
        "connection": {"tcp": {"host": "127.0.0.1", "port": modbus_port}}, "tags": tags,
    }))
    config = load_config(plant_dir)
    socket = tmp_path / "handoff.sock"
    slices = {"forwarder": forwarder_slice(config, socket),
              **collector_slices(config, socket, tmp_path / "state", None)}
    procs: list[tuple[Any, Path]] = []
    try:
        for name, module in (("forwarder", "collectors.forwarder"), ("modbus", "collectors.modbus")):
            file = tmp_path / f"{name}.yaml"
            file.write_text(slice_text(slices[name]))
            log = tmp_path / f"{name}.log"
            procs.append((start_entry_point(module, file, log), log))
        plant = Plant(subscriber, modbus, metrics_port, procs, fmt)
        plant.writes = plant_writes
        yield plant
    finally:
        for proc, log in reversed(procs):
            stop_entry_point(proc, log)
        await modbus.shutdown()


# --------------------------------------------------------------------------- payloads

names = st.one_of(st.sampled_from(NAMES), st.sampled_from(["nosuch", "status", ""]),
                  # Mosquitto drops a client that publishes to a topic with control characters
                  # or non-characters (MQTT 3.1.1, 1.5.3): none of them in the topic names.
                  st.text(st.characters(blacklist_characters="/+#", blacklist_categories=["Cs", "Cc", "Co", "Cn"]),
                          max_size=12))
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
# JSON texts orjson does not write: numbers past double or 64 bits, NaN, lone surrogates, depth.
ODD_JSON = [b'{"value": 1e308}', b'{"value": -1e308}', b'{"value": 1e400}', b'{"value": NaN}',
            b'{"value": 123456789012345678901234567890}', b'{"value": "\\ud800"}', b'{"value": 2, "id": 3}',
            b'{"value": true, "id": null}', b'{"value": ' + b"[" * 500 + b"]" * 500 + b"}",
            b'{"value": "' + b"x" * 70_000 + b'"}', b"[1, 2]", b'"value"', b"", b"\xff\xfe"]
plausible = st.one_of(st.booleans(), st.integers(0, 600), st.integers(-70000, 70000), st.floats(-1e6, 1e6),
                      st.sampled_from(
    [0, 1, 2, -1, 655.35, 655.36, 1e308, -0.0, "1", "true", None]))


def mostly(usual: str | st.SearchStrategy[str], other: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """`usual` 4 times in 5, else `other` (one_of would weigh each of other's branches as much)."""
    first = st.just(usual) if isinstance(usual, str) else usual
    return st.integers(0, 4).flatmap(lambda n: first if n else other)


set_payloads = st.one_of(
    st.builds(lambda v, i: orjson.dumps({"value": v, "id": i}), plausible, st.text(max_size=8)),
    st.builds(lambda v, i: orjson.dumps({"value": v, "id": i}), json_values,
              st.one_of(st.text(max_size=20), st.integers(-(2**63), 2**63 - 1), st.none())),
    st.builds(lambda body: orjson.dumps(body), json_values),
    st.sampled_from(ODD_JSON),
    st.binary(max_size=200),
)

VALUE_FIELDS: list[tuple[str, st.SearchStrategy[Any]]] = [
    ("int_value", st.integers(0, 2**32 - 1)), ("long_value", st.integers(0, 2**64 - 1)),
    ("float_value", st.floats(width=32)), ("double_value", st.floats()), ("boolean_value", st.booleans()),
    ("string_value", st.text(max_size=30)), ("bytes_value", st.binary(max_size=30)),
]


@st.composite
def metrics(draw: st.DrawFn) -> pb.Payload.Metric:
    metric = pb.Payload.Metric()
    if draw(st.booleans()):
        metric.name = draw(st.one_of(st.sampled_from([*NAMES, "Node Control/Rebirth"]), st.text(max_size=12)))
    if draw(st.booleans()):
        metric.alias = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        metric.datatype = draw(st.integers(0, 40))
    if draw(st.booleans()):
        metric.timestamp = draw(st.integers(0, 2**64 - 1))
    metric.is_null = draw(st.integers(0, 9)) == 0
    name, values = draw(st.sampled_from(VALUE_FIELDS))
    setattr(metric, name, draw(values))
    return metric


@st.composite
def spb_payloads(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=200))  # not protobuf at all, or protobuf of anything
    payload = pb.Payload(timestamp=draw(st.integers(0, 2**64 - 1)))
    if draw(st.booleans()):
        payload.seq = draw(st.integers(0, 2**64 - 1))
    payload.metrics.extend(draw(st.lists(metrics(), max_size=6)))
    return payload.SerializeToString()


# --------------------------------------------------------------------------- the runs


async def measure(plant: Plant, fuzz: Callable[[], int], label: str) -> None:
    loop = asyncio.get_running_loop()

    async def healthy() -> bool:
        try:
            return (await http_get(plant.metrics_port, "/healthz"))[0] == 200
        except OSError:
            return False

    # The plant is up: readings flow and /healthz is 200.
    deadline = loop.time() + 30
    while not (plant.readings_between(0, time.time()) > 20 and await healthy()):
        assert loop.time() < deadline, f"the plant did not come up: {plant.crashes()}"
        await asyncio.sleep(0.2)
    before_values = await plant.protected_values()
    start = time.time()
    await asyncio.sleep(WINDOW)
    before = plant.readings_between(start, time.time()) / (time.time() - start)

    unhealthy = 0
    checks = 0
    fuzzing = asyncio.ensure_future(asyncio.to_thread(fuzz))
    fuzz_start = time.time()
    while not fuzzing.done():
        checks += 1
        unhealthy += not await healthy()
        await asyncio.wait([fuzzing], timeout=0.5)
    tried = fuzzing.result()
    fuzz_end = time.time()
    during = plant.readings_between(fuzz_start, fuzz_end) / (fuzz_end - fuzz_start)
    await asyncio.sleep(1.0)  # what the last payloads caused has happened
    unhealthy += not await healthy()
    after = plant.readings_between(fuzz_end, time.time() + 1)
    crashes = plant.crashes()
    unexpected = [w for w in plant.writes if any((w[0], w[1] + i) in protected() for i in range(w[2]))]
    changed = {k: (v, before_values[k]) for k, v in (await plant.protected_values()).items() if v != before_values[k]}
    _, metrics = await http_get(plant.metrics_port, "/metrics")
    routed = {name: value for line in metrics.splitlines() if not line.startswith("#")
              for name, value in [line.rsplit(" ", 1)] if "writes" in name or "refused" in name}
    collector_errors = plant.tracebacks("modbus")
    log = plant.procs[0][1].read_text(errors="replace")
    reasons = Counter(re.sub(r"['\d].*", "", why).strip() for why in re.findall(r"refused: (.{0,60})", log))
    print(f"\nfuzz {label}: {tried} payloads tried in {fuzz_end - fuzz_start:.1f}s, crashes {len(crashes)}, "
          f"unexpected writes {len(unexpected)}, protected registers changed {len(changed)}, "
          f"unhealthy answers {unhealthy} of {checks + 1}, write requests at the device {len(plant.writes)} "
          f"(all to writable tags), readings/s {before:.1f} before, {during:.1f} during; forwarder {routed}; "
          f"exceptions the Modbus collector logged while refusing a write: {sorted(set(collector_errors))}; "
          f"refusals the forwarder logged: {reasons.most_common(6)}")
    assert not crashes, crashes
    assert not unexpected and not changed, (unexpected, changed)
    assert unhealthy == 0
    assert during >= 0.25 * before and after > 0, (before, during, after)


@pytest.fixture
async def json_plant(tmp_path: Path, broker: Mosquitto, subscriber: Subscriber) -> AsyncIterator[Plant]:
    async for plant in start_plant(tmp_path, broker, subscriber, "json"):
        yield plant


@pytest.fixture
async def sparkplug_plant(tmp_path: Path, broker: Mosquitto, subscriber: Subscriber) -> AsyncIterator[Plant]:
    async for plant in start_plant(tmp_path, broker, subscriber, "sparkplug"):
        yield plant


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))


async def test_fuzzed_set_payloads_write_nothing_they_should_not_and_publishing_goes_on(json_plant: Plant) -> None:
    tried = [0]

    @FUZZ
    @given(device=mostly("press-1", names), tag=mostly(st.sampled_from(NAMES), names), payload=set_payloads)
    def fuzz(device: str, tag: str, payload: bytes) -> None:
        topic = f"fieldgate/{NODE}/{device}/{tag}/set"
        json_plant.subscriber.publish(topic, payload, qos=0)
        tried[0] += 1

    def run() -> int:
        fuzz()
        return tried[0]

    await measure(json_plant, run, "/set")
    # The forwarder answered: every refusal on /set/result is short (item 10).
    with json_plant.subscriber._lock:
        answers = [m for m in json_plant.subscriber.messages if m.topic.endswith("/set/result")]
    assert answers and max(len(m.payload) for m in answers) < 1024


async def test_fuzzed_sparkplug_commands_write_nothing_they_should_not_and_publishing_goes_on(
    sparkplug_plant: Plant,
) -> None:
    tried = [0]
    base = f"spBv1.0/{GROUP}"

    @FUZZ
    @given(topic=st.one_of(st.just(f"{base}/DCMD/{NODE}/press-1"), st.just(f"{base}/NCMD/{NODE}"),
                           st.builds(lambda d: f"{base}/DCMD/{NODE}/{d}", names)),
           payload=spb_payloads())
    def fuzz(topic: str, payload: bytes) -> None:
        sparkplug_plant.subscriber.publish(topic, payload, qos=0)
        tried[0] += 1

    def run() -> int:
        fuzz()
        return tried[0]

    await measure(sparkplug_plant, run, "DCMD/NCMD")
    log = sparkplug_plant.procs[0][1].read_text(errors="replace")
    assert not re.search(r"Sparkplug: DCMD .{200}", log), "a refusal logged a long echo"


def test_the_fuzzer_would_see_a_write_to_a_protected_register() -> None:
    """The check itself: a write request to a non-writable tag's register is an unexpected write."""
    # float32 `temperature` spans holding 4 and 5: both protected.
    assert ("holding", 0) in protected() and ("holding", 5) in protected() and ("coil", 1) in protected()
    assert ("holding", 1) not in protected() and ("coil", 0) not in protected()
