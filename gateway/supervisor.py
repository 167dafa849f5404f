"""`fieldgate up` and `status`: the supervisor loop around the pure planner.

`up` validates DIR (a bad config is refused with its errors and nothing starts), then runs::

    observe -> plan -> execute -> write status -> sleep (~1 s, or until a child changes)

with either runtime behind the `Runtime` protocol (process: gateway.runtime.process; docker:
gateway.runtime.docker). It polls DIR's files every second; a changed config is validated
first: an invalid one is refused with its errors and what runs stays untouched; a valid one
replaces the desired services, and since every service carries the hash of its own config
slice, only the services whose slice changed are recreated.

The running supervisor rewrites `run/status.json` in its run directory atomically (on every
change, and every 10 s for the rates); `fieldgate status DIR` prints it as a table, and
`fieldgate update` (gateway.update) waits on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

from collectors.core.errors import FieldgateError
from gateway.layout import GATEWAY_FILE, device_files
from gateway.plan import (
    BackoffState,
    Observed,
    Outcome,
    Policy,
    ServiceSpec,
    Step,
    Wait,
    describe_state,
    next_wake,
    plan,
    plan_shutdown,
    start_order,
)
from gateway.runtime.common import RunDir, write_atomic
from gateway.runtime.desired import Desired
from gateway.runtime.desired import load as load  # `fieldgate update` and tests load DIR through it
from gateway.runtime.metrics import process_memory
from gateway.runtime.process import METRICS_INTERVAL, ProcessRuntime

LOOP_INTERVAL = 1.0  # how often the loop observes and DIR is polled
STATUS_REFRESH = 10.0  # rewrite the status file at least this often (rates), else only on change


class Runtime(Protocol):
    """What the supervisor needs from a runtime; the planner decides, the runtime executes one
    step at a time and reports the outcome, which the planner's backoff takes into account."""

    kind: str  # "process" | "docker"
    changed: asyncio.Event  # set by the runtime when something it runs changes state

    def load_desired(self, config_dir: Path) -> Desired:
        """Load and check DIR and describe its services (blocking: called in a thread). A refusal
        is a `Desired` without specs and with the errors, never an exception."""
        ...

    async def observe(self) -> dict[str, Observed]: ...

    async def execute(self, step: Step) -> Outcome:
        """Execute one step and say what happened; a failure is an outcome, not an exception."""
        ...

    def details(self) -> dict[str, dict[str, Any]]:
        """Extra status columns per service (pid, readings_per_s, buffered, cpu, memory, ...)."""
        ...

    async def __aenter__(self) -> Runtime: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def make_runtime(kind: str, config_dir: Path, run_dir: RunDir, trusted_only: bool = False) -> Runtime:
    """The runtime named by --runtime or gateway.yaml. The docker one lives in gateway.runtime.docker."""
    if kind == "process":
        if trusted_only:
            raise SystemExit("fieldgate: --trusted-images applies to the docker runtime (images), not to processes")
        return ProcessRuntime(run_dir)
    from gateway.runtime import docker as docker_runtime

    factory = getattr(docker_runtime, "make_runtime", None)
    if factory is None:
        raise SystemExit("fieldgate: the docker runtime is not available here; use --runtime process")
    runtime: Runtime = factory(config_dir, run_dir, trusted_only=trusted_only)
    return runtime


# ------------------------------------------------------------------ config loading and watching


class ConfigWatcher:
    """Notices edits in DIR by polling mtimes (no inotify dependency; works on every mount).

    A change is reported once the files have stayed the same for one poll, so an editor that
    writes a file in several steps is read once, whole.
    """

    def __init__(self, config_dir: Path) -> None:
        self._dir = config_dir
        self._applied = self.snapshot()
        self._pending: dict[str, tuple[int, int]] | None = None

    def snapshot(self) -> dict[str, tuple[int, int]]:
        # A file added, removed or renamed to a backup name changes the set of paths itself.
        try:
            files = [self._dir / GATEWAY_FILE, *device_files(self._dir)]
        except OSError as exc:  # devices/ cannot be listed: a change, which loading reports
            return {str(self._dir / "devices"): (-1, exc.errno or 0)}
        seen: dict[str, tuple[int, int]] = {}
        for path in files:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            except OSError as exc:  # a symlink loop, no permission: still a change to read (and refuse)
                seen[str(path)] = (-1, exc.errno or 0)
                continue
            seen[str(path)] = (st.st_mtime_ns, st.st_size)
        return seen

    def poll(self) -> bool:
        """True once per settled change."""
        now = self.snapshot()
        if now == self._applied:
            self._pending = None
            return False
        if now != self._pending:
            self._pending = now
            return False
        self._applied, self._pending = now, None
        return True


