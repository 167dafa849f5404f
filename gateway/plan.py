"""What should run vs what runs -> the steps that make them equal. Pure: no processes, no Docker.

Both runtimes share one loop, in balena-supervisor's shape::

    observed = runtime.observe()                      # normalised: name -> Observed
    backoff  = backoff.settle(observed, now)          # a long healthy run forgets old crashes
    steps    = plan(desired, observed, now, backoff)  # this module; unit-tested without I/O
    for step in steps: runtime.execute(step)          # one executor per step type
    backoff  = backoff.record(steps, now)             # restarts count towards the next delay
    sleep until min(next poll, every Wait.until)

A service is one of `forwarder`, `modbus`, `opcua` (one collector per protocol in use).
`ServiceSpec` is what the config asks for, `Observed` what the runtime sees; both carry a
`config_hash` so a change to one collector's slice recreates that collector and nothing else.

The steps, and when `plan` emits them:

- `Start`     desired, and not present at all (or created and never started).
- `Recreate`  present, but its config hash or image differs from the spec; `order` is the
              spec's `update` (stop-first: old one stops before the new one starts;
              start-first: the new one starts and turns healthy before the old one stops).
              A crashed service whose config changed is recreated at once: the new config
              may be the fix.
- `Restart`   crashed (exited on its own), once its backoff delay has passed; or running but
              unhealthy for longer than `Policy.unhealthy_grace`, or never healthy within
              `Policy.start_grace` of starting. The delay after the n-th consecutive failure
              is `min(cap, initial * factor**n)`: capped, and it never gives up (IoT Edge's
              give-up-after-20 leaves a plant dark until someone notices).
- `Wait`      a restart is due later; `until` tells the loop when to look again.
- `Remove`    present but no longer configured (its protocol has no devices left).
- `Stop`      only from `plan_shutdown`: stop everything, collectors first so they can hand
              their last readings to the forwarder, which stops last and spills its buffer.

Order is deterministic: removals first (collectors before the forwarder), then the forwarder,
then collectors by name, so the forwarder's hand-off socket is up before collectors dial it.

A service is *crash-looping* when it has failed `Policy.crash_loop_after` times in a row
without a stable run in between (`BackoffState.crash_looping`); `describe_state` turns all of
this into the word `fieldgate status` prints.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

FORWARDER = "forwarder"

UpdateOrder = Literal["stop-first", "start-first"]
State = Literal["created", "starting", "running", "stopping", "exited"]
Health = Literal["healthy", "unhealthy", "starting"]


def config_hash(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (a config slice, an argv, limits)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ServiceSpec:
    """One service as the config wants it: built by a runtime from the gateway config."""

    name: str  # forwarder | modbus | opcua
    command: tuple[str, ...]  # argv of the process, or the container's command
    config_hash: str  # covers everything that, when changed, needs a new process/container
    image: str | None = None  # None for the process runtime
    cpus: float | None = None
    memory: int | None = None  # bytes
    update: UpdateOrder = "stop-first"
    devices: tuple[str, ...] = ()  # host device paths passed through (serial ports)
    mounts: tuple[str, ...] = ()  # "host:container[:ro]"
    metrics_port: int | None = None  # where /healthz and /metrics answer, if anywhere
    metrics_host: str = "127.0.0.1"  # the address they answer on (reach() of the bound one)
    secrets: tuple[str, ...] = ()  # environment variables holding this service's own passwords
    config_file: str | None = None  # where the runtime writes `config_text` before starting
    config_text: str = field(default="", repr=False)  # the rendered slice (covered by config_hash)
    ready_path: str | None = None  # exists once the service is up (the forwarder's hand-off socket)


@dataclass(frozen=True)
class Observed:
    """One service as the runtime sees it, normalised across processes and containers."""

    name: str
    state: State
    config_hash: str | None  # what it was started with; None when unknown (not ours)
    since: float  # when `state` began (start time when running, exit time when exited)
    image: str | None = None
    health: Health | None = None  # None: the service has no health check (yet)
    health_since: float | None = None  # when `health` began
    restarts: int = 0  # restarts the supervisor made since it started
    exit_code: int | None = None
    instance: str | None = None  # pid or container id, for logs


@dataclass(frozen=True)
class Start:
    spec: ServiceSpec
    reason: str

    @property
    def name(self) -> str:
        return self.spec.name

    def __str__(self) -> str:
        return f"start {self.name} ({self.reason})"


@dataclass(frozen=True)
class Recreate:
    spec: ServiceSpec
    order: UpdateOrder
    reason: str

    @property
    def name(self) -> str:
        return self.spec.name

    def __str__(self) -> str:
        return f"recreate {self.name} {self.order} ({self.reason})"


@dataclass(frozen=True)
class Restart:
    spec: ServiceSpec
    reason: str
    attempt: int  # consecutive failures including this one

    @property
    def name(self) -> str:
        return self.spec.name

    def __str__(self) -> str:
        return f"restart {self.name} ({self.reason}; attempt {self.attempt})"


@dataclass(frozen=True)
class Stop:
    name: str
    reason: str

    def __str__(self) -> str:
        return f"stop {self.name} ({self.reason})"


@dataclass(frozen=True)
class Remove:
    name: str
    reason: str

    def __str__(self) -> str:
        return f"remove {self.name} ({self.reason})"


@dataclass(frozen=True)
class Wait:
    name: str
    until: float
    reason: str

    def __str__(self) -> str:
        return f"wait {self.name} until {self.until:.1f} ({self.reason})"


Step = Start | Recreate | Restart | Stop | Remove | Wait


@dataclass(frozen=True)
class Policy:
    """Every interval of the supervisor's decisions; tests shrink them instead of patching sleep."""

    backoff_initial: float = 1.0
    backoff_factor: float = 2.0
    backoff_cap: float = 60.0
    stable_after: float = 30.0  # a healthy run this long forgets earlier failures
    crash_loop_after: int = 3  # consecutive failures shown as crash-looping
    unhealthy_grace: float = 30.0  # unhealthy this long -> restart
    start_grace: float = 60.0  # not healthy this long after starting -> restart

    def delay(self, failures: int) -> float:
        """Seconds to wait before the restart that follows `failures` consecutive failures."""
        # Cap the exponent too: factor**n overflows a float long before a plant notices.
        exponent = min(failures, 64)
        return float(min(self.backoff_cap, self.backoff_initial * self.backoff_factor**exponent))


