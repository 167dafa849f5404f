"""`fieldgate demo`: the whole gateway on one machine with nothing but Python installed.

It copies the example plant (examples/plant/, shipped in the package as gateway/demo_plant/)
to a temporary directory, points every port at a free one and every serial port at a pty
pair the simulator creates there, and starts, in this order:

1. a broker: the local `mosquitto` when one is installed, else amqtt embedded in this process;
2. `fieldgate simulate` for the plant's devices (Modbus TCP and OPC UA), as a child process;
3. the supervisor with the process runtime: the forwarder and one collector per protocol;
4. a live view (rich) of every tag's value, unit, quality and age, fed by an MQTT
   subscription to the broker, updating in place; `--no-view` prints readings as lines.

Ctrl-C (or SIGTERM, or the end of `--duration`) stops everything in reverse order; every
child runs in its own session with PR_SET_PDEATHSIG, so none outlives the demo.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import IO, Any

import yaml

from collectors.core.errors import FieldgateError
from gateway.plan import Policy
from gateway.runtime.common import RunDir
from gateway.runtime.process import ProcessRuntime, child_environment, die_with_parent
from gateway.supervisor import Supervisor, load

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_run(count: int, tries: int = 50) -> int:
    """The first of `count` consecutive free ports (the forwarder's, then the collectors')."""
    for _ in range(tries):
        base = free_port()
        if base + count > 65535:
            continue
        ok = True
        for port in range(base + 1, base + count):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


async def wait_port(port: int, timeout: float = START_TIMEOUT, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s") from None
            await asyncio.sleep(0.05)


# ------------------------------------------------------------------ the plant


# The library each protocol's collector (and simulator) needs: the extra that installs it.
PROTOCOL_LIBRARIES = {"modbus": "pymodbus", "opcua": "asyncua"}


def missing_protocols() -> list[str]:
    return [p for p, lib in PROTOCOL_LIBRARIES.items() if importlib.util.find_spec(lib) is None]


def missing_demo_parts(view: bool, broker_kind: str) -> list[str]:
    """What this run of the demo needs and cannot import: the live view (rich) and the embedded
    broker (amqtt) come with `fieldgate[demo]`, not with the core the images install."""
    missing = []
    if view and importlib.util.find_spec("rich") is None:
        missing.append("the live view needs rich: pip install 'fieldgate[demo]' (or run with --no-view)")
    embedded = broker_kind == "embedded" or (broker_kind == "auto" and find_mosquitto() is None)
    if embedded and importlib.util.find_spec("amqtt") is None:
        why = "" if broker_kind == "embedded" else "mosquitto is not installed and "
        missing.append(f"no broker: {why}the embedded one needs amqtt: pip install 'fieldgate[demo]'"
                       + ("" if broker_kind == "embedded" else " (or install mosquitto)"))
    return missing


def copy_plant(target: Path, broker_port: int, skip: Sequence[str] = ()) -> Path:
    """Copy the packaged demo plant into `target`, with free ports and a local buffer; devices
    of the protocols in `skip` (their extra is not installed) stay out."""
    source = resources.files("gateway") / "demo_plant"
    plant = target / "plant"
    (plant / "devices").mkdir(parents=True)
    config = yaml.safe_load((source / "gateway.yaml").read_text())
    config["mqtt"]["host"], config["mqtt"]["port"] = "127.0.0.1", broker_port
    config["metrics"]["port"] = free_port_run(3)
    config["buffer"]["dir"] = str(target / "buffer")
    config["runtime"] = "process"
    (plant / "gateway.yaml").write_text(
        "# copied from the fieldgate demo plant, with free ports\n" + yaml.safe_dump(config, sort_keys=False)
    )
    for entry in sorted((source / "devices").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        device = yaml.safe_load(entry.read_text())
        if device["protocol"] in skip:
            continue
        if device["protocol"] == "modbus" and "rtu" in device["connection"]:
            # The simulator makes a pty pair at this path: a serial line with nothing attached.
            # A pty has no parity bit, and some kernels (gVisor's) refuse to set one: EINVAL.
            rtu = device["connection"]["rtu"]
            rtu["port"], rtu["parity"] = str(target / Path(rtu["port"]).name), "N"
        elif device["protocol"] == "modbus":
            device["connection"]["tcp"]["port"] = free_port()
        else:
            path = device["endpoint"].split("/", 3)[3:] if device["endpoint"].count("/") > 2 else []
            device["endpoint"] = f"opc.tcp://127.0.0.1:{free_port()}" + ("/" + path[0] if path else "")
        (plant / "devices" / entry.name).write_text(yaml.safe_dump(device, sort_keys=False))
    return plant


def device_endpoints(plant: Path) -> list[int | Path]:
    """Where the simulators must listen (TCP ports, pty paths) before the collectors start."""
    endpoints: list[int | Path] = []
    for file in sorted((plant / "devices").glob("*.yaml")):
        device = yaml.safe_load(file.read_text())
        if device["protocol"] == "modbus" and "rtu" in device["connection"]:
            endpoints.append(Path(device["connection"]["rtu"]["port"]))
        elif device["protocol"] == "modbus":
            endpoints.append(int(device["connection"]["tcp"]["port"]))
        else:
            endpoints.append(int(device["endpoint"].split(":")[2].split("/")[0]))
    return endpoints


def _exists(path: Path) -> bool:
    return os.path.exists(path)  # one stat of a local path: not worth a thread


async def wait_path(path: Path, timeout: float = START_TIMEOUT) -> None:
    for _ in range(int(timeout / 0.05)):
        if _exists(path):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{path} did not appear after {timeout:.0f}s")


# ------------------------------------------------------------------ children and the broker


@contextlib.asynccontextmanager
async def child(argv: list[str], log_file: IO[str], name: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process in its own session that dies with us; SIGTERM, then SIGKILL on exit."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
        start_new_session=True, preexec_fn=die_with_parent, env=child_environment(),
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.warning("%s ignored SIGTERM; killing it", name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found is None and os.access("/usr/sbin/mosquitto", os.X_OK):  # Debian's sbin is not on every PATH
        found = "/usr/sbin/mosquitto"
    return found


@contextlib.asynccontextmanager
async def broker(workdir: Path, log_file: IO[str], kind: str = "auto") -> AsyncIterator[tuple[int, str]]:
    """A broker on a free port: yields (port, what it is)."""
    port = free_port()
    mosquitto = find_mosquitto()
    if kind == "mosquitto" or (kind == "auto" and mosquitto):
        if mosquitto is None:
            raise RuntimeError("mosquitto is not installed")
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        async with child([mosquitto, "-c", str(conf)], log_file, "mosquitto"):
            await wait_port(port)
            yield port, f"mosquitto on 127.0.0.1:{port}"
        return
    async with EmbeddedBroker(port) as embedded:
        yield embedded.port, f"embedded amqtt broker on 127.0.0.1:{port}"


class EmbeddedBroker:
    """amqtt's broker in this process, for machines without Mosquitto (amqtt 0.12 API)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._broker: Any = None

    async def __aenter__(self) -> EmbeddedBroker:
        from amqtt.broker import Broker

        for name in ("amqtt", "transitions"):  # both log every session and state change at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        self._broker = Broker({
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        })
        await self._broker.start()  # listening when this returns (a probe would log a broken session)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._broker.shutdown()


