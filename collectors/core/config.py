"""Config building blocks shared by every collector and the forwarder.

Durations are written `250ms`, `1s`, `2m`, `1h` and held as float seconds; sizes are
written `256MiB`, `1GB`, `4096` and held as int bytes. Every model is strict (unknown
keys are errors) and frozen, and every field has a description, so the JSON Schema
that `fieldgate schema` prints and the docs come from one source.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any

from collectors.core.modelbase import (
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
        if not math.isfinite(seconds):  # YAML's .inf and .nan
            raise ValueError(f"{value!r} is not a duration: write it like 250ms, 1s, 2m or 1h")
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


def format_size(size: int) -> str:
    """268435456 -> `256MiB`; 1000 -> `1000` (bytes)."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


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


# A float that must be a number: YAML's .nan, .inf and -.inf are refused (a NaN scale makes every
# value NaN; an infinite one writes inf into a register).
Finite = Annotated[float, Field(allow_inf_nan=False)]

# A host name or address (IPv4, IPv6 without brackets): not empty, no spaces or control characters.
HOST_PATTERN = r"^[^\s\x00-\x1f\x7f/]{1,253}$"


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


# In a JSON text: a string (skipped) or a number with an exponent (group 1: its mantissa).
_JSON_EXPONENT = re.compile(r'"(?:[^"\\]|\\.)*"|(-?\d+(?:\.\d+)?)[eE]([-+]?)(\d+)')
# Characters a JSON string may hold raw that YAML refuses (C1 controls, DEL, BOM, non-characters)
# or reads as a line break (NEL, U+2028, U+2029): written escaped, so the text stays YAML too.
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")


def _yaml_exponent(match: re.Match[str]) -> str:
    if match.group(1) is None:
        return match.group(0)
    mantissa = match.group(1) if "." in match.group(1) else f"{match.group(1)}.0"
    return f"{mantissa}e{match.group(2) or '+'}{match.group(3)}"


def dump_slice(data: Any, header: str) -> str:
    """A rendered slice: `header` as a `#` comment line, then the data as indented JSON.

    JSON because the components load it with orjson (`read_slice`) in a fraction of the memory
    YAML takes (see `read_slice`); and
    the text is YAML as well, so a reader that only knows YAML (an older image, a plant
    engineer's tool) gets the same data: numbers with an exponent carry a point and a sign
    (YAML 1.1 reads `1e-05` as text), and the few characters YAML refuses in a string are
    escaped. Keys in the model's order, two-space indent, UTF-8 as written: same data, same
    bytes."""
    import orjson

    text = orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
    text = _JSON_EXPONENT.sub(_yaml_exponent, text)
    text = _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)
    return "# " + " ".join(header.splitlines()) + f"\n{text}\n"


def read_slice(path: Path) -> Any:
    """A config slice as plain data: JSON (what the gateway renders, after `#` comment lines)
    parsed by orjson, anything else as YAML (libyaml when PyYAML has it). orjson keeps RSS low:
    with a 2,000-tag plant (bench_e2e.py, 8 x 250 tags) the collector peaked at 67.5 MB reading
    its slice with libyaml, at 43-44 MB with orjson (without `simulate:` keys; 36-38 MB with no
    tags; the pure-Python YAML parser: 79 MB). Raises OSError, yaml.YAMLError, ValueError (also for
    YAML past the reader's limits, yamlnodes.LIMITS)."""
    raw = path.read_bytes()
    start = 0
    while True:  # skip blank and `#` comment lines: what is left of a rendered slice is JSON
        while start < len(raw) and raw[start] in b" \t\r\n":
            start += 1
        if raw[start:start + 1] != b"#":
            break
        start = raw.find(b"\n", start)
        start = len(raw) if start < 0 else start
    if raw[start:start + 1] == b"{":
        import orjson

        try:
            return orjson.loads(raw[start:])
        except orjson.JSONDecodeError:
            pass  # a YAML flow mapping, or broken: YAML says which
    import yaml

    from collectors.core.yamlnodes import check_limits

    check_limits(raw.decode("utf-8"))  # libyaml's composer recurses (and crashes) on deep nesting
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(raw, Loader=loader)  # a safe loader: plain data only


def check_write_limits(low: float | None, high: float | None) -> None:
    """A tag's `write_min` / `write_max`: when both are given, the lowest is not above the highest."""
    if low is not None and high is not None and low > high:
        raise ValueError(f"write_min ({low:g}) is above write_max ({high:g})")


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
    # 32 MiB: with a collector's ~45 MB of its own and up to 8 unacknowledged frames, this fits the
    # 128MiB memory limit of the examples; a reading is estimated at 176 bytes plus its string's
    # length (about 190,000 readings: over 3 minutes at 1,000 readings/s).
    queue_max_bytes: ByteSize = Field(
        32 * 1024**2,
        ge=1024**2,
        description="memory of the readings a collector holds while the forwarder is away (estimated: 176 "
        "bytes a reading plus its string's length); the oldest are dropped past this",
    )


class CollectorSettings(StrictModel):
    """What every collector's rendered config carries besides its devices."""

    name: str = Field(description="collector name: the protocol, e.g. modbus")
    handoff: HandoffConfig = Field(default_factory=HandoffConfig, description="the hand-off to the forwarder")
    metrics_port: int | None = Field(None, description="Prometheus /metrics and /healthz port; none to disable")
    metrics_host: str = Field("127.0.0.1", min_length=1, description="address /metrics and /healthz listen on")
    state_dir: Path = Field(
        Path("/var/lib/fieldgate/state"), description="where the collector keeps what must survive restarts"
    )
    log_level: str = Field("INFO", description="DEBUG | INFO | WARNING | ERROR")
