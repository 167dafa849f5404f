"""Config errors a plant engineer can act on: pydantic's errors as `file:line:column: message`.

`report_validation` turns a ValidationError of a model validated from a `Source` (yamlnodes.py:
YAML with the position of every value and key) into problems at the place each one is
written, worded in plant terms (what is wrong, what is allowed, did you mean). The gateway's
loader uses it for gateway.yaml and device files; each component's entry point uses it
(`load_validated`) for the slice it runs on, so a broken rendered file is reported the same way.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import astuple, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ValidationError
from pydantic.fields import FieldInfo

from collectors.core.config import format_duration, format_size, parse_duration, parse_size
from collectors.core.errors import ConfigErrors
from collectors.core.names import NAME_PATTERN

if TYPE_CHECKING:
    # Only for an error, or the gateway's loader: a component that starts on a good slice
    # never imports PyYAML (~1 MiB it would keep: docs/runtime.md, "Memory").
    from collectors.core.yamlnodes import Loc, Problem, Source

M = TypeVar("M", bound=BaseModel)


def load_validated(path: Path, model: type[M], env: Mapping[str, str] | None = None) -> M:
    """Read a YAML (or JSON) file and validate it with `model`; raises ConfigErrors listing every
    problem as `file:line:column: message`. `env`: replace `${VAR}` from it (None: values as written,
    as in the slices the gateway renders)."""
    from collectors.core.yamlnodes import load_yaml

    source = load_yaml(path, env)
    result: M | None = None
    if not source.broken:
        if not isinstance(source.data, dict):
            source.problem((), f"expected a mapping of keys ({', '.join(model.model_fields)})")
        else:
            try:
                result = model.model_validate(source.data)
            except ValidationError as exc:
                report_validation(source, exc, model)
    if source.problems or result is None:
        raise ConfigErrors(scrub(in_order(source.problems), [source]))
    return result


def load_slice(path: Path, model: type[M]) -> M:
    """A slice for a component's entry point: parsed fast (`read_slice`: orjson for the JSON the
    gateway renders, libyaml for YAML; no positions, so a big slice leaves little RSS behind) and
    validated; when that fails, read again with positions (`load_validated`: JSON is YAML, so a
    rendered slice gets them too), so every problem is reported as `file:line:column: message`.
    Raises ConfigErrors."""
    from collectors.core.config import read_slice

    try:
        return model.model_validate(read_slice(path))
    except (OSError, UnicodeDecodeError, ValidationError, ValueError):
        return load_validated(path, model)
    except Exception as exc:
        import yaml  # read_slice has imported it when it read YAML: this costs nothing then

        if isinstance(exc, yaml.YAMLError):
            return load_validated(path, model)
        raise


def in_order(problems: list[Problem]) -> list[Problem]:
    """By file (in the order met), then line and column."""
    files = {p.file: i for i, p in reversed(list(enumerate(problems)))}
    return sorted(problems, key=lambda p: (files[p.file], *(astuple(p.position) if p.position else (0, 0))))


SECRET_KEYS = frozenset({"password"})


def report_validation(source: Source, exc: ValidationError, model: type[BaseModel]) -> None:
    """Turn pydantic's errors into `file:line:column` problems on `source`, one per place."""
    grouped: dict[tuple[Loc, bool], list[str]] = {}
    for error in exc.errors(include_url=False):
        loc, key, message = _explain(source, error, model)
        if any(loc[: len(t)] == t for t in source.tainted):
            continue  # already reported where the value was written
        if "is used twice" in message and any("unique in a device" in p.message for p in source.problems):
            continue  # _duplicate_tags said it, at the second tag
        messages = grouped.setdefault((loc, key), [])
        if message not in messages:
            messages.append(message)
    # `adress` unknown and `address` missing are one slip: say it once, at the misspelt key
    for (loc, key), messages in list(grouped.items()):
        if key and (match := re.search(r"did you mean '([^']+)'", messages[0])):
            grouped.pop(((*loc[:-1], match.group(1)), False), None)
    for (loc, key), messages in grouped.items():
        # a missing or unknown key is named in the message; the context is its mapping
        where = context(source, loc[:-1] if key or messages[0].startswith("missing key") else loc)
        if len(messages) > 1 and all(m.startswith("expected ") for m in messages):
            text = "expected " + " or ".join(m.removeprefix("expected ").split(" (got")[0] for m in messages)
        else:
            text = "; ".join(messages)
        source.problem(loc, f"{where}{text}", key=key)