@dataclass(frozen=True)
class BackoffState:
    """Consecutive failures per service and when each was last restarted. Immutable: methods
    return a new state, so the loop's history is a sequence of values a test can inspect."""

    policy: Policy = Policy()
    failures: Mapping[str, int] = field(default_factory=dict)
    last_restart: Mapping[str, float] = field(default_factory=dict)

    def count(self, name: str) -> int:
        return self.failures.get(name, 0)

    def crash_looping(self, name: str) -> bool:
        return self.count(name) >= self.policy.crash_loop_after

    def next_restart(self, obs: Observed) -> float:
        """Earliest time a crashed service may be restarted."""
        return obs.since + self.policy.delay(self.count(obs.name))

    def settle(self, observed: Mapping[str, Observed], now: float) -> BackoffState:
        """Forget the failures of services that have run, healthy, for `stable_after`."""
        failures = dict(self.failures)
        for name, obs in observed.items():
            if failures.get(name) and _stable(obs, now, self.policy.stable_after):
                del failures[name]
        return self if failures == self.failures else replace(self, failures=failures)

    def record(self, steps: Iterable[Step], now: float) -> BackoffState:
        """Count the restarts among `steps`; a recreate (new config) starts counting afresh."""
        failures = dict(self.failures)
        last = dict(self.last_restart)
        for step in steps:
            if isinstance(step, Restart):
                failures[step.name] = failures.get(step.name, 0) + 1
                last[step.name] = now
            elif isinstance(step, Recreate | Start):
                failures.pop(step.name, None)
                last[step.name] = now
            elif isinstance(step, Remove):
                failures.pop(step.name, None)
                last.pop(step.name, None)
        return replace(self, failures=failures, last_restart=last)


def _stable(obs: Observed, now: float, stable_after: float) -> bool:
    if obs.state != "running" or obs.health not in (None, "healthy"):
        return False
    healthy_from = obs.health_since if obs.health == "healthy" and obs.health_since is not None else obs.since
    return now - max(obs.since, healthy_from) >= stable_after


