"""Config models built without pydantic, from a slice the gateway has already validated.

The supervisor validates gateway.yaml and the device files with the full pydantic models and
renders each component's slice from them (`collectors.core.config.dump_slice`). A component
that runs on such a slice needs the models' values, defaults and derived data, not their
checks, and pydantic with the core schemas of every model is about half of a component's
memory (docs/runtime.md, "Memory"). This module is the part of pydantic's API the config
modules use, so the same class statements build either way (`collectors.core.modelbase`
chooses): an instance is built by the class's type hints (nested models, `X | None`, lists,
dicts and tuples of them, enums by value, Literal, Path, SecretStr, float from int), defaults
filled in, and every model validator (before and after), field validator and BeforeValidator
runs, because some transform data (`password_from_env`, durations written as text).
Constraints (ge, le, pattern, ...) are not checked. What a hand edit breaks most often is
(`LiteError`): an unknown or missing key, a value of another JSON type than its field's (text
for a number, a number for a list), a value outside a Literal or an enum; the entry point then
reports the slice with the full models (`collectors.core.entry`).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal

_MISSING: Any = object()


class LiteError(ValueError):
    """A slice the lite models cannot build: an unknown or missing key, a value of the wrong type."""


def ConfigDict(**settings: Any) -> dict[str, Any]:
    return settings


# Annotated metadata must hash, and a JSON schema is a dict: identity hashes (eq=False).
@dataclass(frozen=True, eq=False)
class FieldInfo:
    default: Any = _MISSING
    default_factory: Callable[[], Any] | None = None
    description: str | None = None


def Field(
    default: Any = _MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    description: str | None = None,
    **constraints: Any,  # ge, pattern, json_schema_extra, ...: the gateway checked them
) -> Any:
    return FieldInfo(default, default_factory, description)


@dataclass(frozen=True, eq=False)
class BeforeValidator:
    func: Callable[[Any], Any]


@dataclass(frozen=True, eq=False)
class PlainSerializer:  # serialising is the gateway's: kept only so Annotated metadata reads the same
    func: Callable[[Any], Any]
    return_type: Any = None


@dataclass(frozen=True, eq=False)
class WithJsonSchema:
    json_schema: Any


@dataclass(frozen=True)
class ValidationInfo:
    context: Any = None


class SecretStr:
    """A secret that prints as stars (pydantic.SecretStr's behaviour)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __str__(self) -> str:
        return "**********" if self._value else ""

    def __repr__(self) -> str:
        return f"SecretStr('{self}')"


@dataclass(frozen=True)
class _Decorated:
    """A validator method as the decorators leave it, collected when the model is first built."""

    func: Any  # the function, or the classmethod around it
    mode: str
    fields: tuple[str, ...] = ()


def model_validator(*, mode: Literal["before", "after", "wrap"]) -> Callable[[Any], Any]:
    if mode == "wrap":  # refused on purpose: no config model has one, and none should come in unseen
        raise TypeError("collectors.core.lite builds before and after model validators only: write the check "
                        "as one of those, or teach lite the wrap mode with a case in tests/core/test_lite_models.py")
    return lambda func: _Decorated(func, mode)


def field_validator(*fields: str, mode: Literal["after", "before"] = "after") -> Callable[[Any], Any]:
    return lambda func: _Decorated(func, mode, fields)


# ------------------------------------------------------------------------------ building


Convert = Callable[[Any, Any], Any]  # (value, context) -> value


def _same(value: Any, context: Any) -> Any:
    return value


def _exactly(kind: type) -> Convert:
    """JSON's own types as they are; anything else is a hand edit for the full models to judge."""
    def check(value: Any, context: Any) -> Any:
        if type(value) is not kind:
            raise LiteError(f"{kind.__name__} expected, not {type(value).__name__}")
        return value
    return check


def _to_float(value: Any, context: Any) -> Any:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise LiteError(f"a number expected, not {type(value).__name__}")


def _literal(choices: tuple[Any, ...]) -> Convert:
    def check(value: Any, context: Any) -> Any:
        if not any(value == choice and type(value) is type(choice) for choice in choices):
            raise LiteError(f"one of {choices} expected, not {value!r}")
        return value
    return check


def _of(kind: type) -> Convert:
    """An enum member by value, a Path or a SecretStr from text."""
    def make(value: Any, context: Any) -> Any:
        if isinstance(value, kind):
            return value
        if not issubclass(kind, Enum) and type(value) is not str:
            raise LiteError(f"text expected for {kind.__name__}, not {type(value).__name__}")
        return kind(value)
    return make


def _converter(hint: Any) -> Convert:
    """How a value of a field typed `hint` is built from rendered (JSON) data."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        inner = _converter(hint.__origin__)
        # pydantic runs the BeforeValidators of one Annotated from the last to the first
        befores = [m.func for m in reversed(hint.__metadata__) if isinstance(m, BeforeValidator)]
        if not befores:
            return inner

        def annotated(value: Any, context: Any) -> Any:
            for before in befores:
                value = before(value)
            return inner(value, context)
        return annotated
    if origin is typing.Union or origin is UnionType:
        args = typing.get_args(hint)
        return _union([a for a in args if a is not NoneType], optional=NoneType in args)
    if origin is Literal:
        return _literal(typing.get_args(hint))
    if hint is Any:
        return _same
    if hint in (str, int, bool):
        return _exactly(hint)
    if hint is float:
        return _to_float
    if origin in (list, tuple, dict):
        return _container(origin, typing.get_args(hint))
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return lambda value, context: value if isinstance(value, hint) else hint._build(value, context)
    if isinstance(hint, type) and issubclass(hint, Enum | Path | SecretStr):
        return _of(hint)
    raise TypeError(f"collectors.core.lite cannot build a field of type {hint!r}")


def _container(origin: type, args: tuple[Any, ...]) -> Convert:
    if origin is dict:
        value_of = _converter(args[1])

        def mapping(value: Any, context: Any) -> Any:
            if type(value) is not dict:
                raise LiteError(f"a mapping expected, not {type(value).__name__}")
            return {k: value_of(v, context) for k, v in value.items()}
        return mapping
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        items = [_converter(a) for a in args]

        def fixed(value: Any, context: Any) -> Any:
            if type(value) not in (list, tuple) or len(value) != len(items):
                raise LiteError(f"a list of {len(items)} expected, not {value!r}")
            return tuple(c(v, context) for c, v in zip(items, value, strict=True))
        return fixed
    item = _converter(args[0])
    make = list if origin is list else tuple

    def sequence(value: Any, context: Any) -> Any:
        if type(value) not in (list, tuple):
            raise LiteError(f"a list expected, not {type(value).__name__}")
        return make(item(v, context) for v in value)
    return sequence


def _union(members: list[Any], *, optional: bool) -> Convert:
    converters = [_converter(m) for m in members]
    # pydantic's "smart" union: a member of the value's exact type first, else the first that takes it
    exact = {m for m in members if m in (str, int, float, bool)}

    def union(value: Any, context: Any) -> Any:
        if value is None and optional:
            return None
        if type(value) in exact:
            return value
        for convert in converters:
            try:
                return convert(value, context)
            except ValueError:  # LiteError, or a validator's own
                continue
        raise LiteError(f"none of {members} takes {value!r}")
    return union


@dataclass
class _Plan:
    """What building a model takes, worked out from its class once (`BaseModel._plan`)."""

    fields: dict[str, tuple[Convert, FieldInfo]]
    before: list[Callable[[Any, Any], Any]]
    after: list[Callable[[Any], Any]]
    field_after: dict[str, list[Callable[[Any, Any], Any]]]  # (value, info) -> value
    field_before: dict[str, list[Callable[[Any, Any], Any]]]
    forbid_extra: bool


def _bind(cls: type, decorated: _Decorated) -> Callable[..., Any]:
    func = decorated.func
    bound = func.__get__(None, cls) if isinstance(func, classmethod | staticmethod) else func
    inner = func.__func__ if isinstance(func, classmethod | staticmethod) else func
    takes_info = len(inspect.signature(inner).parameters) > 2
    if decorated.mode == "after" and not decorated.fields:  # a model's after validator: a method
        return func
    if takes_info:
        return lambda value, info: bound(value, info)
    return lambda value, info: bound(value)


class BaseModel:
    """A frozen model built from trusted data: see the module docstring."""

    model_config: typing.ClassVar[dict[str, Any]] = {}
    model_fields: typing.ClassVar[dict[str, FieldInfo]] = {}
    _lite_plan: typing.ClassVar[_Plan | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._lite_plan = None
        fields: dict[str, FieldInfo] = {}
        for klass in reversed(cls.__mro__):
            for name, annotation in vars(klass).get("__annotations__", {}).items():
                if name.startswith("_") or "ClassVar" in str(annotation):
                    continue
                default = vars(klass).get(name, fields.get(name, FieldInfo()))
                fields[name] = default if isinstance(default, FieldInfo) else FieldInfo(default)
        cls.model_fields = fields

    @classmethod
    def _plan(cls) -> _Plan:
        plan = cls._lite_plan
        if plan is not None:
            return plan
        hints = typing.get_type_hints(cls, include_extras=True)
        validators = [(name, value) for klass in reversed(cls.__mro__) for name, value in vars(klass).items()
                      if isinstance(value, _Decorated)]
        plan = _Plan({name: (_converter(hints[name]), info) for name, info in cls.model_fields.items()},
                     [], [], {}, {}, cls.model_config.get("extra") == "forbid")
        for _name, decorated in dict(validators).items():
            call = _bind(cls, decorated)
            if decorated.fields:
                into = plan.field_before if decorated.mode == "before" else plan.field_after
                for field in decorated.fields:
                    into.setdefault(field, []).append(call)
            elif decorated.mode == "before":
                plan.before.append(call)
            else:
                plan.after.append(call)
        cls._lite_plan = plan
        return plan

    @classmethod
    def _build(cls, data: Any, context: Any = None) -> Any:
        plan = cls._plan()
        info = ValidationInfo(context)
        for before in plan.before:
            data = before(data, info)
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise LiteError(f"{cls.__name__}: a mapping expected, not {type(data).__name__}")
        if plan.forbid_extra and not data.keys() <= plan.fields.keys():
            raise LiteError(f"{cls.__name__}: unknown keys {sorted(data.keys() - plan.fields.keys())}")
        self = object.__new__(cls)
        values = self.__dict__
        for name, (convert, field) in plan.fields.items():
            if name in data:
                value = data[name]
                for check in plan.field_before.get(name, ()):
                    value = check(value, info)
                value = convert(value, context)
                for check in plan.field_after.get(name, ()):
                    value = check(value, info)
            elif field.default_factory is not None:
                value = field.default_factory()
            elif field.default is not _MISSING:
                value = field.default
            else:
                raise LiteError(f"{cls.__name__}: {name} is missing")
            values[name] = value
        for model_check in plan.after:
            self = model_check(self)
        return self

    @classmethod
    def model_validate(cls, data: Any, *, context: Any = None) -> Any:
        return cls._build(data, context)

    def __init__(self, **data: Any) -> None:
        self.__dict__.update(type(self)._build(data).__dict__)

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Any:
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__, **(update or {}))
        return copy

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__dict__ == self.__dict__

    def __hash__(self) -> int:
        return hash((type(self), *self.__dict__.values()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"
