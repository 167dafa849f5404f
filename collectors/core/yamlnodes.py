"""YAML to plain data, remembering where every key and value sits, with `${VAR}` substitution.

PyYAML's `compose` gives a node tree with marks; we build the data ourselves from it so that
each value keeps its line and column (for `file:line:column` errors), duplicate keys are
caught (`safe_load` silently keeps the last one), and `${VAR}` / `${VAR:-default}` are
replaced in string scalars with an error at the exact column when a variable is not set.
`$${` writes a literal `${`. Without an environment (`env=None`: the slices the gateway renders,
already substituted) every value is taken as written.

A config file may come from anyone who can write into the config directory, and the supervisor
reads it while it runs the plant, so reading is bounded (`Limits`): the file's size, how deep
lists and mappings nest, and how many values it holds once every alias (`*name`) is expanded
are checked on the parser's event stream, before any node tree exists; a recursive alias
(`&r [*r]`) is refused. Without that, 50,000 nested `[` crash libyaml's composer (a segfault,
not an exception), `&r [*r]` recurses forever, and nine levels of ten aliases ("billion
laughs") expand to 10^9 values.

Here in collectors.core, not in the gateway, because each component's entry point reports its
own config file the same way (collectors never import `gateway`).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[str | int, ...]

# libyaml's parser when PyYAML has it: 20x faster on a 5,000-tag device, same marks.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one config file may hold. A 5,000-tag device file is 0.4 MiB, 55,000 values and
    4 levels deep; validating 200,000 values takes about 2 s and 150 MiB."""

    max_bytes: int = 4 * 1024**2
    max_depth: int = 64  # lists and mappings inside each other, aliases expanded
    max_values: int = 200_000  # scalars, lists and mappings, every alias use counted in full


LIMITS = Limits()
# The pure-Python parser words syntax errors better than libyaml but reads ~10x slower:
# asked only for files up to this size, so a large broken file is refused as fast as a good one.
_PYTHON_PARSER_MAX = 512 * 1024

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
    size: int = 0  # values read (aliases expanded), for a budget over several files

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


def load_yaml(
    path: Path, env: Mapping[str, str] | None, display: Path | None = None, limits: Limits = LIMITS
) -> Source:
    """Read one YAML file into a Source; problems (syntax, duplicate keys, unset variables, a limit
    passed) are collected on it rather than raised, so a caller can list every error of every file."""
    source = Source(display or path)
    text = _read_text(path, source, limits)
    if text is None:
        source.broken = True
        return source
    try:
        source.size = check_limits(text, limits)
        node = _compose(text)
    except LimitPassed as exc:
        source.problem(exc.position, exc.message)
        source.broken = True
        return source
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
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, most controls)
        character = chr(exc.character) if isinstance(exc.character, int) else exc.character
        source.problem(_position_in(text, exc.position), f"not valid YAML: character {character!r} "
                       "is not allowed in a YAML file (a control character, or a binary file?)")
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


def _read_text(path: Path, source: Source, limits: Limits) -> str | None:
    """The file's text, or None with the problem on `source`: only a regular file of at most
    `limits.max_bytes` bytes of UTF-8 is read (never a FIFO, a device or a directory, which
    would block, never end, or is no file at all)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            source.problem(None, f"not a regular file ({_kind(os.stat(path).st_mode)}): a config file "
                           "is a plain text file")
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            if not stat.S_ISREG(mode):  # replaced between the two looks
                source.problem(None, f"not a regular file ({_kind(mode)}): a config file is a plain text file")
                return None
            raw = file.read(limits.max_bytes + 1)
    except OSError as exc:
        source.problem(None, f"cannot read: {exc.strerror or type(exc).__name__}")
        return None
    if len(raw) > limits.max_bytes:
        source.problem(None, f"larger than {_size(limits.max_bytes)}, the most one config file may hold: "
                       "split the devices over several files")
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = _position_in(raw, exc.start)
        source.problem(at, f"not UTF-8 text (byte 0x{raw[exc.start]:02x}): save the file as UTF-8")
        return None


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a device"),
             (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))
    return next((word for test, word in kinds if test(mode)), "not a file")


def _size(n: int) -> str:
    return f"{n / 1024**2:g} MiB" if n >= 1024**2 else f"{n} bytes"


def _position_in(text: str | bytes, index: int) -> Position:
    newline = "\n" if isinstance(text, str) else b"\n"
    line = text.count(newline, 0, index)  # type: ignore[arg-type]
    column = index - (text.rfind(newline, 0, index) + 1)  # type: ignore[arg-type]
    return Position(line + 1, column + 1)


class LimitPassed(ValueError):
    """A YAML text past one of its `Limits`; `position` is where, `message` which limit."""

    def __init__(self, mark: Any, message: str) -> None:  # a yaml.Mark, libyaml's or PyYAML's
        super().__init__(message)
        self.position = None if mark is None else Position(mark.line + 1, mark.column + 1)
        self.message = message


@dataclass(slots=True)
class _Open:
    """A list or mapping the parser is inside: its anchor, its values so far, its children's height."""

    anchor: str | None
    values: int = 1
    height: int = 0


