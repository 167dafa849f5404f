"""The supervisor's decisions, as tables: desired + observed (+ time, backoff) -> steps."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.plan import (
    BackoffState,
    Handover,
    Observed,
    Outcome,
    Policy,
    Recreate,
    Remove,
    Restart,
    Rollback,
    ServiceSpec,
    Start,
    Step,
    Stop,
    Wait,
    config_hash,
    describe_state,
    next_wake,
    plan,
    plan_shutdown,
    update_order,
)

pytestmark = pytest.mark.unit

POLICY = Policy(backoff_initial=1, backoff_factor=2, backoff_cap=30, stable_after=60,
                crash_loop_after=3, unhealthy_grace=10, start_grace=20)


def spec(name: str, hash_: str = "h1", image: str | None = None, update: str = "stop-first") -> ServiceSpec:
    return ServiceSpec(name=name, command=("python", "-m", f"collectors.{name}"), config_hash=hash_,
                       image=image, update=update)  # type: ignore[arg-type]


def obs(name: str, state: str = "running", hash_: str = "h1", since: float = 0.0, **kw: object) -> Observed:
    return Observed(name=name, state=state, config_hash=hash_, since=since, **kw)  # type: ignore[arg-type]


def summary(steps: list[Step]) -> list[tuple[str, str]]:
    return [(type(s).__name__, s.name) for s in steps]


def done(*steps: Step) -> list[Outcome]:
    return [Outcome.done(step) for step in steps]


def desired(*specs: ServiceSpec) -> dict[str, ServiceSpec]:
    return {s.name: s for s in specs}


def observed(*items: Observed) -> dict[str, Observed]:
    return {o.name: o for o in items}


ALL = desired(spec("opcua"), spec("modbus"), spec("forwarder"))

CASES = [
    ("nothing runs: forwarder first, then collectors by name",
     ALL, observed(),
     [("Start", "forwarder"), ("Start", "modbus"), ("Start", "opcua")]),
    ("everything runs as wanted: nothing to do",
     ALL, observed(obs("forwarder"), obs("modbus"), obs("opcua")),
     []),
    ("one collector's config changed: only it is recreated",
     ALL, observed(obs("forwarder"), obs("modbus", hash_="h0"), obs("opcua")),
     [("Recreate", "modbus")]),
    ("protocol no longer used: removed before anything starts",
     desired(spec("forwarder"), spec("modbus")),
     observed(obs("forwarder"), obs("opcua")),
     [("Remove", "opcua"), ("Start", "modbus")]),
    ("everything unwanted: collectors removed before the forwarder",
     {}, observed(obs("forwarder"), obs("modbus"), obs("opcua")),
     [("Remove", "modbus"), ("Remove", "opcua"), ("Remove", "forwarder")]),
    ("created but never started",
     desired(spec("forwarder")), observed(obs("forwarder", state="created")),
     [("Start", "forwarder")]),
    ("stopping: left alone until it has stopped",
     desired(spec("forwarder", hash_="h2")), observed(obs("forwarder", state="stopping")),
     []),
    ("crashed and its config changed: recreated at once, no backoff",
     desired(spec("modbus", hash_="h2")), observed(obs("modbus", state="exited", since=99.9, exit_code=1)),
     [("Recreate", "modbus")]),
    ("healthy and unknown health are left alone",
     desired(spec("forwarder"), spec("modbus")),
     observed(obs("forwarder", health="healthy"), obs("modbus", health=None)),
     []),
]


@pytest.mark.parametrize(("title", "want", "have", "expected"), CASES, ids=[c[0] for c in CASES])
def test_plan_table(title: str, want: dict[str, ServiceSpec], have: dict[str, Observed],
                    expected: list[tuple[str, str]]) -> None:
    assert summary(plan(want, have, now=100.0, backoff=BackoffState(POLICY))) == expected


def test_image_change_recreates_with_the_services_update_order() -> None:
    want = desired(spec("modbus", image="c-modbus:2", update="stop-first"),
                   spec("opcua", image="c-opcua:2", update="start-first"))
    have = observed(obs("modbus", image="c-modbus:1"), obs("opcua", image="c-opcua:1"))
    steps = plan(want, have, 100.0, BackoffState(POLICY))
    assert steps == [
        Recreate(want["modbus"], "stop-first", "image c-modbus:1 -> c-modbus:2"),
        Recreate(want["opcua"], "start-first", "image c-opcua:1 -> c-opcua:2"),
    ]


def test_process_specs_without_image_ignore_the_observed_image() -> None:
    have = observed(obs("modbus", image="whatever"))
    assert plan(desired(spec("modbus")), have, 1.0, BackoffState(POLICY)) == []


def test_crash_waits_for_the_backoff_then_restarts() -> None:
    want = desired(spec("modbus"))
    crashed = observed(obs("modbus", state="exited", since=100.0, exit_code=137))
    backoff = BackoffState(POLICY)
    early = plan(want, crashed, 100.5, backoff)
    assert early == [Wait("modbus", 101.0, "exited with code 137; restart 1 due")]
    assert next_wake(early, default=200.0) == 101.0
    assert plan(want, crashed, 101.0, backoff) == [Restart(want["modbus"], "exited with code 137", 1)]


def test_backoff_grows_to_the_cap_and_never_gives_up() -> None:
    want = desired(spec("modbus"))
    backoff = BackoffState(POLICY)
    now = 0.0
    delays = []
    for _ in range(12):
        crashed = observed(obs("modbus", state="exited", since=now, exit_code=1))
        (wait,) = plan(want, crashed, now, backoff)
        assert isinstance(wait, Wait)
        delays.append(wait.until - now)
        now = wait.until
        steps = plan(want, crashed, now, backoff)
        assert summary(steps) == [("Restart", "modbus")]
        backoff = backoff.record(done(*steps), now)
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30, 30]
    assert backoff.count("modbus") == 12
    # a huge failure count neither overflows nor stops restarting
    assert Policy().delay(10_000) == Policy().backoff_cap


def test_crash_loop_is_visible_and_a_stable_run_forgets_it() -> None:
    backoff = BackoffState(POLICY)
    spec_ = spec("modbus")
    for n in range(3):
        assert not backoff.crash_looping("modbus")
        backoff = backoff.record(done(Restart(spec_, "exited", n + 1)), now=float(n))
    assert backoff.crash_looping("modbus")
    crashed = obs("modbus", state="exited", since=10.0, exit_code=2)
    assert describe_state("modbus", crashed, backoff, now=10.0) == (
        "crash-looping (exited with code 2; restart in 8s)")
    running = obs("modbus", since=10.0, health="starting", health_since=10.0)
    assert describe_state("modbus", running, backoff, now=11.0) == (
        "crash-looping (3 failures without a 60s stable run)")
    # healthy, but not for long enough: the count stays
    healthy = obs("modbus", since=10.0, health="healthy", health_since=12.0)
    assert backoff.settle(observed(healthy), now=60.0).count("modbus") == 3
    assert describe_state("modbus", healthy, backoff, now=60.0) == "running"
    settled = backoff.settle(observed(healthy), now=72.0)
    assert settled.count("modbus") == 0
    assert not settled.crash_looping("modbus")


def test_unhealthy_beyond_the_grace_is_restarted() -> None:
    want = desired(spec("forwarder"))
    backoff = BackoffState(POLICY)
    sick = observed(obs("forwarder", since=0.0, health="unhealthy", health_since=50.0))
    assert plan(want, sick, 55.0, backoff) == [Wait("forwarder", 60.0, "unhealthy for 5s")]
    assert plan(want, sick, 60.0, backoff) == [Restart(want["forwarder"], "unhealthy for 10s", 1)]


def test_never_healthy_after_start_is_restarted_after_the_start_grace() -> None:
    want = desired(spec("opcua"))
    slow = observed(obs("opcua", since=100.0, health="starting", health_since=100.0))
    assert summary(plan(want, slow, 119.0, BackoffState(POLICY))) == [("Wait", "opcua")]
    assert summary(plan(want, slow, 120.0, BackoffState(POLICY))) == [("Restart", "opcua")]


def test_unhealthy_restarts_back_off_too() -> None:
    want = desired(spec("modbus"))
    backoff = BackoffState(POLICY)
    for n in range(5):
        backoff = backoff.record(done(Restart(want["modbus"], "unhealthy", n + 1)), now=100.0)
    # grace passed long ago, but the last restart was at 100 and 5 failures mean 30s (capped)
    sick = observed(obs("modbus", since=100.0, health="unhealthy", health_since=0.0))
    assert plan(want, sick, 110.0, backoff) == [Wait("modbus", 130.0, "unhealthy for 110s")]


def test_a_recreate_starts_the_failure_count_afresh() -> None:
    backoff = BackoffState(POLICY).record(done(*[Restart(spec("modbus"), "x", 1)] * 4), now=1.0)
    assert backoff.count("modbus") == 4
    backoff = backoff.record(done(Recreate(spec("modbus", "h2"), "stop-first", "config")), now=2.0)
    assert backoff.count("modbus") == 0


def test_shutdown_stops_collectors_before_the_forwarder_and_skips_exited() -> None:
    have = observed(obs("forwarder"), obs("opcua"), obs("modbus"), obs("x", state="exited"))
    assert plan_shutdown(have) == [
        Stop("modbus", "supervisor stopping"),
        Stop("opcua", "supervisor stopping"),
        Stop("forwarder", "supervisor stopping"),
    ]


def test_remove_forgets_the_backoff() -> None:
    backoff = BackoffState(POLICY).record(done(Restart(spec("opcua"), "x", 1)), now=1.0)
    assert backoff.record(done(Remove("opcua", "gone")), now=2.0).count("opcua") == 0


def test_steps_read_as_log_lines() -> None:
    assert str(Start(spec("modbus"), "not running")) == "start modbus (not running)"
    assert str(Restart(spec("modbus"), "exited with code 1", 2)) == (
        "restart modbus (exited with code 1; attempt 2)")
    assert str(Recreate(spec("opcua"), "start-first", "config a -> b")) == (
        "recreate opcua start-first (config a -> b)")


def test_config_hash_is_stable_and_sensitive() -> None:
    assert config_hash({"b": 1, "a": [1, 2]}, ("x",)) == config_hash({"a": [1, 2], "b": 1}, ["x"])
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash("x")) == 16


def test_plan_is_deterministic() -> None:
    want = desired(spec("opcua", "h9"), spec("modbus", "h9"), spec("forwarder", "h9"))
    have = observed(obs("opcua"), obs("forwarder", state="exited", since=0.0), obs("gone"), obs("modbus"))
    first = plan(want, have, 50.0, BackoffState(POLICY))
    shuffled = plan(dict(reversed(want.items())), dict(reversed(have.items())), 50.0, BackoffState(POLICY))
    assert first == shuffled
    assert summary(first) == [("Remove", "gone"), ("Recreate", "forwarder"), ("Recreate", "modbus"),
                              ("Recreate", "opcua")]


# ------------------------------------------------------------------ failed executions

MODBUS = spec("modbus", image="c-modbus:1")
MISSING = "image c-modbus:1 is not on this engine"

# (title, the step that failed, its failure, what runs meanwhile, the step planned when due)
FAILED = [
    ("a start whose image is missing waits, then starts again",
     Start(MODBUS, "not running"), "image-missing", None, "Start"),
    ("a program that cannot start waits, then starts again",
     Start(spec("modbus"), "not running"), "cannot-start", None, "Start"),
    ("a failed start-first recreate leaves the old one running and waits",
     Recreate(MODBUS, "start-first", "image c-modbus:0 -> c-modbus:1"), "image-missing",
     obs("modbus", image="c-modbus:0", health="healthy"), "Recreate"),
    ("a failed restart of a crashed service waits too",
     Restart(MODBUS, "exited with code 1", 1), "engine",
     obs("modbus", state="exited", since=0.0, exit_code=1, image="c-modbus:1"), "Restart"),
    ("a failed remove is not retried at once either",
     Remove("modbus", "no longer configured"), "engine", obs("modbus"), "Remove"),
]


@pytest.mark.parametrize(("title", "step", "kind", "running", "again"), FAILED, ids=[c[0] for c in FAILED])
def test_a_failed_execution_is_held_for_its_backoff_then_tried_again(
    title: str, step: Step, kind: str, running: Observed | None, again: str
) -> None:
    want = {} if isinstance(step, Remove) else desired(step.spec)  # type: ignore[union-attr]
    have = observed(running) if running is not None else {}
    backoff = BackoffState(POLICY).record([Outcome.failed(step, kind, "why")], now=100.0)  # type: ignore[arg-type]
    failure = backoff.failed["modbus"]
    due = 100.0 + POLICY.delay(0)
    assert failure.retry_at == due and failure.attempts == 1
    # a failed restart is a restart too: it counts towards the crash loop
    assert backoff.count("modbus") == (1 if isinstance(step, Restart) else 0)
    verb = type(step).__name__.lower()
    assert plan(want, have, 100.5, backoff) == [Wait("modbus", due, f"{verb} failed: why")]
    assert backoff.next_retry(100.5) == due and backoff.next_retry(due) is None
    assert summary(plan(want, have, due, backoff)) == [(again, "modbus")]


def test_repeated_failures_of_one_attempt_back_off_to_the_cap_and_a_new_config_is_tried_at_once() -> None:
    want = desired(MODBUS)
    backoff = BackoffState(POLICY)
    now, delays = 0.0, []
    for _ in range(8):
        (step,) = plan(want, {}, now, backoff)
        assert isinstance(step, Start)
        backoff = backoff.record([Outcome.failed(step, "image-missing", MISSING)], now)
        (wait,) = plan(want, {}, now, backoff)
        assert isinstance(wait, Wait) and wait.reason == f"start failed: {MISSING}"
        delays.append(wait.until - now)
        now = wait.until
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.failed["modbus"].attempts == 8
    # the image name fixed in gateway.yaml: the new spec does not wait for the old one's backoff
    fixed = desired(spec("modbus", "h2", image="c-modbus:2"))
    assert summary(plan(fixed, {}, now - 20, backoff)) == [("Start", "modbus")]
    backoff = backoff.record(done(Start(fixed["modbus"], "not running")), now)
    assert "modbus" not in backoff.failed and backoff.count("modbus") == 0


def test_a_failed_recreate_is_forgotten_when_the_config_goes_back() -> None:
    recreate = Recreate(MODBUS, "start-first", "image c-modbus:0 -> c-modbus:1")
    backoff = BackoffState(POLICY).record([Outcome.failed(recreate, "image-missing", MISSING)], 10.0)
    running = observed(obs("modbus", image="c-modbus:0", health="healthy"))
    assert backoff.settle(running, 11.0, desired(MODBUS)).failed  # still wanted: still held
    reverted = desired(spec("modbus", image="c-modbus:0"))
    assert not backoff.settle(running, 11.0, reverted).failed
    assert describe_state("modbus", running["modbus"], backoff.settle(running, 11.0, reverted), 11.0) == "running"


STATUS_WORDS = [
    ("image missing, nothing runs",
     Start(MODBUS, "not running"), "image-missing", MISSING, None,
     f"image missing ({MISSING}; next try in 1s)"),
    ("a program that cannot start",
     Start(spec("modbus"), "not running"), "cannot-start", "[Errno 2] No such file or directory: 'x'", None,
     "start failed ([Errno 2] No such file or directory: 'x'; next try in 1s)"),
    ("the old one runs on while the update's image is missing",
     Recreate(MODBUS, "start-first", "image"), "image-missing", MISSING,
     obs("modbus", image="c-modbus:0", health="healthy"),
     f"running (recreate failed: {MISSING}; next try in 1s)"),
]


@pytest.mark.parametrize(("title", "step", "kind", "reason", "running", "word"), STATUS_WORDS,
                         ids=[c[0] for c in STATUS_WORDS])
def test_status_says_why_a_failed_step_waits(
    title: str, step: Step, kind: str, reason: str, running: Observed | None, word: str
) -> None:
    backoff = BackoffState(POLICY).record([Outcome.failed(step, kind, reason)], now=100.0)  # type: ignore[arg-type]
    assert describe_state("modbus", running, backoff, now=100.0) == word


# ------------------------------------------------------------------ restarts the runtime makes itself


def restarting(count: int, since: float, instance: str = "c1", **kw: object) -> Observed:
    return obs("modbus", state="restarting", since=since, instance=instance, restart_count=count,
               exit_code=137, oom_killed=True, **kw)  # type: ignore[arg-type]


def test_engine_restarts_count_as_failures_and_make_a_crash_loop_that_lasts_until_a_stable_run() -> None:
    """The Engine's delay doubles to a minute and stays there: its restarts are then a minute
    apart, yet the service is crash-looping until it runs `stable_after` (60 s here)."""
    want = desired(spec("modbus"))
    backoff = BackoffState(POLICY).settle(observed(restarting(5, 0.0)), 0.0)
    assert backoff.count("modbus") == 0  # what happened before we looked is not ours to count
    assert describe_state("modbus", restarting(5, 0.0), backoff, 0.0) == (
        "restarting (last exited with code 137, out of memory)")
    now = 0.0
    for count in (6, 7, 8):
        now += 60
        up = obs("modbus", since=now, instance="c1", restart_count=count - 1, health="starting")
        backoff = backoff.settle(observed(up), now + 2)
        down = restarting(count, now + 2)
        backoff = backoff.settle(observed(down), now + 2)
        assert plan(want, observed(down), now + 2, backoff) == []  # the Engine restarts it: not us
    assert backoff.count("modbus") == 3 and backoff.crash_looping("modbus")
    assert describe_state("modbus", restarting(8, now + 2), backoff, now + 3) == (
        "crash-looping (3 failures without a 60s stable run; last exited with code 137, out of memory)")
    healthy = obs("modbus", since=now + 60, instance="c1", restart_count=8, health="healthy",
                  health_since=now + 61)
    assert backoff.settle(observed(healthy), now + 100).crash_looping("modbus")  # not for long yet
    settled = backoff.settle(observed(healthy), now + 121)
    assert settled.count("modbus") == 0
    assert describe_state("modbus", healthy, settled, now + 121) == "running"
    # a new container starts its own count
    fresh = backoff.settle(observed(restarting(1, now, instance="c2")), now)
    assert fresh.count("modbus") == 3


RESTARTING = [
    ("restarting on the current config: left to the Engine",
     desired(spec("modbus")), observed(restarting(4, 99.0)), []),
    ("restarting on an old config (a broken update it loops on): recreated at once",
     desired(spec("modbus", "h2")), observed(restarting(4, 99.0)), [("Recreate", "modbus")]),
    ("restarting on an old image: recreated at once",
     desired(spec("modbus", image="c-modbus:2")), observed(restarting(4, 99.0, image="c-modbus:1")),
     [("Recreate", "modbus")]),
]


@pytest.mark.parametrize(("title", "want", "have", "expected"), RESTARTING, ids=[c[0] for c in RESTARTING])
def test_a_service_the_runtime_restarts_itself(title: str, want: dict[str, ServiceSpec],
                                              have: dict[str, Observed], expected: list[tuple[str, str]]) -> None:
    assert summary(plan(want, have, 100.0, BackoffState(POLICY))) == expected


# ------------------------------------------------------------------ update order and the start-first handover


def net_spec(update: str = "start-first", host: bool = False, port: int | None = 9110,
             devices: tuple[str, ...] = (), hash_: str = "h2", standby: bool = False) -> ServiceSpec:
    return ServiceSpec(name="opcua", command=("c",), config_hash=hash_, image="c-opcua:2", update=update,  # type: ignore[arg-type]
                       metrics_port=port, host_network=host, devices=devices, standby=standby)


ORDER = [
    ("start-first on a bridge network", net_spec(), "start-first", ""),
    ("stop-first asked", net_spec("stop-first"), "stop-first", ""),
    ("host network: one metrics port", net_spec(host=True), "stop-first",
     "start-first would need metrics port 9110 twice on the host"),
    ("host network without a metrics port", net_spec(host=True, port=None), "start-first", ""),
    ("a serial port has one owner", net_spec(devices=("/dev/ttyUSB0",)), "stop-first",
     "start-first would need two owners of a serial port"),
    ("host network, a collector that starts as a standby on a port of its own",
     net_spec(host=True, standby=True), "start-first", ""),
    ("a standby on a bridge network", net_spec(standby=True), "start-first", ""),
    ("a standby still cannot share a serial port", net_spec(host=True, standby=True, devices=("/dev/ttyUSB0",)),
     "stop-first", "start-first would need two owners of a serial port"),
    ("a standby asked to update stop-first", net_spec("stop-first", host=True, standby=True), "stop-first", ""),
]


@pytest.mark.parametrize(("title", "want", "order", "why"), ORDER, ids=[c[0] for c in ORDER])
def test_the_planner_chooses_the_update_order_from_what_the_runtime_reports(
    title: str, want: ServiceSpec, order: str, why: str
) -> None:
    assert update_order(want) == (order, why)
    running = observed(obs("opcua", image="c-opcua:1", health="healthy"))
    (step,) = plan(desired(want), running, 100.0, BackoffState(POLICY))
    assert isinstance(step, Recreate) and step.order == order
    assert step.reason == "image c-opcua:1 -> c-opcua:2" + (f"; {why}" if why else "")


def test_a_crashed_service_is_recreated_stop_first_even_when_start_first_is_asked() -> None:
    crashed = observed(obs("opcua", state="exited", exit_code=1, image="c-opcua:1"))
    (step,) = plan(desired(net_spec()), crashed, 100.0, BackoffState(POLICY))
    assert step == Recreate(net_spec(), "stop-first", "image c-opcua:1 -> c-opcua:2; the old one is not running")


OLD = obs("opcua", image="c-opcua:1", health="healthy", since=0.0)


def beside(**kw: object) -> dict[str, Observed]:
    new = obs("opcua", hash_="h2", image="c-opcua:2", since=100.0, **kw)  # type: ignore[arg-type]
    return observed(replace(OLD, candidate=new))


HANDOVER = [
    ("new one starting: wait, at most the start grace",
     beside(health="starting"), 110.0, Wait("opcua", 120.0, "the new instance is starting beside the old one")),
    ("new one healthy: hand over",
     beside(health="healthy"), 110.0, Handover(net_spec(), "healthy")),
    ("new one without a health check, running: hand over",
     beside(health=None), 110.0, Handover(net_spec(), "running; no health check")),
    ("new one exited: roll back",
     beside(state="exited", exit_code=2), 110.0, Rollback(net_spec(), "the new instance exited with code 2")),
    ("new one restarted by the Engine: roll back",
     beside(state="restarting", exit_code=137, oom_killed=True), 110.0,
     Rollback(net_spec(), "the new instance exited with code 137, out of memory")),
    ("new one unhealthy: roll back",
     beside(health="unhealthy"), 110.0, Rollback(net_spec(), "the new instance is unhealthy")),
    ("new one not healthy within the start grace: roll back",
     beside(health="starting"), 120.0, Rollback(net_spec(), "the new instance is not healthy 20s after starting")),
]


@pytest.mark.parametrize(("title", "have", "now", "expected"), HANDOVER, ids=[c[0] for c in HANDOVER])
def test_the_start_first_handover_is_steps_the_loop_drives(
    title: str, have: dict[str, Observed], now: float, expected: Step
) -> None:
    assert plan(desired(net_spec()), have, now, BackoffState(POLICY)) == [expected]


def test_a_new_instance_overtaken_by_another_change_is_dropped_without_a_failure() -> None:
    newer = net_spec(hash_="h3")
    (step,) = plan(desired(newer), beside(health="healthy"), 110.0, BackoffState(POLICY))
    assert step == Rollback(newer, "the new instance is not what the config asks for now", failed=False)
    assert not BackoffState(POLICY).record(done(step), 110.0).failed


def test_a_failed_handover_keeps_the_old_one_and_backs_off_the_same_update() -> None:
    want = desired(net_spec())
    backoff = BackoffState(POLICY)
    now, delays = 100.0, []
    for _ in range(4):
        (recreate,) = plan(want, observed(OLD), now, backoff)
        assert recreate == Recreate(net_spec(), "start-first", "image c-opcua:1 -> c-opcua:2")
        backoff = backoff.record(done(recreate), now)
        new = obs("opcua", hash_="h2", image="c-opcua:2", since=now, health="starting")
        have = observed(replace(OLD, candidate=new))
        assert describe_state("opcua", have["opcua"], backoff, now + 1) == (
            "running (new instance c-opcua:2 starting beside it)")
        now += POLICY.start_grace
        (rollback,) = plan(want, have, now, backoff)
        assert isinstance(rollback, Rollback) and rollback.failed
        backoff = backoff.record(done(rollback), now)
        (wait,) = plan(want, observed(OLD), now, backoff)
        assert isinstance(wait, Wait)
        assert wait.reason == "recreate failed: the new instance is not healthy 20s after starting"
        assert describe_state("opcua", OLD, backoff, now).startswith("running (recreate failed: the new instance")
        delays.append(wait.until - now)
        now = wait.until
    assert delays == [1, 2, 4, 8]
    # the healthy handover ends the episode
    (recreate,) = plan(want, observed(OLD), now, backoff)
    backoff = backoff.record(done(recreate), now)
    (handover,) = plan(want, beside(health="healthy"), now + 5, backoff)
    assert isinstance(handover, Handover)
    backoff = backoff.record(done(handover), now + 5)
    assert not backoff.failed and backoff.count("opcua") == 0
