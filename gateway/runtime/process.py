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

Its specs ask for stop-first updates, which the planner keeps for processes anyway: they share
the host's ports (`ServiceSpec.host_network`), so two processes of one collector would fight
over its metrics port and, for Modbus RTU, over the serial port that only one owner may hold
(one owner per serial port). It never runs a second instance, so it refuses
`Handover` and `Rollback` (a failed outcome); the docker runtime runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from gateway.plan import (
    FailureKind,
    Health,
    Observed,
    Outcome,
    Recreate,
    Reload,
    Remove,
    Restart,
    ServiceSpec,
    Start,
    State,
    Step,
    Stop,
    Wait,
    stop_order,
)
from gateway.runtime.common import RunDir, child_environment, write_atomic
from gateway.runtime.desired import Desired, in_child, process_desired
from gateway.runtime.metrics import ReadingsRate, http_get, process_memory, scrape

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

# Generous: the forwarder spills its in-memory buffer to disk on SIGTERM.
STOP_TIMEOUT = 10.0
HEALTH_INTERVAL = 1.0
METRICS_INTERVAL = 5.0

_PR_SET_PDEATHSIG = 1


# Never withheld from a child, even when the config names them in a ${VAR}.
ESSENTIAL_VARIABLES = frozenset({
    "PATH", "HOME", "PYTHONPATH", "LANG", "LANGUAGE", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME",
    "SHELL", "TERM",
})


def service_environment(
    base: dict[str, str], passwords: dict[str, str], own: tuple[str, ...], named: set[str]
) -> dict[str, str]:
    """One child's environment: the supervisor's, less every variable the config names and every
    password, plus this child's own passwords (the forwarder the broker's, the OPC UA collector
    its devices'). A child never holds another's secret, nor the values of `${VAR}`s: those are
    already in its slice."""
    withheld = (named | passwords.keys()) - ESSENTIAL_VARIABLES
    env = {key: value for key, value in base.items()
           if key not in withheld and not key.startswith("FIELDGATE_PASSWORD_")}
    env.update({name: passwords[name] for name in own if name in passwords})
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


def _exists(path: str | Path) -> bool:
    return os.path.exists(path)  # one stat of a local path: not worth a thread


