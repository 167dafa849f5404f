"""What should run vs what runs -> the steps that make them equal. Pure: no processes, no Docker.

Every decision of the supervisor is made here; a runtime executes one step at a time and
reports what happened (an `Outcome`). Both runtimes share one loop, in balena-supervisor's shape::

    observed = runtime.observe()                      # normalised: name -> Observed
    backoff  = backoff.settle(observed, now)          # count the runtime's own restarts; a long
                                                      # healthy run forgets old crashes
    steps    = plan(desired, observed, now, backoff)  # this module; unit-tested without I/O
    outcomes = [runtime.execute(step) for step in steps]   # one executor per step type
    backoff  = backoff.record(outcomes, now)          # restarts and failed executions count
    sleep until min(next poll, every Wait.until, backoff.next_retry())

A service is one of `forwarder`, `modbus`, `opcua` (one collector per protocol in use).
`ServiceSpec` is what the config asks for, `Observed` what the runtime sees; both carry a
`config_hash` so a change to one collector's slice recreates that collector and nothing else.

The steps, and when `plan` emits them:

- `Start`     desired, and not present at all (or created and never started).
- `Recreate`  present, but its config hash or image differs from the spec; `order` comes
              from `update_order`: stop-first (the old one stops, then the new one starts)
              or start-first (the new one starts beside the old one, which keeps running).
              Start-first is the spec's `update` when two instances can run at once: not
              with serial ports (one owner); on the host's network (one metrics port) only
              for a service that starts as a standby (`ServiceSpec.standby`: a collector of
              network devices; the runtime gives the new instance a metrics port of its own
              and the hand-off keeps it from polling until the old one has left). A crashed
              (or engine-restarting) service whose config changed is recreated at once,
              stop-first: the new config may be the fix.
- `Reload`    running, and only its slice's devices changed (`ServiceSpec.reload_hash`, the hash
              of everything else - image, limits, ports, serial ports, command, secrets, the
              slice's other settings - is the same on both sides): the runtime hands the new
              slice to the running service (rewrites it, then SIGHUP), which applies it device by
              device; nothing restarts. A failed reload falls back to `Recreate`.
- `Handover`  start-first, once the new instance is healthy (or running, without a health
              check): the old one stops and the new one takes its place. A standby turns
              healthy only once the hand-off has admitted it as the standby; the old one's
              connection closing (it drains and exits on SIGTERM) makes it active, so its
              first poll follows the old one's last within about one poll period.
- `Rollback`  start-first, when the new instance exits, turns unhealthy or is not healthy
              within `Policy.start_grace`: it is removed, the old one runs on, and the same
              recreate backs off like a failed execution. Also (without a failure) when the
              config changed again while a new instance was starting.
- `Restart`   crashed (exited on its own), once its backoff delay has passed; or running but
              unhealthy for longer than `Policy.unhealthy_grace`, or never healthy within
              `Policy.start_grace` of starting. The delay after the n-th consecutive failure
              is `min(cap, initial * factor**n)`: capped, and it never gives up (IoT Edge's
              give-up-after-20 leaves a plant dark until someone notices).
- `Wait`      a restart is due later, a new instance is starting beside the old one, or the
              last attempt to execute a step for this service
              failed (an image not on the engine, a program that cannot start) and the same
              attempt is due again only after the backoff; `until` tells the loop when to look
              again, `reason` says why (and `fieldgate status` shows it).
- `Remove`    present but no longer configured (its protocol has no devices left).
- `Stop`      only from `plan_shutdown`: stop everything, collectors first so they can hand
              their last readings to the forwarder, which stops last and spills its buffer.

Order is deterministic: removals first (collectors before the forwarder), then the forwarder,
then collectors by name, so the forwarder's hand-off socket is up before collectors dial it.

A service is *crash-looping* when it has failed `Policy.crash_loop_after` times in a row
without a stable run in between (`BackoffState.crash_looping`): restarts the supervisor made
and restarts the runtime made on its own (the Engine's `restart: unless-stopped`, seen as a
growing `Observed.restart_count`) count alike. `describe_state` turns all of this into the
word `fieldgate status` prints.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

FORWARDER = "forwarder"

UpdateOrder = Literal["stop-first", "start-first"]
# restarting: the runtime restarts it on its own (the Engine's restart policy); plan leaves it be.
State = Literal["created", "starting", "running", "restarting", "stopping", "exited"]
Health = Literal["healthy", "unhealthy", "starting"]
# Why executing a step failed; `image-missing`, `image-untrusted` and `runtime-missing` (a sandbox
# runtime the engine does not declare) are worded for the user by describe_state.
FailureKind = Literal["image-missing", "image-untrusted", "runtime-missing", "cannot-start", "engine", "unhealthy",
                      "error"]
WORDED: tuple[FailureKind, ...] = ("image-missing", "image-untrusted", "runtime-missing")


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
    # Its ports are the host's (a process; a container on `network: host`): a second instance
    # beside it cannot hold the same metrics port.
    host_network: bool = True
    # The hash of everything but the devices of its slice, for a service that takes a new slice
    # in place (None: it cannot). Equal to the running instance's: a changed config_hash is a Reload.
    reload_hash: str | None = None
    # A second instance of it can start beside the running one as a standby: on a metrics port
    # of its own (the runtime picks it), polling and publishing nothing until the hand-off makes
    # it active, which it does when the running one's connection leaves (docs/runtime.md).
    standby: bool = False


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
    exit_code: int | None = None  # of the last exit (exited, restarting)
    instance: str | None = None  # pid or container id, for logs
    restart_count: int = 0  # restarts the runtime made of this instance on its own (Engine: RestartCount)
    oom_killed: bool = False  # the last exit was the memory limit's doing
    candidate: Observed | None = None  # a start-first replacement running beside it
    reload_hash: str | None = None  # the spec's reload_hash it runs with (None: unknown)


@dataclass(frozen=True)
class SpecStep:
    """A step that brings up (or hands over) an instance of `spec`."""

    spec: ServiceSpec

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Start(SpecStep):
    reason: str

    def __str__(self) -> str:
        return f"start {self.name} ({self.reason})"


@dataclass(frozen=True)
class Recreate(SpecStep):
    order: UpdateOrder
    reason: str

    def __str__(self) -> str:
        return f"recreate {self.name} {self.order} ({self.reason})"


@dataclass(frozen=True)
class Restart(SpecStep):
    reason: str
    attempt: int  # consecutive failures including this one

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


@dataclass(frozen=True)
class Reload(SpecStep):
    reason: str

    def __str__(self) -> str:
        return f"reload {self.name} in place ({self.reason})"


@dataclass(frozen=True)
class Handover(SpecStep):
    reason: str

    def __str__(self) -> str:
        return f"hand {self.name} over to the new instance ({self.reason})"


@dataclass(frozen=True)
class Rollback(SpecStep):
    reason: str
    failed: bool = True  # the handover failed: the same recreate backs off; False: only tidying up

    def __str__(self) -> str:
        return f"roll {self.name} back to the running instance ({self.reason})"


Step = Start | Recreate | Reload | Restart | Stop | Remove | Wait | Handover | Rollback


@dataclass(frozen=True)
class Outcome:
    """What executing one step did: done, or failed with a kind and a reason a user can act on.

    A runtime returns one for every step and raises for none of the failures it expects, so the
    planner, not the runtime, decides when to try again."""

    step: Step
    failure: FailureKind | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None

    @classmethod
    def done(cls, step: Step) -> Outcome:
        return cls(step)

    @classmethod
    def failed(cls, step: Step, failure: FailureKind, reason: str) -> Outcome:
        return cls(step, failure, reason)


@dataclass(frozen=True)
class Failure:
    """The last failed execution for a service, until one succeeds or it is removed."""

    verb: str  # start | recreate | restart | remove
    kind: FailureKind
    reason: str
    key: tuple[str, ...]  # what was tried (spec hash and image): anything else is tried at once
    attempts: int  # consecutive failed attempts of this key
    retry_at: float  # the same attempt is not made again before this

    def words(self) -> str:
        """The status word: `image missing` says what to do; other failures name the step."""
        if self.kind in WORDED:
            return self.kind.replace("-", " ")
        return f"{self.verb} failed"


def _spec_key(spec: ServiceSpec) -> tuple[str, ...]:
    return (spec.config_hash, spec.image or "")


def _key(step: Step) -> tuple[str, ...]:
    """What an attempt tried: a failure holds back only the same attempt."""
    if isinstance(step, SpecStep):
        return _spec_key(step.spec)
    return (type(step).__name__.lower(),)


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
    """Consecutive failures per service, when each was last restarted, the last failed execution
    and the last exit seen. Immutable: methods return a new state, so the loop's history is a
    sequence of values a test can inspect."""

    policy: Policy = Policy()
    failures: Mapping[str, int] = field(default_factory=dict)
    last_restart: Mapping[str, float] = field(default_factory=dict)
    failed: Mapping[str, Failure] = field(default_factory=dict)
    restart_counts: Mapping[str, tuple[str | None, int]] = field(default_factory=dict)  # instance, count
    last_exit: Mapping[str, str] = field(default_factory=dict)  # "exited with code 137, out of memory"

    def count(self, name: str) -> int:
        return self.failures.get(name, 0)

    def crash_looping(self, name: str) -> bool:
        return self.count(name) >= self.policy.crash_loop_after

    def next_restart(self, obs: Observed) -> float:
        """Earliest time a crashed service may be restarted."""
        return obs.since + self.policy.delay(self.count(obs.name))

    def next_retry(self, now: float) -> float | None:
        """The earliest time a failed execution is due again, if any is still ahead."""
        ahead = [f.retry_at for f in self.failed.values() if f.retry_at > now]
        return min(ahead) if ahead else None

    def held(self, step: Step, now: float) -> Wait | None:
        """A Wait instead of `step` while the same attempt failed and its backoff runs."""
        failure = self.failed.get(step.name)
        if failure is None or failure.key != _key(step) or now >= failure.retry_at:
            return None
        if failure.verb == "reload" and not isinstance(step, Reload):
            return None  # the fallback of a failed reload is not held back by it
        return Wait(step.name, failure.retry_at, f"{failure.verb} failed: {failure.reason}")

    def settle(
        self, observed: Mapping[str, Observed], now: float, desired: Mapping[str, ServiceSpec] | None = None
    ) -> BackoffState:
        """Count the restarts the runtime made on its own since the last look (each one a
        failure, as if the supervisor had made it), remember the last exit, and forget the
        failures of services that have run, healthy, for `stable_after`. With `desired`, a
        failed execution of something no longer wanted (the config went back) is forgotten."""
        failed = dict(self.failed)
        if desired is not None:
            for name, failure in self.failed.items():
                spec = desired.get(name)
                if failure.key != (_spec_key(spec) if spec is not None else ("remove",)):
                    del failed[name]
        failures = dict(self.failures)
        counts: dict[str, tuple[str | None, int]] = {}
        last_exit = dict(self.last_exit)
        for name, obs in observed.items():
            seen = self.restart_counts.get(name)
            if seen is not None and seen[0] == obs.instance and obs.restart_count > seen[1]:
                failures[name] = failures.get(name, 0) + obs.restart_count - seen[1]
            counts[name] = (obs.instance, obs.restart_count)
            if obs.state in ("exited", "restarting"):
                last_exit[name] = _exit_text(obs)
            if failures.get(name) and _stable(obs, now, self.policy.stable_after):
                del failures[name]
                last_exit.pop(name, None)
        if (failures == self.failures and counts == self.restart_counts and last_exit == self.last_exit
                and failed == self.failed):
            return self
        return replace(self, failures=failures, restart_counts=counts, last_exit=last_exit, failed=failed)

    def record(self, outcomes: Iterable[Outcome], now: float) -> BackoffState:
        """Count what the executed steps did.

        Done: a restart counts one failure (the crash or the sickness behind it); a start or a
        recreate (new config) starts counting afresh. Failed: the service's failed record says
        when the same attempt is due again, `delay(attempts - 1)` after this one (for a
        restart: after its failure count, which the failed attempt raises too)."""
        failures = dict(self.failures)
        last = dict(self.last_restart)
        failed = dict(self.failed)
        last_exit = dict(self.last_exit)
        for outcome in outcomes:
            step, name = outcome.step, outcome.step.name
            if isinstance(step, Wait | Stop):
                continue
            if outcome.ok and isinstance(step, Rollback):
                if step.failed:  # the new instance never turned healthy: back off this recreate
                    failed[name] = _failure(failed.get(name), step, "unhealthy", step.reason, now, self.policy)
                continue
            if outcome.ok and isinstance(step, Recreate) and step.order == "start-first":
                continue  # half done: the handover (or a rollback) tells how it went
            if outcome.ok:
                failed.pop(name, None)
                if isinstance(step, Restart):
                    failures[name] = failures.get(name, 0) + 1
                    last[name] = now
                elif isinstance(step, Reload):
                    pass  # the same instance runs on: its failures and restarts stand
                elif isinstance(step, Recreate | Start | Handover):
                    failures.pop(name, None)
                    last[name] = now
                else:  # Remove: nothing of it is left to count
                    failures.pop(name, None)
                    last.pop(name, None)
                    last_exit.pop(name, None)
                continue
            assert outcome.failure is not None
            exponent = None
            if isinstance(step, Restart):
                exponent = failures.get(name, 0)
                failures[name] = exponent + 1
            failed[name] = _failure(failed.get(name), step, outcome.failure, outcome.reason, now, self.policy,
                                    exponent)
        return replace(self, failures=failures, last_restart=last, failed=failed, last_exit=last_exit)


def _failure(
    previous: Failure | None, step: Step, kind: FailureKind, reason: str, now: float, policy: Policy,
    exponent: int | None = None,
) -> Failure:
    """The failed record after `step` failed: one more attempt if it tried the same thing."""
    attempts = previous.attempts + 1 if previous is not None and previous.key == _key(step) else 1
    verb = "recreate" if isinstance(step, Rollback) else type(step).__name__.lower()
    delay = policy.delay(attempts - 1 if exponent is None else exponent)
    return Failure(verb, kind, reason, _key(step), attempts, now + delay)


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


def update_order(spec: ServiceSpec) -> tuple[UpdateOrder, str]:
    """The order a recreate of `spec` runs in, and why when it is not the one the spec asks for.

    Start-first runs two instances at once, so it needs two of everything an instance holds:
    a serial port has one owner (stop-first: the gap is one container start); on the host's
    network the metrics port (where health answers) is one port, unless the new instance
    starts as a standby on a port of its own (`ServiceSpec.standby`)."""
    if spec.update == "start-first":
        if spec.devices:
            return "stop-first", "start-first would need two owners of a serial port"
        if spec.host_network and spec.metrics_port is not None and not spec.standby:
            return "stop-first", f"start-first would need metrics port {spec.metrics_port} twice on the host"
    return spec.update, ""


def _exit_text(obs: Observed) -> str:
    text = f"exited with code {obs.exit_code}" if obs.exit_code is not None else "exited"
    return text + (", out of memory" if obs.oom_killed else "")


def plan(
    desired: Mapping[str, ServiceSpec],
    observed: Mapping[str, Observed],
    now: float,
    backoff: BackoffState,
) -> list[Step]:
    """The steps that bring `observed` to `desired`, in the order to execute them."""
    steps: list[Step] = [
        Remove(name, "no longer configured") for name in sorted(set(observed) - set(desired), key=stop_order)
    ]
    for name in sorted(desired, key=start_order):
        step = _service_step(desired[name], observed.get(name), now, backoff)
        if step is not None:
            steps.append(step)
    # A step whose last attempt failed waits out its backoff (a missing image is not hammered).
    return [backoff.held(step, now) or step for step in steps]


def _service_step(spec: ServiceSpec, obs: Observed | None, now: float, backoff: BackoffState) -> Step | None:
    if obs is None:
        return Start(spec, "not running")
    if obs.candidate is not None:
        return _handover_step(spec, obs, obs.candidate, now, backoff.policy)
    change = _change(spec, obs)
    if change is not None and _reloadable(spec, obs, backoff):
        return Reload(spec, f"{change}; devices only")
    if change is not None and obs.state != "stopping":
        # Also while the runtime restarts it on its own: it would loop on the old config or image.
        order, why = update_order(spec)
        if order == "start-first" and obs.state != "running":
            order, why = "stop-first", "the old one is not running"
        return Recreate(spec, order, f"{change}; {why}" if why else change)
    if obs.state == "created":
        return Start(spec, "created, not started")
    if obs.state == "exited":
        until = backoff.next_restart(obs)
        attempt = backoff.count(spec.name) + 1
        if now >= until:
            return Restart(spec, _exit_text(obs), attempt)
        return Wait(spec.name, until, f"{_exit_text(obs)}; restart {attempt} due")
    if obs.state in ("running", "starting"):
        return _health_step(spec, obs, now, backoff, backoff.policy)
    # "stopping": the runtime is already ending it; "restarting": the runtime's own restart
    # policy brings it back (counted by `settle`). Look again next round.
    return None


def _reloadable(spec: ServiceSpec, obs: Observed, backoff: BackoffState) -> bool:
    """Only the devices of its slice changed, it runs, and reloading this spec has not failed."""
    if spec.reload_hash is None or obs.reload_hash != spec.reload_hash or obs.state != "running":
        return False
    if spec.image is not None and obs.image != spec.image:
        return False
    failure = backoff.failed.get(spec.name)
    return failure is None or failure.verb != "reload" or failure.key != _spec_key(spec)


def _handover_step(
    spec: ServiceSpec, obs: Observed, new: Observed, now: float, policy: Policy
) -> Step:
    """Start-first in progress: hand over once the new instance is healthy, else roll back."""
    if _change(spec, new) is not None or _change(spec, obs) is None:
        return Rollback(spec, "the new instance is not what the config asks for now", failed=False)
    if new.state == "running" and new.health in ("healthy", None):
        return Handover(spec, "healthy" if new.health else "running; no health check")
    if new.state in ("exited", "restarting", "created"):
        return Rollback(spec, f"the new instance {_exit_text(new) if new.state != 'created' else 'did not start'}")
    if new.health == "unhealthy":
        return Rollback(spec, "the new instance is unhealthy")
    due = new.since + policy.start_grace
    if now >= due:
        return Rollback(spec, f"the new instance is not healthy {now - new.since:.0f}s after starting")
    return Wait(spec.name, due, "the new instance is starting beside the old one")


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


def describe_state(name: str, obs: Observed | None, backoff: BackoffState, now: float) -> str:
    """The state word of `fieldgate status`: running, starting, unhealthy, crash-looping,
    image missing, ... with what a user needs to know in brackets."""
    failure = backoff.failed.get(name)
    if obs is not None and obs.candidate is not None:
        new = obs.candidate
        return f"{_describe(name, obs, backoff, now)} (new instance {new.image or new.instance} starting beside it)"
    if failure is not None:
        wait = max(0.0, failure.retry_at - now)
        why = f"{failure.reason}; next try in {wait:.0f}s"
        if obs is None or obs.state in ("created", "exited"):
            return f"{failure.words()} ({why})"
        return f"{_describe(name, obs, backoff, now)} ({failure.verb} failed: {why})"
    if obs is None:
        return "absent"
    return _describe(name, obs, backoff, now)


def _describe(name: str, obs: Observed, backoff: BackoffState, now: float) -> str:
    failures = backoff.count(name)
    looping = backoff.crash_looping(name)
    if obs.state == "exited":
        wait = max(0.0, backoff.next_restart(obs) - now)
        word = "crash-looping" if looping else "exited"
        return f"{word} ({_exit_text(obs)}; restart in {wait:.0f}s)"
    last = backoff.last_exit.get(name)
    if looping and obs.health != "healthy":
        stable = f"{backoff.policy.stable_after:.0f}s"
        return f"crash-looping ({failures} failures without a {stable} stable run" + (
            f"; last {last})" if last else ")")
    if obs.state == "restarting":
        return f"restarting (last {last or _exit_text(obs)})"
    if obs.state == "running" and obs.health == "unhealthy":
        return "unhealthy"
    if obs.state == "running" and obs.health == "starting":
        return "starting"
    return obs.state
