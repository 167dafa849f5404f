"""How simulators move a tag's value: the `simulate:` key of a tag, shared by every protocol."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from collectors.core.config import Duration, StrictModel


class Simulate(StrictModel):
    """How `fieldgate simulate` moves this tag's value (ignored by the collector)."""

    kind: Literal["sine", "ramp", "counter", "random", "constant"] = Field(
        "sine", description="sine | ramp | counter | random (random walk) | constant"
    )
    min: float = Field(0.0, description="lowest value (engineering units)")
    max: float = Field(100.0, description="highest value (engineering units)")
    period: Duration = Field(60.0, description="time for one sine or ramp cycle")
    step: float = Field(1.0, description="counter increment, or largest random-walk step, per second")
    value: float | bool | str | None = Field(None, description="constant value, and the initial value")
