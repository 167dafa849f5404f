"""How simulators move a tag's value: the `simulate:` key of a tag, and the value generator
every protocol's simulator shares.

A `Signal` turns a `Simulate` spec into a value as a function of the time since the
simulation started, so two simulators (Modbus, OPC UA) serving the same spec show the same
curve, and a test can ask for the value at t=12.5 s without sleeping. The random walk is
seeded and steps on a fixed time grid, so it too depends only on the spec, the seed and t.
`bind_problem` is the other thing simulators share: why an endpoint cannot be served, in words.
"""

from __future__ import annotations

import errno
import math
import random
import socket
import zlib
from collections.abc import Callable
from typing import Literal

from collectors.core.config import Duration, StrictModel
from collectors.core.modelbase import Field, model_validator

SimValue = float | bool | str


class Simulate(StrictModel):
    """How `fieldgate simulate` moves this tag's value (ignored by the collector)."""

    kind: Literal["sine", "ramp", "counter", "random", "constant"] = Field(
        "sine", description="sine | ramp | counter | random (random walk) | constant"
    )
    min: float = Field(0.0, description="lowest value (engineering units)")
    max: float = Field(100.0, description="highest value (engineering units)")
    period: Duration = Field(60.0, gt=0, description="time for one sine or ramp cycle")
    step: float = Field(
        1.0, gt=0, description="counter increment, or largest random-walk step, per second"
    )
    value: float | bool | str | None = Field(None, description="constant value, and the initial value")
    seed: int | None = Field(
        None, description="random-walk seed; default: derived from the device and tag names (repeatable)"
    )

    @model_validator(mode="after")
    def _range(self) -> Simulate:
        if self.min > self.max:
            raise ValueError(f"min ({self.min:g}) must not be above max ({self.max:g})")
        if isinstance(self.value, str) and self.kind != "constant":
            raise ValueError(f"a text value only works with kind: constant, not {self.kind}")
        return self

    @property
    def start(self) -> float | None:
        """The numeric initial value, if one was given."""
        if isinstance(self.value, str) or self.value is None:
            return None
        return float(self.value)


def _fraction(spec: Simulate) -> float:
    """Where in [0, 1] of the min..max range the initial value sits (0 without one)."""
    start, span = spec.start, spec.max - spec.min
    if start is None or span <= 0:
        return 0.0
    return min(1.0, max(0.0, (start - spec.min) / span))


def sine(spec: Simulate, t: float) -> float:
    """Between min and max, one cycle per period; starts at the initial value (default: mid, rising)."""
    mid, amplitude = (spec.min + spec.max) / 2, (spec.max - spec.min) / 2
    phase = math.asin(2 * _fraction(spec) - 1) if spec.start is not None else 0.0
    return mid + amplitude * math.sin(2 * math.pi * t / spec.period + phase)


def ramp(spec: Simulate, t: float) -> float:
    """Rises linearly from min to max over one period, then starts again at min (sawtooth)."""
    return spec.min + (spec.max - spec.min) * ((t / spec.period + _fraction(spec)) % 1.0)


def counter(spec: Simulate, t: float) -> float:
    """Adds step once a second; past max it wraps to min, like a meter rolling over."""
    positions = math.floor((spec.max - spec.min) / spec.step) + 1
    first = round(_fraction(spec) * (positions - 1))
    return spec.min + spec.step * ((first + math.floor(t)) % positions)


def constant(spec: Simulate, t: float) -> SimValue:
    """The given value, else min."""
    return spec.value if spec.value is not None else spec.min


class RandomWalk:
    """Moves by at most `step` per second in random steps on a 100 ms grid, reflected at min and max.

    The value at t depends only on the spec, the seed and t: the walk replays its grid steps
    from the start when asked for an earlier time.
    """

    GRID = 0.1  # seconds per random step

    def __init__(self, spec: Simulate, seed: int) -> None:
        self._spec = spec
        self._seed = seed
        self._reset()

    def _reset(self) -> None:
        spec = self._spec
        self._rng = random.Random(self._seed)
        self._steps = 0
        start = spec.start
        self._value = (spec.min + spec.max) / 2 if start is None else min(spec.max, max(spec.min, start))

    def __call__(self, t: float) -> float:
        spec = self._spec
        target = math.floor(t / self.GRID + 1e-9)
        if target < self._steps:
            self._reset()
        largest = spec.step * self.GRID
        low, high = spec.min, spec.max
        value = self._value
        for _ in range(target - self._steps):
            value += self._rng.uniform(-largest, largest)
            if value > high:
                value = max(low, 2 * high - value)
            elif value < low:
                value = min(high, 2 * low - value)
        self._steps = max(target, self._steps)
        self._value = value
        return value


_PURE = {"sine": sine, "ramp": ramp, "counter": counter, "constant": constant}


class Signal:
    """A tag's simulated value as a function of seconds since the simulation started."""

    def __init__(self, spec: Simulate, seed: int = 0) -> None:
        self.spec = spec
        self._at: Callable[[float], SimValue]
        if spec.kind == "random":
            self._at = RandomWalk(spec, spec.seed if spec.seed is not None else seed)
        else:
            pure = _PURE[spec.kind]
            self._at = lambda t: pure(spec, t)

    def at(self, t: float) -> SimValue:
        """The value at t (float for the moving kinds; constant returns its value as given)."""
        return self._at(t)

    def number_at(self, t: float) -> float:
        """The value as a number (a constant text must spell one: ValueError otherwise)."""
        return float(self._at(t))

    def bool_at(self, t: float) -> bool:
        """The value as a bool: a constant as given (text: true/on/yes/1), a moving value
        true in the upper half of min..max (so a sine or ramp flips twice per period)."""
        value = self._at(t)
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "on", "yes")
        if self.spec.kind == "constant":
            return bool(value)
        return value >= (self.spec.min + self.spec.max) / 2


def signal_for(
    spec: Simulate | None,
    *,
    device: str,
    tag: str,
    shape: Literal["number", "bool", "text"],
    writable: bool = False,
) -> Signal:
    """The signal of a tag, with the default a plant engineer would expect when `simulate:` is absent.

    Measurements move (a sine over 0..100; a bool flips every half minute) so a demo is
    alive; setpoints (writable tags) and texts hold still until someone writes them.
    The seed comes from the names, so every run and every simulator shows the same walk.
    """
    seed = zlib.crc32(f"{device}/{tag}".encode())
    if spec is None:
        if shape == "text":
            spec = Simulate(kind="constant", value=tag)
        elif writable:
            spec = Simulate(kind="constant", value=False if shape == "bool" else 0.0)
        else:
            spec = Simulate()
    return Signal(spec, seed)


def bind_problem(host: str, port: int) -> str | None:
    """Why a simulator cannot listen on host:port, said for the person running it (None: it can).

    Server libraries log a bind failure deep inside their start-up; checking first lets
    `fieldgate simulate` name the device and say what to do instead.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"{host} does not resolve ({exc.strerror})"
    family, _type, _proto, _name, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return {
                errno.EADDRNOTAVAIL: f"{host} is not an address of this machine: use --host 127.0.0.1",
                errno.EADDRINUSE: "something else listens there",
                errno.EACCES: "ports below 1024 need root",
            }.get(exc.errno or 0, exc.strerror or str(exc))
    return None