def _explain(source: Source, error: Any, model: type[BaseModel]) -> tuple[Loc, bool, str]:
    """(where in the data, whether the key itself is meant, the message)."""
    kind = error["type"]
    loc = _data_loc(source.data, error["loc"])
    secret = any(part in SECRET_KEYS for part in loc)
    value = error.get("input")
    got = "" if secret else f" (got {show(value)})"
    name = str(loc[-1]) if loc else ""
    if kind == "extra_forbidden":
        allowed = sorted(_fields_at(model, loc[:-1]))
        return loc, True, (
            f"unknown key {name!r}{did_you_mean(name, allowed)}; allowed here: {', '.join(allowed)}"
        )
    if kind == "missing":
        description = _description(model, loc)
        return loc, False, f"missing key {name!r}" + (f" ({description})" if description else "")
    if kind in ("literal_error", "enum"):
        choices = _choices(error.get("ctx", {}).get("expected", ""))
        shown = "this value" if secret else show(value)
        hint = "" if secret else did_you_mean(value, choices)
        description = _description(model, loc) or ""
        if not hint and description and description != " | ".join(choices):
            hint = f" ({description})"  # e.g. word_order: "little = CDAB"
        return loc, False, f"{shown} is not one of {', '.join(choices)}{hint}"
    if kind == "string_pattern_mismatch":
        if error.get("ctx", {}).get("pattern") == NAME_PATTERN:
            return loc, False, (
                f"{show(value)} is not allowed: a name holds letters, digits and _ . : - only "
                "(it is one MQTT topic level: no spaces, /, + or #)"
            )
        description = _description(model, loc)
        return loc, False, f"{show(value)} is not allowed: expected " + (description or error["msg"])
    if (bound := _unit_bound(source, model, loc, error)) is not None:
        return loc, False, bound
    if kind == "value_error":
        message = str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
        return _refine(source, loc, message), False, message
    if kind.endswith(("_type", "_parsing")) and kind != "model_type":
        return loc, False, f"expected {_type_word(kind)}{got}"
    if kind == "model_type":
        return loc, False, f"expected a mapping of keys{got}"
    return loc, False, f"{error['msg'][0].lower()}{error['msg'][1:]}{got}"


def _data_loc(data: Any, raw: Iterable[str | int]) -> Loc:
    """pydantic's loc walked through the data: union member names and the like are dropped."""
    loc: list[str | int] = []
    current = data
    parts = list(raw)
    for i, part in enumerate(parts):
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if in_list or (isinstance(current, dict) and part in current):
            current = current[part]
            loc.append(part)
        elif isinstance(current, dict) and i == len(parts) - 1 and isinstance(part, str):
            loc.append(part)  # a missing key
        # else: a union member ("float", "function-after[...]"), not a place in the file
    return tuple(loc)


def _refine(source: Source, loc: Loc, message: str) -> Loc:
    """A model-level message ("length applies only to string tags") points at the key it names."""
    if match := re.search(r"tag name '([^']+)' is used twice", message):
        tags = _get(source.data, (*loc, "tags")) or []
        names = [t.get("name") if isinstance(t, dict) else None for t in tags]
        positions = [i for i, n in enumerate(names) if n == match.group(1)]
        if len(positions) > 1:
            return (*loc, "tags", positions[1], "name")
    mapping = _get(source.data, loc)
    if isinstance(mapping, dict):
        mentioned = [(m.start(), key) for key in mapping if isinstance(key, str)
                     for m in [re.search(rf"\b{re.escape(key)}\b", message)] if m]
        if mentioned:
            return (*loc, min(mentioned)[1])
    return loc


def _get(data: Any, loc: Loc) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def context(source: Source, loc: Loc) -> str:
    """`device press-1, tag temperature: simulate.kind: ` (or `mqtt.qos: ` in gateway.yaml)."""
    data = source.data
    parts: list[str] = []
    keys: list[str] = []
    if isinstance(data, dict) and "protocol" in data:
        name = data.get("name")
        parts.append(f"device {name}" if isinstance(name, str) else "device")
    i = 0
    while i < len(loc):
        part = loc[i]
        if part == "tags" and i + 1 < len(loc) and isinstance(loc[i + 1], int) and not keys:
            tag = _get(data, loc[: i + 2])
            tag_name = tag.get("name") if isinstance(tag, dict) else None
            parts.append(f"tag {tag_name}" if isinstance(tag_name, str) else f"tag #{int(loc[i + 1]) + 1}")
            i += 2
            continue
        keys.append(f"[{part}]" if isinstance(part, int) else str(part))
        i += 1
    path = ".".join(keys).replace(".[", "[")
    head = ", ".join(parts)
    if head and path:
        return f"{head}: {path}: "
    return f"{head or path}: " if head or path else ""


