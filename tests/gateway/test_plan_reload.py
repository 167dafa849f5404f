"""The planner's reload-in-place rule, as a table: only a slice's devices changed -> Reload."""

from __future__ import annotations

import pytest

from gateway.plan import BackoffState, Observed, Outcome, Policy, Reload, ServiceSpec, Step, Wait, plan

pytestmark = pytest.mark.unit

POLICY = Policy(backoff_initial=1, backoff_factor=2, backoff_cap=30)


def spec(hash_: str = "h2", reload: str | None = "r1", image: str | None = None, **kw: object) -> ServiceSpec:
    return ServiceSpec(name="modbus", command=("c",), config_hash=hash_, reload_hash=reload, image=image,
                       **kw)  # type: ignore[arg-type]


def obs(hash_: str = "h1", reload: str | None = "r1", state: str = "running", image: str | None = None,
        **kw: object) -> Observed:
    return Observed(name="modbus", state=state, config_hash=hash_, since=0.0, reload_hash=reload,  # type: ignore[arg-type]
                    image=image, **kw)


def kinds(steps: list[Step]) -> list[str]:
    return [type(s).__name__ for s in steps]


CASES = [
    ("only devices changed, running: reloaded in place", spec(), obs(), ["Reload"]),
    ("nothing changed: nothing to do", spec(hash_="h1"), obs(), []),
    ("settings beyond the devices changed (reload hash differs): recreated",
     spec(reload="r2"), obs(), ["Recreate"]),
    ("a service that cannot reload (no reload hash): recreated", spec(reload=None), obs(reload=None),
     ["Recreate"]),
    ("the running instance's reload hash is unknown: recreated", spec(), obs(reload=None), ["Recreate"]),
    ("image changed too: recreated", spec(image="fg:2"), obs(image="fg:1"), ["Recreate"]),
    ("same image, devices changed: reloaded", spec(image="fg:1"), obs(image="fg:1"), ["Reload"]),
    ("crashed: recreated with the new config at once", spec(), obs(state="exited", exit_code=1),
     ["Recreate"]),
    ("stopping: left alone", spec(), obs(state="stopping"), []),
    ("created, never started: recreated", spec(), obs(state="created"), ["Recreate"]),
]


@pytest.mark.parametrize(("title", "want", "have", "expected"), CASES, ids=[c[0] for c in CASES])
def test_reload_table(title: str, want: ServiceSpec, have: Observed, expected: list[str]) -> None:
    assert kinds(plan({"modbus": want}, {"modbus": have}, 10.0, BackoffState(POLICY))) == expected


def test_a_failed_reload_falls_back_to_a_recreate_at_once() -> None:
    want, have = spec(), obs()
    steps = plan({"modbus": want}, {"modbus": have}, 10.0, BackoffState(POLICY))
    assert kinds(steps) == ["Reload"]
    backoff = BackoffState(POLICY).record([Outcome.failed(steps[0], "error", "no such process")], 10.0)
    again = plan({"modbus": want}, {"modbus": have}, 10.0, backoff)
    assert kinds(again) == ["Recreate"]
    assert "devices" not in str(again[0])


def test_a_done_reload_keeps_the_failure_count_and_the_next_config_reloads_again() -> None:
    backoff = BackoffState(POLICY, failures={"modbus": 2})
    step = Reload(spec(), "config h1 -> h2; devices only")
    after = backoff.record([Outcome.done(step)], 10.0)
    assert after.count("modbus") == 2
    assert "modbus" not in after.failed
    # the runtime now reports the new hash; a third config that changes devices reloads again
    steps = plan({"modbus": spec(hash_="h3")}, {"modbus": obs(hash_="h2")}, 11.0, after)
    assert kinds(steps) == ["Reload"]
    assert str(steps[0]) == "reload modbus in place (config h2 -> h3; devices only)"


def test_a_failed_reload_of_an_older_config_does_not_stop_a_newer_one_reloading() -> None:
    old = Reload(spec(), "x")
    backoff = BackoffState(POLICY).record([Outcome.failed(old, "error", "gone")], 10.0)
    steps = plan({"modbus": spec(hash_="h3")}, {"modbus": obs()}, 10.5, backoff.settle(
        {"modbus": obs()}, 10.5, {"modbus": spec(hash_="h3")}))
    assert kinds(steps) == ["Reload"]
    assert not any(isinstance(s, Wait) for s in steps)
