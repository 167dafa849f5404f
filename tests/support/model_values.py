"""A config object as plain data that keeps its types, so pydantic-built and lite-built configs
(collectors.core.lite) can be compared field by field in two processes. Imports no pydantic."""

from __future__ import annotations

from enum import Enum
from pathlib import PurePath
from typing import Any


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
