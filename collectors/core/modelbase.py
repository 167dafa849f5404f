"""Where the config models take their base names from: pydantic, or `collectors.core.lite`.

Every config module imports `BaseModel`, `Field`, the validator decorators and the rest from
here, never from pydantic. They come from pydantic (validation, JSON Schema, positions for
errors) unless a component's entry point called `use_lite()` first: it does when its `--config`
is a slice the gateway rendered, which the gateway validated with the full models already
(`collectors.core.entry`). The choice is made once, when the first config module takes a name
from here, and holds for the life of the process; mypy always sees pydantic's names.

FIELDGATE_FULL_VALIDATION=1 in the environment keeps pydantic whatever the entry point asks
(the entry point sets it when it starts itself again to report a slice the lite models refused).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel as BaseModel
    from pydantic import BeforeValidator as BeforeValidator
    from pydantic import ConfigDict as ConfigDict
    from pydantic import Field as Field
    from pydantic import PlainSerializer as PlainSerializer
    from pydantic import SecretStr as SecretStr
    from pydantic import ValidationInfo as ValidationInfo
    from pydantic import WithJsonSchema as WithJsonSchema
    from pydantic import field_validator as field_validator
    from pydantic import model_validator as model_validator

FULL_VALIDATION_ENV = "FIELDGATE_FULL_VALIDATION"
NAMES = frozenset({"BaseModel", "BeforeValidator", "ConfigDict", "Field", "PlainSerializer", "SecretStr",
                   "ValidationInfo", "WithJsonSchema", "field_validator", "model_validator"})

_lite_wanted = False
_source: ModuleType | None = None  # set when the first name is taken: the choice is made


def use_lite() -> bool:
    """Build the config models with `collectors.core.lite`. True when they will be (or are);
    False when a config model exists already (built with pydantic) or FIELDGATE_FULL_VALIDATION
    is set: the caller then runs on pydantic models, as without this call."""
    global _lite_wanted
    if os.environ.get(FULL_VALIDATION_ENV) or (_source is not None and not lite()):
        return False
    _lite_wanted = True
    return True


def lite() -> bool:
    """Whether the config models of this process are (to be) built by `collectors.core.lite`."""
    return _source.__name__ == "collectors.core.lite" if _source is not None else _lite_wanted


def __getattr__(name: str) -> Any:
    global _source
    if name not in NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _source is None:
        _source = importlib.import_module("collectors.core.lite" if _lite_wanted else "pydantic")
    return getattr(_source, name)