# ------------------------------------------------------------------ the loop


@dataclass
class Supervisor:
    """The observe -> plan -> execute loop for one config directory."""

    config_dir: Path
    runtime: Runtime
    run_dir: RunDir
    desired: dict[str, ServiceSpec]
    policy: Policy = field(default_factory=Policy)
    out: IO[str] = field(default_factory=lambda: sys.stderr)

    def __post_init__(self) -> None:
        self.backoff = BackoffState(self.policy)
        self.stopping = asyncio.Event()
        self.config_error = ""
        self.config_applied = time.time()
        self._watcher = ConfigWatcher(self.config_dir)
        self._last_status = ""
        self._status_written = 0.0
        self._observed: dict[str, Observed] = {}
        self._memory: tuple[int, str] | None = None
        self._memory_at: float | None = None

    def say(self, text: str) -> None:
        print(f"fieldgate: {text}", file=self.out, flush=True)

    async def run(self) -> None:
        try:
            while not self.stopping.is_set():
                await self._check_config()
                wake = await self.step()
                await self._sleep(wake)
        finally:
            await self.shutdown()

    async def step(self) -> float:
        """One round: observe, plan, execute. Returns when to look again (monotonic)."""
        self.runtime.changed.clear()  # a change from here on wakes the next sleep
        observed = await self.runtime.observe()
        now = time.monotonic()
        self.backoff = self.backoff.settle(observed, now, self.desired)
        steps = plan(self.desired, observed, now, self.backoff)
        outcomes = []
        for step in steps:
            if self.stopping.is_set():
                break
            if not isinstance(step, Wait):
                self.say(str(step))
                outcomes.append(await self._execute(step))
        # Failed executions back off like crashes: the plan holds the same attempt until it is due.
        self.backoff = self.backoff.record(outcomes, time.monotonic())
        self._observed = await self.runtime.observe()
        self.write_status()
        wake = next_wake(steps, time.monotonic() + LOOP_INTERVAL)
        retry = self.backoff.next_retry(time.monotonic())
        return wake if retry is None else min(wake, retry)

    async def _execute(self, step: Step) -> Outcome:
        try:
            outcome = await self.runtime.execute(step)
        except (FieldgateError, OSError) as exc:  # a runtime broke its contract: still only a failure
            outcome = Outcome.failed(step, "error", str(exc))
        if not outcome.ok:
            self.say(f"{step.name}: {type(step).__name__.lower()} failed: {outcome.reason}")
        return outcome

    async def _sleep(self, until: float) -> None:
        timeout = max(0.05, min(LOOP_INTERVAL, until - time.monotonic()))
        waiters = [asyncio.ensure_future(event.wait()) for event in (self.stopping, self.runtime.changed)]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _check_config(self) -> None:
        try:
            if not self._watcher.poll():
                return
        except Exception as exc:  # the watcher only stats files; whatever it meets, the services run on
            message = f"{self.config_dir}: cannot look for changes ({type(exc).__name__}: {exc})"
            if message != self.config_error:  # said once, not every second
                self._refuse(message)
            return
        # In a thread: a big file takes seconds to read (200,000 values: ~2 s), and the loop keeps
        # observing the services meanwhile (health checks, restarts).
        loaded = await asyncio.to_thread(self.runtime.load_desired, self.config_dir)
        if loaded.specs is None:
            self._refuse(loaded.errors)
            return
        desired = loaded.specs
        names = set(desired) | set(self.desired)
        changed = sorted((n for n in names if desired.get(n) != self.desired.get(n)), key=start_order)
        self.config_error = ""
        self.config_applied = time.time()
        self.desired = desired
        self.say(f"config change applied: {', '.join(changed) if changed else 'no service affected'}")

    def _refuse(self, errors: str) -> None:
        self.config_error = errors
        self.say(f"config change refused; what runs stays as it is:\n{errors}")
        self.write_status(force=True)

    async def shutdown(self) -> None:
        observed = await self.runtime.observe()
        for step in plan_shutdown(observed):
            self.say(str(step))
            await self._execute(step)  # a failure is said; the others are stopped anyway
        self._observed = await self.runtime.observe()
        self.write_status(force=True, running=False)

    def write_status(self, force: bool = False, running: bool = True) -> None:
        """Rewrite run/status.json when it changed, or every STATUS_REFRESH seconds for the rates."""
        now_mono, now_wall = time.monotonic(), time.time()
        details = self.runtime.details()
        services = []
        for name in sorted(set(self.desired) | set(self._observed), key=start_order):
            obs = self._observed.get(name)
            spec = self.desired.get(name)
            state = describe_state(name, obs, self.backoff, now_mono)
            if not running and obs is not None and obs.state == "exited":
                state = "stopped"
            services.append({
                **details.get(name, {}),  # first: the status word is the planner's, not a runtime's
                "name": name,
                "state": state,
                "health": obs.health if obs else None,
                "restarts": obs.restarts if obs else 0,
                "since": round(now_wall - (now_mono - obs.since), 3) if obs else None,
                "image": (obs.image if obs and obs.image else spec.image if spec else None),
                "config_hash": obs.config_hash if obs else None,
                "crash_looping": self.backoff.crash_looping(name),
                "metrics_port": spec.metrics_port if spec else None,
            })
        if self._memory_at is None or now_mono - self._memory_at >= METRICS_INTERVAL:  # not every loop: flash
            self._memory, self._memory_at = process_memory(os.getpid()), now_mono
        status = {
            "supervisor": {"pid": os.getpid(), "running": running, "runtime": self.runtime.kind,
                           "config_dir": str(self.config_dir.absolute()),
                           # `up --trusted-images`: the trust store it runs images from (None: any image)
                           "trusted_images": _trust_store(self.runtime),
                           "memory": self._memory[0] if self._memory else None,
                           "memory_source": self._memory[1] if self._memory else None},
            "config": {"applied_at": round(self.config_applied, 3), "error": self.config_error or None},
            "services": services,
        }
        text = json.dumps(status, indent=2, sort_keys=True)
        if not force and text == self._last_status and now_mono - self._status_written < STATUS_REFRESH:
            return
        status["updated_at"] = round(now_wall, 3)
        write_atomic(self.run_dir.status_file, json.dumps(status, indent=2), mode=0o644)
        self._last_status, self._status_written = text, now_mono


