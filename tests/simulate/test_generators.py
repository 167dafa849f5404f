"""The value generator every simulator shares: each kind's curve, table-driven, no clock."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from collectors.core.simulate import Signal, Simulate, signal_for

pytestmark = pytest.mark.unit

S = Simulate


# (spec, t, expected value)
CASES = [
    # sine: mid at t=0, max a quarter period later, min at three quarters
    (S(kind="sine", min=0, max=100, period=4), 0.0, 50.0),
    (S(kind="sine", min=0, max=100, period=4), 1.0, 100.0),
    (S(kind="sine", min=0, max=100, period=4), 3.0, 0.0),
    (S(kind="sine", min=0, max=100, period=4), 4.0, 50.0),
    (S(kind="sine", min=10, max=20, period="2s", value=20), 0.0, 20.0),  # starts at its initial value
    # ramp: sawtooth min -> max over one period
    (S(kind="ramp", min=0, max=10, period=10), 0.0, 0.0),
    (S(kind="ramp", min=0, max=10, period=10), 2.5, 2.5),
    (S(kind="ramp", min=0, max=10, period=10), 12.5, 2.5),
    (S(kind="ramp", min=-5, max=5, period="1m", value=0), 0.0, 0.0),
    # counter: +step once a second, wraps past max to min
    (S(kind="counter", min=0, max=5, step=1), 0.0, 0.0),
    (S(kind="counter", min=0, max=5, step=1), 0.99, 0.0),
    (S(kind="counter", min=0, max=5, step=1), 3.2, 3.0),
    (S(kind="counter", min=0, max=5, step=1), 5.0, 5.0),
    (S(kind="counter", min=0, max=5, step=1), 6.0, 0.0),
    (S(kind="counter", min=100, max=200, step=10, value=150), 2.0, 170.0),
    # constant: the value as given, else min
    (S(kind="constant", value=42.5), 1e6, 42.5),
    (S(kind="constant", value="RECIPE-7"), 3.0, "RECIPE-7"),
    (S(kind="constant", value=True), 0.0, True),
    (S(kind="constant", min=7), 9.0, 7.0),
]


@pytest.mark.parametrize(("spec", "t", "expected"), CASES)
def test_value_at_time(spec: Simulate, t: float, expected: object) -> None:
    value = Signal(spec).at(t)
    if isinstance(expected, float):
        assert value == pytest.approx(expected, abs=1e-9)
    else:
        assert value == expected


# (spec, t, expected bool)
BOOL_CASES = [
    (S(kind="sine", period=4), 0.5, True),  # upper half of 0..100
    (S(kind="sine", period=4), 2.5, False),
    (S(kind="ramp", period=10), 6.0, True),
    (S(kind="constant", value=1), 0.0, True),
    (S(kind="constant", value=0), 0.0, False),
    (S(kind="constant", value="on"), 0.0, True),
    (S(kind="constant", value=False), 0.0, False),
]


@pytest.mark.parametrize(("spec", "t", "expected"), BOOL_CASES)
def test_bool_at_time(spec: Simulate, t: float, expected: bool) -> None:
    assert Signal(spec).bool_at(t) is expected


def test_random_walk_stays_in_range_moves_slowly_and_repeats() -> None:
    spec = S(kind="random", min=0, max=10, step=5, value=5)
    walk = Signal(spec, seed=1)
    values = [walk.number_at(i * 0.1) for i in range(2000)]
    assert all(0 <= v <= 10 for v in values)
    assert values[0] == 5.0
    # at most `step` per second, i.e. 0.5 per 100 ms grid step
    assert max(abs(b - a) for a, b in itertools.pairwise(values)) <= 0.5 + 1e-9
    assert len({round(v, 6) for v in values}) > 1000  # it does move
    # the value depends on t only, not on how often it was asked
    assert Signal(spec, seed=1).at(150.0) == pytest.approx(walk.at(150.0))
    assert walk.at(3.0) == pytest.approx(values[30])  # back in time replays the same walk
    assert Signal(spec, seed=2).at(150.0) != pytest.approx(walk.at(150.0))


def test_seed_in_the_spec_wins() -> None:
    spec = S(kind="random", seed=7)
    assert Signal(spec, seed=1).at(60.0) == Signal(spec, seed=2).at(60.0)


DEFAULTS = [
    # (shape, writable, t, expected): measurements move, setpoints and texts hold still
    ("number", False, 15.0, 100.0),  # default sine 0..100 over 60 s
    ("number", True, 15.0, 0.0),
    ("bool", False, 15.0, True),
    ("bool", False, 45.0, False),
    ("bool", True, 15.0, False),
    ("text", False, 15.0, "recipe"),
]


@pytest.mark.parametrize(("shape", "writable", "t", "expected"), DEFAULTS)
def test_default_signal_without_a_simulate_key(
    shape: str, writable: bool, t: float, expected: object
) -> None:
    sig = signal_for(None, device="press-1", tag="recipe", shape=shape, writable=writable)  # type: ignore[arg-type]
    value = sig.bool_at(t) if shape == "bool" else sig.at(t)
    assert value == (pytest.approx(expected) if isinstance(expected, float) else expected)


def test_default_seed_differs_per_tag_and_repeats_per_name() -> None:
    spec = S(kind="random")
    a = signal_for(spec, device="d", tag="a", shape="number").at(30.0)
    assert a == signal_for(spec, device="d", tag="a", shape="number").at(30.0)
    assert a != signal_for(spec, device="d", tag="b", shape="number").at(30.0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"min": 5, "max": 1}, "must not be above max"),
        ({"kind": "sine", "value": "x"}, "only works with kind: constant"),
        ({"period": "0s"}, "greater than 0"),
        ({"step": 0}, "greater than 0"),
        ({"kind": "square"}, "'sine', 'ramp', 'counter', 'random' or 'constant'"),
    ],
)
def test_invalid_specs_say_what_is_allowed(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Simulate.model_validate(raw)
