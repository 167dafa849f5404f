"""Hostile device files: what anyone who can write into a config directory could save there.

Each case writes `devices/x.yaml` (or puts something that is no file there) into a config
directory and names the words the refusal must contain. Shared by the `fieldgate validate`
test and the running-supervisor test (tests/security/test_config_*.py).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HEAD = "name: x\nprotocol: modbus\nconnection:\n  tcp: {host: 127.0.0.1, port: 1502}\n"
TAG = "  - {name: t, table: holding, address: 0, type: int16}\n"


def _laughs() -> str:
    """Nine levels of ten aliases: 10^9 values once expanded."""
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    return HEAD + "description:\n" + "".join(f"  {line}\n" for line in lines) + "tags:\n" + TAG


def _deep_aliases() -> str:
    """Each anchor 40 levels deep, the second inside the first: 80 levels once expanded."""
    a = "[" * 40 + "1" + "]" * 40
    b = "[" * 40 + "*a" + "]" * 40
    return HEAD + f"description: {{a: &a {a}, b: {b}}}\ntags:\n" + TAG


def _million_tags() -> str:
    return HEAD + "tags:\n" + "".join(
        f"  - {{name: t{i}, table: holding, address: {i % 60000}, type: int16}}\n" for i in range(10**6))


def _many_values() -> str:
    return HEAD + "description: [" + ", ".join(["1"] * 300_000) + "]\ntags:\n" + TAG


def _wide_mapping() -> str:
    """90,000 keys in one mapping: under the value limit, once quadratic to read."""
    return HEAD + "description: {" + ", ".join(f"k{i}: {i}" for i in range(90_000)) + "}\ntags:\n" + TAG


def _bad_tags() -> str:
    """18,000 tags, each with an error (and writable, for the cross-file overlap check)."""
    return HEAD + "tags:\n" + "".join(
        f"  - {{name: t{i}, table: holding, address: 7, type: int17, writable: true}}\n" for i in range(18_000))


def _overlapping_tags() -> str:
    """18,000 valid writable tags on one register: every one after the first overlaps it."""
    return HEAD + "tags:\n" + "".join(
        f"  - {{name: t{i}, table: holding, address: 7, type: int16, writable: true}}\n" for i in range(18_000))


def _many_files(path: Path) -> None:
    """Three files of 150,000 values each: every one under a file's limit, 450,000 in all."""
    for name in ("x", "x2", "x3"):
        (path.parent / f"{name}.yaml").write_text(HEAD + "description: [" + ", ".join(["1"] * 150_000) + "]\n")


def _junk() -> bytes:
    return random.Random(9).randbytes(64 * 1024)


@dataclass(frozen=True)
class Hostile:
    name: str
    make: Callable[[Path], object]  # given devices/x.yaml, put the hostile thing there (and x*.yaml)
    says: tuple[str, ...]  # words the refusal must contain
    where: str = ""  # the position it must name, ":line:column" (after the file name)
    file: str = "x.yaml"  # the file named


def text(content: str | Callable[[], str]) -> Callable[[Path], object]:
    return lambda path: path.write_text(content() if callable(content) else content)


def _symlink_loop(path: Path) -> None:
    path.symlink_to(path.name)


def _directory(path: Path) -> None:
    path.mkdir()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _device(path: Path) -> None:
    path.symlink_to("/dev/zero")


HOSTILE = [
    Hostile("recursive-alias", text(HEAD + "description: &r [*r]\ntags:\n" + TAG),
            ("*r is inside the value it names", "recursive alias"), ":5:18"),
    Hostile("recursive-alias-mapping", text(HEAD + "description: &m {b: {c: *m}}\ntags:\n" + TAG),
            ("*m is inside the value it names",), ":5:25"),
    Hostile("recursive-merge-key", text(HEAD + "connection: &c\n  <<: *c\n  tcp: {host: h}\ntags:\n" + TAG),
            ("*c is inside the value it names",), ":6:7"),
    Hostile("billion-laughs", text(_laughs), ("more than 200,000 values", "alias *name expanded")),
    Hostile("deep-nesting", text(HEAD + "description: " + "[" * 50_000 + "]" * 50_000 + "\n"),
            ("nest deeper than 64 levels",), ":5:77"),
    Hostile("deep-block-nesting", text(HEAD + "description:\n" + "".join(
        " " * i + "- \n" for i in range(200))), ("nest deeper than 64 levels",), ":69:64"),
    Hostile("deep-through-aliases", text(_deep_aliases), ("*a nests lists and mappings deeper than 64",)),
    Hostile("million-tags", text(_million_tags), ("larger than 4 MiB", "split the devices")),
    Hostile("many-values", text(_many_values), ("more than 200,000 values",)),
    Hostile("wide-mapping", text(_wide_mapping), ("description: expected text",), ":5:14"),
    Hostile("many-bad-tags", text(_bad_tags), ("'int17' is not one of",)),
    Hostile("many-overlapping-tags", text(_overlapping_tags), ("overlaps writable tag t0",)),
    Hostile("many-files", _many_files, ("holds more than 400,000 values",), file="x3.yaml"),
    Hostile("huge-integer", text(HEAD + "description: " + "1" * 5000 + "\ntags:\n" + TAG),
            ("cannot read this value: Exceeds the limit (4300 digits)",), ":5:14"),
    Hostile("impossible-date", text(HEAD + "description: 2001-13-45\ntags:\n" + TAG),
            ("cannot read this value: month must be in 1..12",), ":5:14"),
    Hostile("impossible-date-key", text(HEAD + "2001-13-45: x\ntags:\n" + TAG),
            ("unknown key '2001-13-45'",), ":5:1"),
    Hostile("binary-junk", lambda path: path.write_bytes(_junk()), ("not UTF-8 text",)),
    Hostile("nul-byte", text(HEAD + "description: a\0b\ntags:\n" + TAG),
            ("character '\\x00' is not allowed",), ":5:15"),
    Hostile("symlink-loop", _symlink_loop, ("cannot read", "symbolic links")),
    Hostile("directory", _directory, ("not a regular file (a directory)",)),
    Hostile("named-pipe", _fifo, ("not a regular file (a named pipe)",)),
    Hostile("device", _device, ("not a regular file (a device)",)),
    Hostile("empty", text(""), ("a device file is a mapping of keys",)),
]
