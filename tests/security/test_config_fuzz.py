"""Fuzzing the config loader: any text saved as a device file (or as gateway.yaml) ends in a
valid config or in ConfigErrors (file:line:column lines), never in another exception, which a
running supervisor would have to survive as a bug.

Texts: a valid file with random YAML punctuation, anchors, aliases, tags and odd scalars spliced
in, and free text over the same alphabet. Figures: `-s` prints how many were tried and how
many were valid.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigErrors, load_config

pytestmark = pytest.mark.security

GATEWAY = "gateway: {id: line3}\nmqtt: {host: 127.0.0.1, topic_prefix: plant/line3}\nmetrics: {port: 9100}\n"
DEVICE = """\
name: press-1
protocol: modbus
connection:
  tcp: {host: 10.0.0.5, port: 502}
poll: 250ms
tags:
  - name: temperature
    table: holding
    address: 0
    type: float32
    scale: 0.1
    writable: true
  - &t {name: level, table: input, address: 4, type: int16, unit: cm}
  - {<<: *t, name: flow, address: 5}
"""
PIECES = [
    "[", "]", "{", "}", ",", ":", ": ", "- ", "? ", "&a ", "*a", "&b ", "*b", "<<: ", "!!binary ", "!!int ",
    "!!float ", "!!timestamp ", "!!set ", "!!omap ", "!!python/object ", "!custom ", "|", ">", "'", '"', "#",
    "\n", "\n  ", "\t", "%YAML 1.1\n", "---\n", "...\n", "\\", "\x00", "\x85", "\ufeff", "\u2028", "é",
    "${X}", "${", "$${", ".nan", ".inf", "-.inf", "0x1F", "0o17", "1_000", "1e400", "9" * 5000, "2001-13-45",
    "2001-12-14t21:59:43.10-05:00", "~", "null", "yes", "on", "=", "1:20", "<<", "&a [*a]",
]


@st.composite
def mutated(draw: st.DrawFn, base: str) -> str:
    text = base
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from(PIECES))
        if kind == "insert":
            text = text[:at] + piece + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)):]
        else:
            text = text[:at] + piece + text[at + len(piece):]
    return text


free_text = st.lists(st.sampled_from([*PIECES, "a", "b", "1", " ", "name", "tags", "protocol: modbus"]),
                     max_size=60).map("".join)

counts = {"tried": 0, "valid": 0}


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[None]:
    yield
    print(f"\nconfig fuzz: {counts['tried']} files tried, {counts['valid']} valid, the rest refused as "
          "file:line:column problems, 0 other exceptions")


def load(tmp_path: Path, gateway: str, device: str) -> None:
    plant = tmp_path / "plant"
    (plant / "devices").mkdir(parents=True, exist_ok=True)
    (plant / "gateway.yaml").write_text(gateway, errors="surrogatepass")
    (plant / "devices" / "press-1.yaml").write_text(device, errors="surrogatepass")
    counts["tried"] += 1
    try:
        load_config(plant, env={"X": "x"})
    except ConfigErrors as exc:
        assert exc.problems and all(str(p).startswith(str(plant)) for p in exc.problems)
    else:
        counts["valid"] += 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(device=st.one_of(mutated(DEVICE), free_text))
def test_any_device_file_is_loaded_or_refused(tmp_path: Path, device: str) -> None:
    load(tmp_path, GATEWAY, device)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gateway=st.one_of(mutated(GATEWAY), free_text))
def test_any_gateway_file_is_loaded_or_refused(tmp_path: Path, gateway: str) -> None:
    load(tmp_path, gateway, DEVICE)
