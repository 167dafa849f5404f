"""The process runtime: executes the planner's steps with local child processes.

Each service is one child: `python -m collectors.forwarder --config F` and one
`python -m collectors.<protocol> --config F` per protocol in use. The runtime writes each
service's config slice just before starting it, relays the child's stderr/stdout prefixed
with the service name (`modbus | ...`), and polls the child's `/healthz` and `/metrics` on
its metrics port. It prints one status line per service whenever that service's state or
health changes.

Children run in their own session, so a Ctrl-C in the terminal reaches only the supervisor,
which stops them in order (collectors first, the forwarder last: SIGTERM, a grace period,
then SIGKILL). On Linux each child also gets SIGTERM from the kernel if the supervisor
itself dies (`PR_SET_PDEATHSIG`), so even kill -9 of the supervisor leaves nothing behind.

`start-first` updates run as stop-first here: two processes of one collector would fight
over its metrics port and, for Modbus RTU, over the serial port that only one owner may
hold (SPEC.md: one owner per serial port). The docker runtime honours start-first.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hmac
import json
import os
import secrets
import signal
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from gateway.plan import (
    FORWARDER,
    Health,
    Observed,
    Recreate,
    Remove,
    Restart,
    ServiceSpec,
    Start,
    State,
    Step,
    Stop,
    Wait,
    config_hash,
    stop_order,
)

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

# Generous: the forwarder spills its in-memory buffer to disk on SIGTERM.
STOP_TIMEOUT = 10.0
HEALTH_INTERVAL = 1.0
METRICS_INTERVAL = 5.0
HTTP_TIMEOUT = 2.0
# Linux limits a Unix socket path to 108 bytes (sun_path), with the terminating NUL.
MAX_SOCKET_PATH = 100

_PR_SET_PDEATHSIG = 1


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The supervisor's environment, with the import root of the running `collectors` first on
    PYTHONPATH: children run the very code the supervisor runs, installed or from a checkout."""
    import collectors

    env = dict(os.environ if base is None else base)
    root = str(Path(collectors.__file__).resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    return env


def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


# Loaded here, in the parent: the child between fork and exec must not take the loader's lock.
_LIBC = _libc() if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the supervisor dies, however it dies."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# ------------------------------------------------------------------ the run directory


@dataclass(frozen=True)
class RunDir:
    """Where the process runtime keeps what it generates (default `DIR/.fieldgate`).

    run/<service>.yaml  config slices (generated, do not edit)
    run/status.json     what `fieldgate status` reads, rewritten atomically by `up`
    run/supervisor.lock held by the running supervisor, so two cannot run on one DIR
    state/              collectors' state that must survive restarts
    buffer/             the forwarder's store-and-forward buffer (unless gateway.yaml sets buffer.dir)
    handoff/handoff.sock the hand-off socket, in a 0700 directory (under /tmp when too long)
    """

    root: Path

    @classmethod
    def for_config(cls, config_dir: Path, state: Path | None = None) -> RunDir:
        return cls((state or config_dir / ".fieldgate").absolute())

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def status_file(self) -> Path:
        return self.run / "status.json"

    @property
    def lock_file(self) -> Path:
        return self.run / "supervisor.lock"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def buffer(self) -> Path:
        return self.root / "buffer"

    @property
    def handoff_socket(self) -> Path:
        path = self.root / "handoff" / "handoff.sock"
        if len(str(path)) <= MAX_SOCKET_PATH:
            return path
        short = Path("/tmp") / f"fieldgate-{config_hash(str(self.root))[:12]}"
        return short / "handoff.sock"

    def slice_file(self, service: str) -> Path:
        return self.run / f"{service}.yaml"

    def create(self) -> None:
        for path in (self.run, self.state):
            path.mkdir(parents=True, exist_ok=True)
        # The hand-off socket's folder is private: only our user may reach the socket. The short
        # folder under /tmp has a predictable name: it must be ours too, or another user could put
        # a socket (or a symlink) where our collectors connect.
        folder = self.handoff_socket.parent
        folder.mkdir(mode=0o700, exist_ok=True)
        if folder.parent == self.root:
            folder.chmod(0o700)  # one an older version made with the umask's mode
        st = folder.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise RuntimeError(f"{folder} is not a private directory of this user: remove it, or use --state")


def _exists(path: str | Path) -> bool:
    return os.path.exists(path)  # one stat of a local path: not worth a thread


def _remove(path: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Write via a temp file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------ desired services from the config


def _render(model: Any, source: Path) -> str:
    from collectors.core.config import dump_slice

    return dump_slice(model.model_dump(mode="json", exclude_none=True),
                      f"generated by fieldgate from {source}; do not edit")


def desired_services(
    config: GatewayConfig, config_dir: Path, run_dir: RunDir, secrets_digest: str = ""
) -> dict[str, ServiceSpec]:
    """The forwarder and one collector per protocol in use, as process specs.

    `secrets_digest` stands for the passwords the children get in their environment (see
    `gateway.config.slice_environment`), so a changed password recreates the services too.
    """
    from gateway.config import collector_slices, forwarder_slice

    socket = run_dir.handoff_socket
    buffer_dir = config.buffer.dir if "dir" in config.buffer.model_fields_set else run_dir.buffer
    slices: dict[str, Any] = {FORWARDER: forwarder_slice(config, socket, buffer_dir)}
    slices.update(collector_slices(config, socket, run_dir.state, config.metrics.port))
    specs: dict[str, ServiceSpec] = {}
    for name, model in slices.items():
        file = run_dir.slice_file(name)
        text = _render(model, config_dir)
        command = (sys.executable, "-m", f"collectors.{name}", "--config", str(file))
        port = model.metrics.port if name == FORWARDER else model.metrics_port
        specs[name] = ServiceSpec(
            name=name,
            command=command,
            config_hash=config_hash(text, command, secrets_digest),
            metrics_port=port,
            config_file=str(file),
            config_text=text,
            ready_path=str(socket) if name == FORWARDER else None,
        )
    return specs


# ------------------------------------------------------------------ metrics and health over HTTP


async def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    """A minimal GET against our own metrics servers (no HTTP client dependency)."""
    async with asyncio.timeout(HTTP_TIMEOUT):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read(4 * 1024 * 1024)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP answer from port {port}")
    return int(parts[1]), body.decode("utf-8", "replace")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {family: sum of its samples} (labels summed away)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


# The counter of readings through each kind of service (the forwarder: delivered to the broker);
# the first one a service serves wins.
READINGS_COUNTERS = (
    "fieldgate_forwarder_readings_out_total",
    "fieldgate_modbus_readings_total",
    "fieldgate_opcua_readings_total",
    "fieldgate_readings_total",
)
BUFFERED_GAUGES = ("fieldgate_forwarder_buffered_readings",)
READY_TIMEOUT = 10.0


def _first(totals: dict[str, float], names: tuple[str, ...]) -> float | None:
    for name in names:
        if name in totals:
            return totals[name]
    return None


# ------------------------------------------------------------------ one child


@dataclass
class Child:
    """One running (or exited) service process and what the runtime knows of it."""

    spec: ServiceSpec
    process: asyncio.subprocess.Process
    started: float
    restarts: int
    exited: float | None = None
    exit_code: int | None = None
    health: Health | None = None
    health_since: float | None = None
    stopping: bool = False
    readings_per_s: float | None = None
    buffered: float | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _last_count: tuple[float, float] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def observed(self) -> Observed:
        if self.exited is not None:
            return Observed(self.spec.name, "exited", self.spec.config_hash, self.exited,
                            restarts=self.restarts, exit_code=self.exit_code, instance=str(self.pid))
        state: State = "stopping" if self.stopping else "running"
        return Observed(
            self.spec.name, state, self.spec.config_hash, self.started, health=self.health,
            health_since=self.health_since, restarts=self.restarts, instance=str(self.pid),
        )


Printer = Callable[[str], None]


def _print_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ProcessRuntime:
    """Starts, watches and stops service processes; an async context manager that leaves none behind."""

    kind = "process"

    def __init__(
        self,
        run_dir: RunDir,
        *,
        printer: Printer = _print_stderr,
        relay: IO[str] | None = None,
        stop_timeout: float = STOP_TIMEOUT,
        health_interval: float = HEALTH_INTERVAL,
        env: dict[str, str] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.changed = asyncio.Event()  # set when a child exits or changes health: the loop looks again
        self._children: dict[str, Child] = {}
        self._print = printer
        self._relay = relay if relay is not None else sys.stderr
        self._stop_timeout = stop_timeout
        self._health_interval = health_interval
        self._base_env = child_environment(env)
        self._env = self._base_env
        self._key = secrets.token_bytes(32)
        self._last_line: dict[str, str] = {}

    async def __aenter__(self) -> ProcessRuntime:
        self.run_dir.create()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop_all()

    # -------------------------------------------------------------- the Runtime seam

    def desired(self, config: GatewayConfig, config_dir: Path) -> dict[str, ServiceSpec]:
        from gateway.config import slice_environment

        passwords = slice_environment(config)
        # Keyed with a key that lives as long as this runtime (and its children): the hash
        # shows in status.json, and must say nothing about the passwords themselves.
        digest = hmac.new(self._key, json.dumps(passwords, sort_keys=True).encode(), "sha256").hexdigest()
        self._env = {**self._base_env, **passwords}
        return desired_services(config, config_dir, self.run_dir, digest)

    async def observe(self) -> dict[str, Observed]:
        return {name: child.observed() for name, child in self._children.items()}

    async def execute(self, step: Step) -> None:
        """Run one step with the executor its type maps to."""
        executors: dict[type, Callable[[Any], Awaitable[None]]] = {
            Start: self._do_start, Restart: self._do_restart, Recreate: self._do_recreate,
            Stop: self._do_stop, Remove: self._do_remove, Wait: self._do_wait,
        }
        await executors[type(step)](step)

    async def _do_start(self, step: Start) -> None:
        await self._start(step.spec, restarts=0)

    async def _do_restart(self, step: Restart) -> None:
        old = self._children.get(step.name)
        await self._stop(step.name)
        await self._start(step.spec, restarts=old.restarts + 1 if old else 1)

    async def _do_recreate(self, step: Recreate) -> None:
        # start-first runs as stop-first here: see the module docstring.
        old = self._children.get(step.name)
        await self._stop(step.name)
        await self._start(step.spec, restarts=old.restarts if old else 0)

    async def _do_stop(self, step: Stop) -> None:
        await self._stop(step.name)

    async def _do_remove(self, step: Remove) -> None:
        await self._stop(step.name)
        self._children.pop(step.name, None)
        self._say_removed(step.name)
        _remove(self.run_dir.slice_file(step.name))

    async def _do_wait(self, step: Wait) -> None:
        pass  # the loop sleeps until step.until

    def details(self) -> dict[str, dict[str, Any]]:
        """Status columns only this runtime knows: pid, readings/s and buffered (from /metrics)."""
        return {
            name: {"pid": child.pid if child.exited is None else None,
                   "readings_per_s": child.readings_per_s, "buffered": child.buffered}
            for name, child in self._children.items()
        }

    def children(self) -> dict[str, Child]:
        return dict(self._children)

    async def stop_all(self) -> None:
        """Collectors first, then the forwarder: every child gone when this returns."""
        for name in sorted(self._children, key=stop_order):
            await self._stop(name)

    # -------------------------------------------------------------- mechanics

    async def _start(self, spec: ServiceSpec, restarts: int) -> None:
        if spec.config_file is not None:
            write_atomic(Path(spec.config_file), spec.config_text)
        if spec.ready_path is not None:
            _remove(spec.ready_path)  # left by a killed run, it would say "ready" too early
        preexec = die_with_parent if _LIBC is not None else None
        process = await asyncio.create_subprocess_exec(
            *spec.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
            env=self._env,
        )
        child = Child(spec, process, started=time.monotonic(), restarts=restarts)
        if spec.metrics_port is not None:
            child.health, child.health_since = "starting", child.started
        self._children[spec.name] = child
        child.tasks.append(asyncio.create_task(self._watch(child), name=f"watch-{spec.name}"))
        if spec.metrics_port is not None:
            child.tasks.append(asyncio.create_task(self._poll(child), name=f"health-{spec.name}"))
        self._say(child)
        if spec.ready_path is not None:
            await self._ready(child, Path(spec.ready_path))

    async def _ready(self, child: Child, path: Path) -> None:
        """Wait (bounded) until the service made `path`: collectors started next find the
        forwarder's hand-off socket at once instead of logging a failed first attempt."""
        for _ in range(int(READY_TIMEOUT / 0.05)):
            if _exists(path) or child.exited is not None:
                return
            await asyncio.sleep(0.05)

    async def _watch(self, child: Child) -> None:
        """Relay the child's output line by line, then record how it ended."""
        stream = child.process.stdout
        assert stream is not None
        prefix = f"{child.spec.name:<9} | "
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the stream limit: relay what there is
                line = await stream.read(65536)
            if not line:
                break
            with contextlib.suppress(OSError, ValueError):
                self._relay.write(prefix + line.decode("utf-8", "replace").rstrip("\n") + "\n")
                self._relay.flush()
        code = await child.process.wait()
        child.exited, child.exit_code = time.monotonic(), code
        child.health, child.health_since = None, None
        if not child.stopping:
            self._say(child)
        self.changed.set()

    async def _poll(self, child: Child) -> None:
        """Follow /healthz (and every few polls /metrics) until the child exits."""
        port = child.spec.metrics_port
        assert port is not None
        polls = 0
        while child.exited is None:
            await asyncio.sleep(self._health_interval)
            health: Health
            try:
                status, _ = await http_get(port, "/healthz")
                health = "healthy" if status == 200 else "unhealthy"
            except (OSError, TimeoutError, ConnectionError):
                # Not listening yet is "starting"; gone silent after being up is unhealthy.
                health = "starting" if child.health in ("starting", None) else "unhealthy"
            if child.exited is not None:
                return
            if health != child.health:
                child.health, child.health_since = health, time.monotonic()
                self._say(child)
                self.changed.set()
            if polls % max(1, round(METRICS_INTERVAL / self._health_interval)) == 0 and health != "starting":
                await self._scrape(child, port)
            polls += 1

    async def _scrape(self, child: Child, port: int) -> None:
        try:
            status, text = await http_get(port, "/metrics")
        except (OSError, TimeoutError, ConnectionError):
            return
        if status != 200:
            return
        totals = parse_metrics(text)
        child.buffered = _first(totals, BUFFERED_GAUGES)
        count = _first(totals, READINGS_COUNTERS)
        now = time.monotonic()
        if count is not None:
            if child._last_count is not None and now > child._last_count[0]:
                then, before = child._last_count
                child.readings_per_s = max(0.0, (count - before) / (now - then))
            child._last_count = (now, count)

    async def _stop(self, name: str) -> None:
        child = self._children.get(name)
        if child is None:
            return
        was_running = child.exited is None
        if was_running:
            child.stopping = True
            self._say(child)
            self._signal(child, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(child.process.wait()), self._stop_timeout)
            except TimeoutError:
                self._print(f"{name}: still running {self._stop_timeout:.0f}s after SIGTERM; sending SIGKILL")
                self._signal(child, signal.SIGKILL)
                await child.process.wait()
        for task in child.tasks:
            if task.get_name().startswith("health-"):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        child.stopping = False
        if child.exited is None:  # the watcher was cancelled before it saw the end
            child.exited, child.exit_code = time.monotonic(), child.process.returncode
        if was_running:
            self._say(child, stopped=True)

    @staticmethod
    def _signal(child: Child, sig: signal.Signals) -> None:
        # The child leads its own process group (start_new_session): signal the group, so
        # anything it started goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)

    def _say(self, child: Child, stopped: bool = False) -> None:
        """One line per service, printed only when what it says changes."""
        spec = child.spec
        if stopped:
            what = "stopped"
        elif child.exited is not None:
            what = f"exited with code {child.exit_code}"
        elif child.stopping:
            what = "stopping"
        else:
            what = "running" + (f", {child.health}" if child.health else "")
        line = (f"{spec.name:<9} {what} "
                f"(pid {child.pid}, restarts {child.restarts}, config {spec.config_hash[:8]})")
        if self._last_line.get(spec.name) != line:
            self._last_line[spec.name] = line
            self._print(line)

    def _say_removed(self, name: str) -> None:
        self._last_line.pop(name, None)
        self._print(f"{name:<9} removed (no longer configured)")