def check_limits(text: str, limits: Limits = LIMITS) -> int:
    """The number of values `text` holds with every alias expanded. Walks the parser's events (no
    node tree, no recursion) and raises LimitPassed at the first place the text nests deeper than
    `max_depth` or holds more than `max_values` values, or where an alias refers to an anchor it is
    inside of. A syntax error ends the walk: `_compose` reports it, with the better of the parsers'
    words."""
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (values, height) of the node it names
    stack: list[_Open] = []
    total = 0
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            if isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= limits.max_depth:
                    raise LimitPassed(event.start_mark, f"lists and mappings nest deeper than "
                                       f"{limits.max_depth} levels, the most a config file may nest")
                stack.append(_Open(event.anchor))
                total += 1
                values, height = 0, 0
            elif isinstance(event, yaml.CollectionEndEvent):
                done = stack.pop()
                values, height = done.values, done.height + 1
                if done.anchor is not None:
                    anchors[done.anchor] = (values, height)
                if stack:  # its own start was counted when it opened
                    stack[-1].values += values
                    stack[-1].height = max(stack[-1].height, height)
                continue
            elif isinstance(event, yaml.ScalarEvent):
                values, height = 1, 1
                total += 1
                if event.anchor is not None:
                    anchors[event.anchor] = (1, 1)
            elif isinstance(event, yaml.AliasEvent):
                if any(open_.anchor == event.anchor for open_ in stack):
                    raise LimitPassed(event.start_mark, f"*{event.anchor} is inside the value it names "
                                       f"(&{event.anchor}): a recursive alias has no end; write the values out")
                if event.anchor not in anchors:
                    continue  # an undefined alias: the composer says so
                values, height = anchors[event.anchor]
                if len(stack) + height > limits.max_depth:
                    raise LimitPassed(event.start_mark, f"*{event.anchor} nests lists and mappings deeper "
                                       f"than {limits.max_depth} levels, the most a config file may nest")
                total += values
            else:
                if isinstance(event, yaml.DocumentEndEvent):
                    anchors.clear()
                continue
            if total > limits.max_values:
                raise LimitPassed(event.start_mark, f"more than {limits.max_values:,} values (with every "
                                   "alias *name expanded), the most one config file may hold: split the "
                                   "devices over several files")
            if stack:  # (a list or mapping just opened adds 0 here, and its values when it ends)
                stack[-1].values += values
                stack[-1].height = max(stack[-1].height, height)
    except yaml.YAMLError:
        pass
    return total


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
    """The node tree of a text that passed `check_limits` (so libyaml's recursive composer stays
    within `max_depth`)."""
    try:
        return yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError:
        if _LOADER is yaml.SafeLoader or len(text) > _PYTHON_PARSER_MAX:
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
        except Exception as exc:
            # `!!binary x`, `!custom`: a tag we cannot build. PyYAML's constructors are not written
            # for hostile text and raise what comes: ValueError (`2001-13-45`, an integer of 5,000
            # digits), IndexError (`!!int ` with nothing after it), AttributeError (`!!timestamp x`).
            if isinstance(exc, yaml.YAMLError):
                problem = getattr(exc, "problem", None) or type(exc).__name__
            elif isinstance(exc, ValueError) and str(exc):
                problem = str(exc)
            else:
                problem = f"not a valid {node.tag.removeprefix('tag:yaml.org,2002:')}"
            self.source.problem(Position.of(node.start_mark), f"cannot read this value: {problem[:120]}")
            self.source.tainted.add(loc)
            return None
        if isinstance(value, str) and "$" in value and self.env is not None:
            value = self._substitute(node, value, loc)
        return value

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, Any]:
        seen: dict[Any, Position] = {}
        # by identity: `pair in list` compares tuples of nodes, quadratic in a wide mapping
        own = {id(pair[0]) for pair in node.value if pair[0].tag != "tag:yaml.org,2002:merge"}
        try:
            self.constructor.flatten_mapping(node)  # `<<: *anchor` merge keys; own keys win
        except yaml.MarkedYAMLError as exc:
            self.source.problem(Position.of(exc.problem_mark or node.start_mark), f"{exc.problem}")
        merged = [pair for pair in node.value if id(pair[0]) not in own]
        result: dict[Any, Any] = {}
        for key_node, value_node in [*merged, *(pair for pair in node.value if id(pair[0]) in own)]:
            if not isinstance(key_node, yaml.ScalarNode):
                self.source.problem(Position.of(key_node.start_mark), "a key must be a plain word")
                continue
            try:
                constructed = self.constructor.construct_object(key_node, deep=True)
            except Exception:  # as in build (PyYAML's constructors raise anything): the key as written
                constructed = None
            # keys like `on`, `1.5` or `null` stay the words they were written as
            key: str | int = (
                constructed if isinstance(constructed, str | int) and not isinstance(constructed, bool)
                else str(key_node.value)
            )
            key_at = Position.of(key_node.start_mark)
            is_own = id(key_node) in own
            if is_own and key in seen:
                first = seen[key]
                self.source.problem(
                    key_at, f"key {key!r} appears twice in this mapping (first at line {first.line}); "
                    "keep one"
                )
                self.source.tainted.add((*loc, key))
                continue
            if is_own:
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