def start_order(name: str) -> tuple[int, str]:
    """The forwarder first (collectors dial its hand-off socket), then collectors by name."""
    return (0 if name == FORWARDER else 1, name)


def stop_order(name: str) -> tuple[int, str]:
    """Collectors first (their last readings go to the forwarder), the forwarder last."""
    return (1 if name == FORWARDER else 0, name)


def _change(spec: ServiceSpec, obs: Observed) -> str | None:
    if spec.image is not None and obs.image != spec.image:
        return f"image {obs.image} -> {spec.image}"
    if obs.config_hash != spec.config_hash:
        return f"config {obs.config_hash} -> {spec.config_hash}"
    return None


def _exit_text(obs: Observed) -> str:
    return f"exited with code {obs.exit_code}" if obs.exit_code is not None else "exited"


def plan(
    desired: Mapping[str, ServiceSpec],
    observed: Mapping[str, Observed],
    now: float,
    backoff: BackoffState,
) -> list[Step]:
    """The steps that bring `observed` to `desired`, in the order to execute them."""
    policy = backoff.policy
    steps: list[Step] = [
        Remove(name, "no longer configured") for name in sorted(set(observed) - set(desired), key=stop_order)
    ]
    for name in sorted(desired, key=start_order):
        spec = desired[name]
        obs = observed.get(name)
        if obs is None:
            steps.append(Start(spec, "not running"))
            continue
        change = _change(spec, obs)
        if change is not None and obs.state != "stopping":
            steps.append(Recreate(spec, spec.update, change))
        elif obs.state == "created":
            steps.append(Start(spec, "created, not started"))
        elif obs.state == "exited":
            until = backoff.next_restart(obs)
            attempt = backoff.count(name) + 1
            if now >= until:
                steps.append(Restart(spec, _exit_text(obs), attempt))
            else:
                steps.append(Wait(name, until, f"{_exit_text(obs)}; restart {attempt} due"))
        elif obs.state in ("running", "starting"):
            step = _health_step(spec, obs, now, backoff, policy)
            if step is not None:
                steps.append(step)
        # "stopping": the runtime is already ending it; look again next round.
    return steps


def _health_step(
    spec: ServiceSpec, obs: Observed, now: float, backoff: BackoffState, policy: Policy
) -> Step | None:
    if obs.health == "unhealthy":
        since = obs.health_since if obs.health_since is not None else obs.since
        reason = f"unhealthy for {now - since:.0f}s"
        due = since + policy.unhealthy_grace
    elif obs.health == "starting":
        since = obs.since
        reason = f"not healthy {now - since:.0f}s after starting"
        due = since + policy.start_grace
    else:
        return None
    # A service that turns unhealthy right after every restart also backs off.
    last = backoff.last_restart.get(obs.name)
    if last is not None:
        due = max(due, last + policy.delay(backoff.count(obs.name)))
    if now >= due:
        return Restart(spec, reason, backoff.count(obs.name) + 1)
    return Wait(obs.name, due, reason)


def plan_shutdown(observed: Mapping[str, Observed]) -> list[Step]:
    """Stop everything that still runs: collectors first, the forwarder last."""
    return [
        Stop(name, "supervisor stopping")
        for name in sorted(observed, key=stop_order)
        if observed[name].state != "exited"
    ]


def next_wake(steps: Iterable[Step], default: float) -> float:
    """When the loop should look again: the earliest `Wait`, or `default`."""
    return min([default, *(s.until for s in steps if isinstance(s, Wait))])


def describe_state(obs: Observed | None, backoff: BackoffState, now: float) -> str:
    """The state word of `fieldgate status`: running, starting, unhealthy, crash-looping, ..."""
    if obs is None:
        return "absent"
    failures = backoff.count(obs.name)
    if obs.state == "exited":
        wait = max(0.0, backoff.next_restart(obs) - now)
        word = "crash-looping" if backoff.crash_looping(obs.name) else "exited"
        return f"{word} ({_exit_text(obs)}; restart in {wait:.0f}s)"
    if backoff.crash_looping(obs.name) and obs.health != "healthy":
        return f"crash-looping ({failures} failures)"
    if obs.state == "running" and obs.health == "unhealthy":
        return "unhealthy"
    if obs.state == "running" and obs.health == "starting":
        return "starting"
    return obs.state