@contextlib.contextmanager
def run_dir_lock(run_dir: RunDir) -> Iterator[None]:
    """One supervisor per config directory: a second `up` on the same DIR is refused."""
    run_dir.run.mkdir(parents=True, exist_ok=True)
    with open(run_dir.lock_file, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"fieldgate: another supervisor already runs {run_dir.root}") from None
        yield


async def _up(runtime: Runtime, config_dir: Path, run_dir: RunDir, desired: Desired, policy: Policy) -> None:
    async with runtime:
        if desired.runtime is None:  # a runtime of its own (docker): it loads DIR itself
            desired = await asyncio.to_thread(runtime.load_desired, config_dir)
            if desired.specs is None:
                raise SystemExit(f"{desired.errors}\nfieldgate: {config_dir} is not valid; nothing started")
        assert desired.specs is not None
        supervisor = Supervisor(config_dir, runtime, run_dir, desired.specs, policy)
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                supervisor.say("stopping (again to kill at once)")
                supervisor.stopping.set()
            else:
                _kill_now(runtime)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            await supervisor.run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def _kill_now(runtime: Runtime) -> None:
    if isinstance(runtime, ProcessRuntime):
        for child in runtime.children().values():
            if child.exited is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)


def main_up(args: argparse.Namespace) -> int:
    config_dir: Path = args.dir
    run_dir = RunDir.for_config(config_dir, getattr(args, "state", None))
    # Loaded in a child (gateway.runtime.desired): this process never imports the config models.
    # It also says which runtime gateway.yaml asks for.
    process = ProcessRuntime(run_dir)
    desired = process.load_desired(config_dir)
    if desired.specs is None:
        print(desired.errors, file=sys.stderr)
        print(f"fieldgate: {config_dir} is not valid; nothing started", file=sys.stderr)
        return 1
    kind = args.runtime or desired.runtime or "process"
    trusted_only = bool(getattr(args, "trusted_images", False))
    with run_dir_lock(run_dir):
        try:
            runtime = process if kind == "process" and not trusted_only else make_runtime(
                kind, config_dir, run_dir, trusted_only)
            if runtime is not process:
                desired = Desired(None)  # loaded again by that runtime, in _up
            asyncio.run(_up(runtime, config_dir, run_dir, desired, Policy()))
        except KeyboardInterrupt:  # before the signal handlers were in place: nothing ran yet
            return 130
    return 0


