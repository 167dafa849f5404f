"""YAML to plain data, remembering where every key and value sits, with `${VAR}` substitution.

PyYAML's `compose` gives a node tree with marks; we build the data ourselves from it so that
each value keeps its line and column (for `file:line:column` errors), duplicate keys are
caught (`safe_load` silently keeps the last one), and `${VAR}` / `${VAR:-default}` are
replaced in string scalars with an error at the exact column when a variable is not set.
`$${` writes a literal `${`. Without an environment (`env=None`: the slices the gateway renders,
already substituted) every value is taken as written.

Here in collectors.core, not in the gateway, because each component's entry point reports its
own config file the same way (collectors never import `gateway`, SPEC.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[str | int, ...]

# libyaml's parser when PyYAML has it: 20x faster on a 5,000-tag device, same marks.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# ${NAME} or ${NAME:-default}; $${ escapes a literal ${.
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]*\}?")


@dataclass(frozen=True, slots=True)
class Position:
    """1-based line and column in a file."""

    line: int
    column: int

    @classmethod
    def of(cls, mark: yaml.Mark) -> Position:
        return cls(mark.line + 1, mark.column + 1)


@dataclass(frozen=True, slots=True)
class Problem:
    """One config error: where, and what a plant engineer should do about it."""

    file: Path
    position: Position | None
    message: str

    def __str__(self) -> str:
        if self.position is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.position.line}:{self.position.column}: {self.message}"


@dataclass(slots=True)
class Source:
    """One YAML file turned into data, with the position of every value and mapping key."""

    file: Path
    data: Any = None
    values: dict[Loc, Position] = field(default_factory=dict)
    keys: dict[Loc, Position] = field(default_factory=dict)
    # the environment variable each string scalar came from, when it was exactly `${VAR}`
    env_refs: dict[Loc, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    # places whose value is already reported (unset variable, duplicate key): no second error there
    tainted: set[Loc] = field(default_factory=set)
    broken: bool = False  # not YAML at all: nothing to validate

    def where(self, loc: Loc, key: bool = False) -> Position | None:
        """The position of `loc` (its key with key=True), else of its nearest existing parent."""
        table = self.keys if key else self.values
        if loc in table:
            return table[loc]
        for end in range(len(loc) - 1, -1, -1):
            if loc[:end] in self.values:
                return self.values[loc[:end]]
        return None

    def problem(self, loc: Loc | Position | None, message: str, key: bool = False) -> None:
        position = loc if isinstance(loc, Position) or loc is None else self.where(loc, key)
        self.problems.append(Problem(self.file, position, message))


def load_yaml(path: Path, env: Mapping[str, str] | None, display: Path | None = None) -> Source:
    """Read one YAML file into a Source; problems (syntax, duplicate keys, unset variables) are
    collected on it rather than raised, so a caller can list every error of every file."""
    source = Source(display or path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        source.problem(None, f"cannot read: {getattr(exc, 'strerror', None) or exc}")
        source.broken = True
        return source
    try:
        node = _compose(text)
    except yaml.MarkedYAMLError as exc:
        # Never str(exc): it quotes the source line, which may hold a password.
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "syntax error"
        if exc.context and exc.context_mark is not None:
            start = Position.of(exc.context_mark)
            what += f", {exc.context} that starts at line {start.line}, column {start.column}"
        what = _explain_yaml(what)
        source_lines = text.splitlines()
        line_text = source_lines[mark.line] if mark is not None and mark.line < len(source_lines) else ""
        if "${" in line_text and "flow" in (exc.context or ""):
            # `{host: ${PLC}}`: in a {...} mapping a plain value cannot hold { or }
            what += "; inside {...} put a value holding ${VAR} in quotes, e.g. host: \"${PLC_HOST}\""
        source.problem(Position.of(mark) if mark else None, f"not valid YAML: {what}")
        source.broken = True
        return source
    except yaml.YAMLError as exc:
        source.problem(None, f"not valid YAML: {type(exc).__name__}")
        source.broken = True
        return source
    if node is None:
        source.data = None
        return source
    source.data = _Builder(source, text, env).build(node, ())
    return source


# PyYAML's parser words for the slips people make, in words a plant engineer acts on.
_YAML_HINTS = (
    ("found character '\\t'", "a tab character: YAML indents with spaces only"),
    ("expected <block end>", "this line's indentation does not match the lines above it "
     "(keys of one mapping, and the items of one list, start in the same column)"),
    ("mapping values are not allowed here", "a ': ' where a plain value was expected: fix the "
     "indentation, or quote a value that contains ': '"),
    ("could not find expected ':'", "a key without ':' after it, or a value that runs onto the next line"),
)


def _explain_yaml(problem: str) -> str:
    for needle, hint in _YAML_HINTS:
        if needle in problem:
            return f"{hint} (YAML: {problem})"
    return problem


def _compose(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError:
        if _LOADER is yaml.SafeLoader:
            raise
    # libyaml says "did not find expected ..."; the pure-Python parser says what it got instead
    return yaml.compose(text, Loader=yaml.SafeLoader)


class _Builder:
    def __init__(self, source: Source, text: str, env: Mapping[str, str] | None) -> None:
        self.source = source
        self.text = text
        self.env = env
        self.constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.source.values[loc] = Position.of(node.start_mark)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        try:
            value = self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:  # `!!binary x`, `!custom`: a tag we cannot build
            problem = getattr(exc, "problem", None) or type(exc).__name__
            self.source.problem(Position.of(node.start_mark), f"cannot read this value: {problem}")
            self.source.tainted.add(loc)
            return None
        if isinstance(value, str) and "$" in value and self.env is not None:
            value = self._substitute(node, value, loc)
        return value

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, Any]:
        seen: dict[Any, Position] = {}
        own = [pair for pair in node.value if pair[0].tag != "tag:yaml.org,2002:merge"]
        try:
            self.constructor.flatten_mapping(node)  # `<<: *anchor` merge keys; own keys win
        except yaml.MarkedYAMLError as exc:
            self.source.problem(Position.of(exc.problem_mark or node.start_mark), f"{exc.problem}")
        merged = [pair for pair in node.value if pair not in own]
        result: dict[Any, Any] = {}
        for key_node, value_node in [*merged, *own]:
            if not isinstance(key_node, yaml.ScalarNode):
                self.source.problem(Position.of(key_node.start_mark), "a key must be a plain word")
                continue
            try:
                constructed = self.constructor.construct_object(key_node, deep=True)
            except yaml.YAMLError:
                constructed = None
            # keys like `on`, `1.5` or `null` stay the words they were written as
            key: str | int = (
                constructed if isinstance(constructed, str | int) and not isinstance(constructed, bool)
                else str(key_node.value)
            )
            key_at = Position.of(key_node.start_mark)
            if (key_node, value_node) in own and key in seen:
                first = seen[key]
                self.source.problem(
                    key_at, f"key {key!r} appears twice in this mapping (first at line {first.line}); "
                    "keep one"
                )
                self.source.tainted.add((*loc, key))
                continue
            if (key_node, value_node) in own:
                seen[key] = key_at
            self.source.keys[(*loc, key)] = key_at
            result[key] = self.build(value_node, (*loc, key))
        return result

    def _substitute(self, node: yaml.ScalarNode, value: str, loc: Loc) -> str:
        out: list[str] = []
        last = 0
        whole = _VAR.fullmatch(value)
        for match in _VAR.finditer(value):
            out.append(value[last:match.start()])
            last = match.end()
            token = match.group(0)
            if token == "$${":
                out.append("${")
                continue
            name, default = match.group(1), match.group(2)
            if name is None:
                self.source.problem(
                    self._column_of(node, token),
                    f"{token!r} is not a variable reference: write ${{NAME}} or ${{NAME:-default}} "
                    "(NAME: letters, digits, _), or $${ for a literal ${",
                )
                self.source.tainted.add(loc)
                continue
            assert self.env is not None
            if name in self.env:
                out.append(self.env[name])
                if whole is not None:
                    self.source.env_refs[loc] = name
            elif default is not None:
                out.append(default)
            else:
                self.source.problem(
                    self._column_of(node, token),
                    f"environment variable {name} is not set (set it, or give a default: "
                    f"${{{name}:-value}})",
                )
                self.source.tainted.add(loc)
        out.append(value[last:])
        return "".join(out)

    def _column_of(self, node: yaml.ScalarNode, token: str) -> Position:
        """Where `token` sits in the file, inside the scalar's source text when it is there."""
        start, end = node.start_mark.index, node.end_mark.index
        found = self.text.find(token, start, end)
        if found < 0:
            return Position.of(node.start_mark)
        line = self.text.count("\n", 0, found)
        column = found - (self.text.rfind("\n", 0, found) + 1)
        return Position(line + 1, column + 1)
