"""A config object as plain data that keeps its types, so pydantic-built and lite-built configs
(collectors.core.lite) can be compared field by field in two processes. Imports no pydantic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from enum import Enum
from pathlib import Path, PurePath
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def model_values(value: Any) -> Any:
    """`value` as JSON data that names every type: a model's class and each field (defaults
    included), enums with their class, paths, secrets with their value, int vs float."""
    fields = getattr(type(value), "model_fields", None)
    if fields is not None and not isinstance(value, type):
        return {"model": f"{type(value).__module__}.{type(value).__qualname__}",
                "fields": {name: model_values(getattr(value, name)) for name in fields}}
    if isinstance(value, Enum):
        return {"enum": f"{type(value).__module__}.{type(value).__qualname__}", "value": value.value}
    if hasattr(value, "get_secret_value"):
        return {"secret": value.get_secret_value()}
    if isinstance(value, PurePath):
        return {"path": str(value)}
    if isinstance(value, list | tuple):
        return {type(value).__name__: [model_values(item) for item in value]}
    if isinstance(value, dict):
        return {"dict": {str(k): model_values(v) for k, v in value.items()}}
    return {type(value).__name__: value}


# Builds each file given with the lite models of the component its name starts with (forwarder,
# modbus, opcua): {file: model_values, or {"refused": why}}; fails if pydantic got imported.
LITE_CHILD = """
import json, sys
from pathlib import Path
from collectors.core import modelbase
assert modelbase.use_lite()
from collectors.core.config import read_slice
from collectors.forwarder.config import ForwarderConfig
from collectors.modbus.config import ModbusCollectorConfig
from collectors.opcua.config import OpcuaCollectorConfig
from tests.support.model_values import model_values
models = {"forwarder": ForwarderConfig, "modbus": ModbusCollectorConfig, "opcua": OpcuaCollectorConfig}
out = {}
for name in sys.argv[1:]:
    path = Path(name)
    try:
        out[name] = model_values(models[path.name.split("-")[0]].model_validate(read_slice(path)))
    except Exception as exc:
        out[name] = {"refused": f"{type(exc).__name__}: {exc}"}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("pydantic", "pydantic_core", "yaml"))
assert not heavy, f"the lite models imported {heavy}"
print(json.dumps(out))
"""


def lite_values(files: list[Path], env: dict[str, str]) -> dict[str, Any]:
    """`LITE_CHILD` run on `files`, with `env` added to this process's environment."""
    child_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    child_env.pop("FIELDGATE_FULL_VALIDATION", None)
    child = subprocess.run([sys.executable, "-c", LITE_CHILD, *map(str, files)], capture_output=True, text=True,
                           env=child_env, cwd=ROOT, timeout=120)
    assert child.returncode == 0, child.stderr
    return dict(json.loads(child.stdout))