# ------------------------------------------------------------------ status


def _trust_store(runtime: Runtime) -> str | None:
    store = getattr(runtime, "trust_store", None)  # the docker runtime's, with --trusted-images
    return None if store is None else str(store)


def read_status(run_dir: RunDir) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(run_dir.status_file.read_text())
        return data
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def supervisor_alive(status: Mapping[str, Any]) -> bool:
    sup = status.get("supervisor", {})
    if not sup.get("running"):
        return False
    try:
        os.kill(int(sup["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d"


def _num(value: Any, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _mib(value: Any) -> str:
    return "-" if value is None else f"{value / 1024**2:.0f}MiB"


def _buffered(svc: Mapping[str, Any]) -> str:
    """The BUFFERED column: readings held, and damaged buffer segments set aside (never replayed)."""
    text = _num(svc.get("buffered"))
    quarantined = svc.get("quarantined")
    return f"{text} ({quarantined:.0f} quarantined)" if quarantined else text


def _memory(svc: Mapping[str, Any]) -> str:
    """The MEMORY column: a process's PSS (or RSS) to a tenth of a MiB, named; a container's
    memory as the Engine counts it, against its limit."""
    value, source = svc.get("memory"), svc.get("memory_source", "engine")
    if value is None:
        text = "-"
    elif source == "engine":
        text = _mib(value)
    else:
        text = f"{value / 1024**2:.1f}MiB {str(source).upper()}"
    if svc.get("memory_limit"):
        text += f" of {_mib(svc['memory_limit'])}"
    return text


def status_rows(status: Mapping[str, Any], now: float) -> list[list[str]]:
    """The `fieldgate status` table, header row first. CPU appears when the runtime measures it
    (docker: from the Engine's stats, against the limits), MEMORY when it measures memory
    (docker: the Engine's figure; process: each child's PSS from /proc)."""
    services = status.get("services", [])
    cpu = any("cpu_percent" in svc or "cpu_limit" in svc
              or ("memory" in svc and svc.get("memory_source", "engine") == "engine") for svc in services)
    memory = cpu or any("memory" in svc for svc in services)
    header = ["SERVICE", "STATE", "HEALTH", "READINGS/S", "BUFFERED", "RESTARTS", "UPTIME"]
    rows = [[*header, *(["CPU"] if cpu else []), *(["MEMORY"] if memory else []), "IMAGE"]]
    for svc in services:
        state = str(svc.get("state", "?"))
        ended = state in ("absent", "stopped") or state.startswith(("exited", "crash-looping (exited"))
        uptime = _age(now - svc["since"]) if svc.get("since") and not ended else "-"
        image = svc.get("image") or (f"pid {svc['pid']}" if svc.get("pid") else "-")
        row = [
            svc["name"], state, svc.get("health") or "-",
            "-" if ended else _num(svc.get("readings_per_s"), "{:.1f}"), _buffered(svc),
            str(svc.get("restarts", 0)), uptime,
        ]
        if cpu:
            text = _num(svc.get("cpu_percent"), "{:.1f}%")
            if svc.get("cpu_limit"):
                text += f" of {svc['cpu_limit']:g}"
            row.append(text)
        if memory:
            row.append(_memory(svc))
        rows.append([*row, image])
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
    return "\n".join(lines)


def main_status(args: argparse.Namespace) -> int:
    """Print one row per service from the running supervisor's status file; exit 1 when none runs."""
    run_dir = RunDir.for_config(args.dir, getattr(args, "state", None))
    status = read_status(run_dir)
    if status is None:
        print(f"fieldgate: no supervisor has run for {args.dir} (no {run_dir.status_file})", file=sys.stderr)
        return 1
    alive = supervisor_alive(status)
    if getattr(args, "json", False):
        print(json.dumps({**status, "supervisor": {**status.get("supervisor", {}), "alive": alive}}, indent=2))
        return 0 if alive else 1
    sup = status.get("supervisor", {})
    updated = status.get("updated_at", 0.0)
    age = _age(time.time() - updated)
    if alive:
        own = "" if sup.get("memory") is None else f", {_memory(sup)}"
        print(f"supervisor pid {sup.get('pid')} ({sup.get('runtime')} runtime{own}), updated {age} ago")
    else:
        print(f"supervisor not running; last known state from {age} ago")
    error = status.get("config", {}).get("error")
    if error:
        print(f"config change refused (the running services keep the previous config):\n{error}")
    print(format_table(status_rows(status, time.time())))
    return 0 if alive else 1