def _fields_at(model: type[BaseModel], loc: Loc) -> set[str]:
    """The keys allowed at `loc` (field names of the model found there)."""
    candidates: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        found: list[type[BaseModel]] = []
        for candidate in candidates:
            field = candidate.model_fields.get(str(part))
            if field is not None:
                found.extend(_models_in(field.annotation))
        candidates = found or candidates
    return {name for candidate in candidates for name in candidate.model_fields}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def _description(model: type[BaseModel], loc: Loc) -> str | None:
    return next((f.description for f in _fields(model, loc) if f.description), None)


def _fields(model: type[BaseModel], loc: Loc) -> list[FieldInfo]:
    """The fields `loc` may name (one per union member that has it)."""
    keys = [p for p in loc if isinstance(p, str)]
    if not keys:
        return []
    parents: list[type[BaseModel]] = [model]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        nxt = [m for p in parents if (f := p.model_fields.get(part)) for m in _models_in(f.annotation)]
        parents = nxt or parents
    return [field for parent in parents if (field := parent.model_fields.get(str(loc[-1]))) is not None]


# pydantic's bound errors -> words, for durations and sizes (its own words show seconds and
# bytes: "greater than or equal to 0.01 (got '1ms')")
_BOUNDS = {"greater_than": "more than", "greater_than_equal": "at least", "less_than": "less than",
           "less_than_equal": "at most"}


def _unit_bound(source: Source, model: type[BaseModel], loc: Loc, error: Any) -> str | None:
    """`at least 10ms (got '0.0001ms')` when a duration or size is out of its bounds, else None."""
    if error["type"] not in _BOUNDS:
        return None
    parsers = {_parser(field.annotation, field.metadata) for field in _fields(model, loc)}
    limit = next(iter(error.get("ctx", {}).values()), None)
    if len(parsers) != 1 or not isinstance(limit, int | float):
        return None
    parser = parsers.pop()
    if parser is parse_duration:
        shown = format_duration(float(limit))
    elif parser is parse_size:
        shown = format_size(int(limit))
    else:
        return None
    return f"{_BOUNDS[error['type']]} {shown} (got {show(_get(source.data, loc))})"


def _parser(annotation: Any, metadata: Iterable[Any] = ()) -> Any:
    """parse_duration or parse_size when the field (or the type inside its Optional) is read by it."""
    for item in [*metadata, *getattr(annotation, "__metadata__", ())]:
        if isinstance(item, BeforeValidator) and item.func in (parse_duration, parse_size):
            return item.func
    for arg in typing.get_args(annotation):
        if (found := _parser(arg)) is not None:
            return found
    return None


def _choices(expected: str) -> list[str]:
    """"'big' or 'little'" -> ['big', 'little']; "1 or 2" -> ['1', '2']."""
    quoted = re.findall(r"'([^']*)'", expected)
    return quoted or [c.strip() for c in re.split(r",| or ", expected) if c.strip()]


def did_you_mean(value: Any, choices: Iterable[Any]) -> str:
    import difflib

    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=1, cutoff=0.6)
    if not close:
        lowered = {str(c).lower(): str(c) for c in choices}
        close = [lowered[value.lower()]] if value.lower() in lowered else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_WORDS = {
    "int": "a whole number", "float": "a number", "bool": "true or false", "string": "text",
    "list": "a list", "dict": "a mapping of keys", "path": "a file path",
}


def _type_word(kind: str) -> str:
    base = kind.removesuffix("_type").removesuffix("_parsing")
    return _TYPE_WORDS.get(base, base.replace("_", " "))


def scrub(problems: list[Problem], sources: Iterable[Source | None]) -> list[Problem]:
    """Belt and braces: no problem text may contain a password, whatever produced it."""
    secrets = {
        str(value) for source in sources if source is not None
        for loc, value in _leaves(source.data, ()) if loc and loc[-1] in SECRET_KEYS and str(value)
    }
    if not secrets:
        return problems
    clean = []
    for problem in problems:
        message = problem.message
        for secret in secrets:
            message = message.replace(secret, "***")
        clean.append(replace(problem, message=message))
    return clean


def _leaves(data: Any, loc: Loc) -> Iterator[tuple[Loc, Any]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, (*loc, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _leaves(value, (*loc, i))
    else:
        yield loc, data