# ------------------------------------------------------------------ what arrives at the broker


@dataclass
class Latest:
    value: Any
    unit: str | None
    quality: str
    ts: float  # source time, epoch seconds
    count: int


class Readings:
    """The latest reading of every tag seen on the broker (bounded by the plant's tags)."""

    def __init__(self, prefix: str, on_reading: Callable[[str, str, Latest], None] | None = None) -> None:
        self.prefix = prefix
        self.latest: dict[tuple[str, str], Latest] = {}
        self.gateway_status = "?"
        self.lock = threading.Lock()
        self._on_reading = on_reading

    def handle(self, topic: str, payload: bytes) -> None:
        rest = topic[len(self.prefix) + 1:] if topic.startswith(self.prefix + "/") else None
        if rest is None:
            return
        if rest == "status":
            self.gateway_status = payload.decode(errors="replace")
            return
        parts = rest.split("/")
        if len(parts) != 2:  # /set and /set/result are not readings
            return
        try:
            data = json.loads(payload)
            ts = datetime.fromisoformat(data["ts"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        key = (parts[0], parts[1])
        with self.lock:
            before = self.latest.get(key)
            reading = Latest(data.get("value"), data.get("unit"), data.get("quality", "?"), ts,
                             (before.count if before else 0) + 1)
            self.latest[key] = reading
        if self._on_reading is not None:
            self._on_reading(*key, reading)

    def devices(self) -> set[str]:
        with self.lock:
            return {device for device, _ in self.latest}


class Subscription:
    """A paho subscriber on its own network thread, feeding `Readings`."""

    def __init__(self, port: int, readings: Readings) -> None:
        import paho.mqtt.client as mqtt

        client_id = f"fieldgate-demo-{os.getpid()}"
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.on_connect = lambda c, *_: c.subscribe(f"{readings.prefix}/#", 0)
        self._client.on_message = lambda _c, _u, msg: readings.handle(msg.topic, bytes(msg.payload))
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def render_table(readings: Readings, services: str, title: str) -> Any:
    from rich.table import Table

    colours = {"good": "green", "uncertain": "yellow", "bad": "bold red"}
    table = Table(title=title, caption=services, expand=False)
    for column, justify in (("device", "left"), ("tag", "left"), ("value", "right"), ("unit", "left"),
                            ("quality", "left"), ("age", "right"), ("readings", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    now = time.time()
    with readings.lock:
        rows = sorted(readings.latest.items())
    for (device, tag), r in rows:
        colour = colours.get(r.quality, "white")
        table.add_row(device, tag, _format_value(r.value), r.unit or "", f"[{colour}]{r.quality}[/{colour}]",
                      f"{max(0.0, now - r.ts):.1f}s", str(r.count))
    return table


def services_line(runtime: ProcessRuntime, readings: Readings) -> str:
    parts = [f"gateway: {readings.gateway_status}"]
    for name, c in sorted(runtime.children().items()):
        state = "exited" if c.exited is not None else (c.health or "running")
        parts.append(f"{name}: {state} (restarts {c.restarts})")
    return "  |  ".join(parts)


# ------------------------------------------------------------------ the demo


async def run_demo(duration: float | None, view: bool, broker_kind: str = "auto",
                   out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    workdir = Path(tempfile.mkdtemp(prefix="fieldgate-demo-"))
    log_path = workdir / "demo.log"
    try:
        with log_path.open("a", buffering=1) as log_file:
            return await _run(workdir, log_file, duration, view, broker_kind, out, stop)
    except (FieldgateError, RuntimeError, TimeoutError, OSError) as exc:
        # The log goes with the temporary directory: show its end, which says why.
        tail = log_path.read_text(errors="replace").splitlines()[-40:] if log_path.exists() else []
        print("\n".join(["--- end of the demo's log ---", *tail, "---"]), file=sys.stderr)
        print(f"fieldgate demo: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        shutil.rmtree(workdir, ignore_errors=True)


async def _run(workdir: Path, log_file: IO[str], duration: float | None, view: bool, broker_kind: str,
               out: IO[str], stop: asyncio.Event) -> int:
    def say(text: str) -> None:
        print(text, file=out if not view else log_file, flush=True)

    parts = missing_demo_parts(view, broker_kind)
    for text in parts:
        print(f"fieldgate demo: {text}", file=sys.stderr)
    if parts:
        return 1
    async with contextlib.AsyncExitStack() as stack:
        port, what = await stack.enter_async_context(broker(workdir, log_file, broker_kind))
        missing = missing_protocols()
        if len(missing) == len(PROTOCOL_LIBRARIES):
            print("fieldgate demo: no collector is installed: pip install 'fieldgate[demo]'", file=sys.stderr)
            return 1
        for protocol in missing:
            print(f"fieldgate demo: {protocol} devices left out: pip install 'fieldgate[{protocol}]' "
                  "adds them", file=out, flush=True)
        plant = copy_plant(workdir, port, missing)
        config, errors = load(plant)
        if config is None:
            print(f"fieldgate demo: the demo plant is not valid:\n{errors}", file=sys.stderr)
            return 1
        print(f"fieldgate demo: broker: {what}; plant: {plant}; logs: {workdir / 'demo.log'}",
              file=out, flush=True)

        files = [str(p) for p in sorted((plant / "devices").glob("*.yaml"))]
        simulator = await stack.enter_async_context(
            child([sys.executable, "-m", "gateway.cli", "simulate", *files], log_file, "simulator"))
        for endpoint in device_endpoints(plant):
            ready = wait_path(endpoint) if isinstance(endpoint, Path) else wait_port(endpoint)
            await _wait_or_die(ready, simulator, "the simulator")

        prefix = (config.mqtt.topic_prefix if config.mqtt.topic_prefix else f"fieldgate/{config.gateway.id}")

        def line(device: str, tag: str, r: Latest) -> None:
            say(f"{device}/{tag} = {_format_value(r.value)}{' ' + r.unit if r.unit else ''} [{r.quality}]")

        readings = Readings(prefix, None if view else line)
        subscription = Subscription(port, readings)
        stack.callback(subscription.close)

        run_dir = RunDir.for_config(plant)
        relay = log_file if view else sys.stderr
        runtime = await stack.enter_async_context(ProcessRuntime(run_dir, printer=say, relay=relay))
        supervisor = Supervisor(plant, runtime, run_dir, runtime.desired(config, plant), Policy(),
                                out=log_file if view else out)
        task = asyncio.create_task(supervisor.run(), name="supervisor")

        async def stop_supervisor() -> None:
            supervisor.stopping.set()
            await task

        stack.push_async_callback(stop_supervisor)
        deadline = None if duration is None else time.monotonic() + duration
        title = f"fieldgate demo: {what}, topics {prefix}/#  (Ctrl-C stops)"
        if view:
            from rich.live import Live

            with Live(render_table(readings, services_line(runtime, readings), title), refresh_per_second=4,
                      transient=False) as live:
                while not await _stopped(stop, task, deadline, 0.25):
                    live.update(render_table(readings, services_line(runtime, readings), title))
            print(file=out)
        else:
            while not await _stopped(stop, task, deadline, 0.5):
                pass
        if task.done() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    seen = sorted(readings.devices())
    print(f"fieldgate demo: stopped; readings seen from {len(seen)} device(s): {', '.join(seen) or 'none'}",
          file=out, flush=True)
    return 0


async def _wait_or_die(waiting: Any, process: asyncio.subprocess.Process, what: str) -> None:
    died = asyncio.ensure_future(process.wait())
    waiter = asyncio.ensure_future(waiting)
    try:
        await asyncio.wait([died, waiter], return_when=asyncio.FIRST_COMPLETED)
        if waiter.done():
            waiter.result()
            return
        raise RuntimeError(f"{what} exited with code {process.returncode}")
    finally:
        for f in (died, waiter):
            f.cancel()
        await asyncio.gather(died, waiter, return_exceptions=True)


async def _stopped(
    stop: asyncio.Event, task: asyncio.Task[None], deadline: float | None, tick: float
) -> bool:
    if stop.is_set() or task.done() or (deadline is not None and time.monotonic() >= deadline):
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), tick)
    return False


def main_demo(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run_demo(args.duration, not args.no_view, getattr(args, "broker", "auto")))
    except KeyboardInterrupt:
        return 130