def _remove(path: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


READY_TIMEOUT = 10.0


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
    quarantined: float | None = None
    memory: tuple[int, str] | None = None  # (bytes, "pss" | "rss"), sampled every METRICS_INTERVAL
    memory_at: float | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    readings: ReadingsRate = field(default_factory=ReadingsRate)

    def sample_memory(self, now: float) -> tuple[int, str] | None:
        """The child's memory, read again at most every METRICS_INTERVAL: a figure that changed
        by a few pages must not rewrite status.json every second (small gateways run on flash).
        None while it starts (before its first healthy /healthz, or its first second without
        one): a figure of half-imported modules would stand for METRICS_INTERVAL."""
        if self.exited is not None:
            self.memory = None
        elif self.health == "starting" or now - self.started < 1.0:
            pass
        elif self.memory_at is None or now - self.memory_at >= METRICS_INTERVAL:
            self.memory, self.memory_at = process_memory(self.pid), now
        return self.memory

    @property
    def pid(self) -> int:
        return self.process.pid

    def observed(self) -> Observed:
        if self.exited is not None:
            return Observed(self.spec.name, "exited", self.spec.config_hash, self.exited,
                            restarts=self.restarts, exit_code=self.exit_code, instance=str(self.pid),
                            reload_hash=self.spec.reload_hash)
        state: State = "stopping" if self.stopping else "running"
        return Observed(
            self.spec.name, state, self.spec.config_hash, self.started, health=self.health,
            health_since=self.health_since, restarts=self.restarts, instance=str(self.pid),
            reload_hash=self.spec.reload_hash,
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
        self._passwords: dict[str, str] = {}
        self._named: set[str] = set()
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
        """The services of a config loaded in this process (tests, `fieldgate demo`)."""
        specs = self.adopt(process_desired(config, self.run_dir, self._key)).specs
        assert specs is not None
        return specs

    def load_desired(self, config_dir: Path) -> Desired:
        """Load DIR in a short-lived child (gateway.runtime.desired): the supervisor keeps only
        the specs, never the config models. Blocks: the supervisor calls it in a thread."""
        return self.adopt(in_child(config_dir, self.run_dir, self._key, self._base_env))

    def adopt(self, desired: Desired) -> Desired:
        """Take the passwords and `${VAR}` names of an accepted config for the children's
        environment, and say its warnings."""
        if desired.specs is not None:
            self._passwords, self._named = dict(desired.passwords), set(desired.named)
            for warning in desired.warnings:
                self._print(f"warning: {warning}")
        return desired

    async def observe(self) -> dict[str, Observed]:
        return {name: child.observed() for name, child in self._children.items()}

    async def execute(self, step: Step) -> Outcome:
        """Run one step with the executor its type maps to, and say how it went: a program
        that cannot be started (missing, not executable) or a slice that cannot be written
        is a failed outcome, which the planner backs off like a crash."""
        executors: dict[type, Callable[[Any], Awaitable[None]]] = {
            Start: self._do_start, Restart: self._do_restart, Recreate: self._do_recreate, Reload: self._do_reload,
            Stop: self._do_stop, Remove: self._do_remove, Wait: self._do_wait,
        }
        executor = executors.get(type(step))
        if executor is None:  # Handover, Rollback: it never runs a second instance to hand over to
            return Outcome.failed(step, "error", f"the process runtime cannot {step}")
        try:
            await executor(step)
        except OSError as exc:
            kind: FailureKind = "cannot-start" if isinstance(step, Start | Restart | Recreate) else "error"
            return Outcome.failed(step, kind, str(exc))
        return Outcome.done(step)

    async def _do_start(self, step: Start) -> None:
        await self._start(step.spec, restarts=0)

    async def _do_restart(self, step: Restart) -> None:
        old = self._children.get(step.name)
        await self._stop(step.name)
        await self._start(step.spec, restarts=old.restarts + 1 if old else 1)

    async def _do_recreate(self, step: Recreate) -> None:
        # Always stop-first here: see the module docstring.
        old = self._children.get(step.name)
        await self._stop(step.name)
        await self._start(step.spec, restarts=old.restarts if old else 0)

    async def _do_reload(self, step: Reload) -> None:
        """The new slice in the file the child reads (atomically: it never sees half of it),
        then SIGHUP; the child takes it in place (collectors.core.shell)."""
        child = self._children.get(step.name)
        if child is None or child.exited is not None:
            raise OSError(f"{step.name} is not running")
        if step.spec.config_file is not None:
            write_atomic(Path(step.spec.config_file), step.spec.config_text)
        child.process.send_signal(signal.SIGHUP)
        child.spec = step.spec
        self._print(f"{step.name}: new config handed over in place (pid {child.pid}, "
                    f"config {step.spec.config_hash[:8]})")

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
        """Status columns only this runtime knows: pid, readings/s and buffered (from /metrics),
        and the child's memory (its PSS from /proc, or its RSS where PSS cannot be read)."""
        now = time.monotonic()
        details: dict[str, dict[str, Any]] = {}
        for name, child in self._children.items():
            memory = child.sample_memory(now)
            details[name] = {"pid": child.pid if child.exited is None else None,
                             "readings_per_s": child.readings_per_s, "buffered": child.buffered,
                             "quarantined": child.quarantined,
                             "memory": memory[0] if memory else None,
                             "memory_source": memory[1] if memory else None}
        return details

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
            env=service_environment(self._base_env, self._passwords, spec.secrets, self._named),
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
                status, _ = await http_get(port, "/healthz", host=child.spec.metrics_host)
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
        scraped = await scrape(child.spec.metrics_host, port)
        if scraped is None:
            return
        child.buffered, child.quarantined = scraped.buffered, scraped.quarantined
        if scraped.readings is not None:
            child.readings_per_s = child.readings.add(time.monotonic(), scraped.readings)

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
