"""Config building blocks shared by every collector and the forwarder.

Durations are written `250ms`, `1s`, `2m`, `1h` and held as float seconds; sizes are
written `256MiB`, `1GB`, `4096` and held as int bytes. Every model is strict (unknown
keys are errors) and frozen, and every field has a description, so the JSON Schema
that `fieldgate schema` prints and the docs come from one source.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationInfo,
    WithJsonSchema,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_SIZE_FACTORS = {
    None: 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
}


def parse_duration(value: Any) -> float:
    """`250ms` -> 0.25. Numbers are taken as seconds (rendered slices carry floats)."""
    if isinstance(value, bool):
        raise ValueError("a duration is written like 250ms, 1s, 2m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration: write it like 250ms, 1s, 2m or 1h")
        seconds = float(match.group(1)) * _DURATION_FACTORS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    if ms % 3_600_000 == 0 and ms:
        return f"{ms // 3_600_000}h"
    if ms % 60_000 == 0 and ms:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def parse_size(value: Any) -> int:
    """`256MiB` -> 268435456; a bare number is bytes."""
    if isinstance(value, bool):
        raise ValueError("a size is written like 4096, 64KiB, 256MiB or 1GB")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a size: write it like 4096, 64KiB, 256MiB or 1GB")
        size = int(float(match.group(1)) * _SIZE_FACTORS[match.group(2)])
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h)$", "examples": ["250ms", "1s", "2m"]}),
]

ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\d+(\.\d+)?(B|KB|MB|GB|KiB|MiB|GiB)?$"},
            ],
            "examples": ["64KiB", "256MiB"],
        }
    ),
]


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def password_from_env(data: Any, info: ValidationInfo) -> Any:
    """Before-validator of models with `password` and `password_env`: fills `password` from
    the environment variable named by `password_env` (the environment is the validation
    context's "env" when given, else the process's). Rendered slices use this so that no
    password is ever written into a config file."""
    if not isinstance(data, dict) or not data.get("password_env"):
        return data
    name = str(data["password_env"])
    env = info.context.get("env", os.environ) if isinstance(info.context, dict) else os.environ
    if name not in env:
        raise ValueError(f"password_env: environment variable {name} is not set")
    return {**data, "password": env[name]}


def read_secret(value: SecretStr | None, file: Path | None) -> str | None:
    """A secret given inline (usually `${VAR}`) or as a file (docker/k8s secrets); never logged."""
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        return file.read_text().strip()
    return None


def read_slice(path: Path) -> Any:
    """A rendered config slice (YAML or JSON) as plain data, parsed by libyaml when PyYAML has it:
    the pure-Python parser's node graph left ~20 KB of RSS per tag behind (a 2,000-tag slice took
    the collector from 38 to 79 MB; libyaml 63 MB)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(path.read_text(), Loader=loader)  # a safe loader: plain data only


class HandoffConfig(StrictModel):
    """Where collectors and the forwarder meet on this machine."""

    socket: Path = Field(
        Path("/run/fieldgate/handoff.sock"),
        description="Unix socket the forwarder listens on and every collector connects to",
    )
    batch_max: int = Field(5000, ge=1, description="most readings in one hand-off batch")
    # 2 ms: the linger is most of the latency from poll to broker at plant rates (bench_e2e.py at
    # 1,000 readings/s: p50 14 ms with 10 ms, 6-7 ms with 2 ms), and at 200k readings/s a batch
    # still holds hundreds of readings, so the CPU per reading stays the same.
    linger: Duration = Field(0.002, description="how long a collector waits to fill a batch before sending it")
    queue_max: int = Field(
        1_000_000,
        ge=1000,
        description="readings a collector holds while the forwarder is away; the oldest are dropped past this",
    )


class CollectorSettings(StrictModel):
    """What every collector's rendered config carries besides its devices."""

    name: str = Field(description="collector name: the protocol, e.g. modbus")
    handoff: HandoffConfig = Field(default_factory=HandoffConfig, description="the hand-off to the forwarder")
    metrics_port: int | None = Field(None, description="Prometheus /metrics and /healthz port; none to disable")
    state_dir: Path = Field(
        Path("/var/lib/fieldgate/state"), description="where the collector keeps what must survive restarts"
    )
    log_level: str = Field("INFO", description="DEBUG | INFO | WARNING | ERROR")
