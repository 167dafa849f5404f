"""`fieldgate validate` against hostile device files: each is refused quickly, with exit 1, the
file and position, and the limit it passed; nothing hangs, crashes or eats the machine's memory.

Before the reader was bounded: `&r [*r]` gave a RecursionError, 50,000 nested `[` a segfault in
libyaml's composer, billion laughs ran past 60 s at 3.3 GB, 10^6 tags a MemoryError after 145 s.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.runtime.process import child_environment
from tests.security.hostile_config import HOSTILE, Hostile

pytestmark = pytest.mark.security

GATEWAY_YAML = """\
gateway: {id: line3}
mqtt: {host: 127.0.0.1, port: 1883}
metrics: {port: null}
runtime: process
"""
PRESS_YAML = """\
name: press-1
protocol: modbus
connection:
  tcp: {host: 127.0.0.1, port: 1502}
tags:
  - {name: temperature, table: holding, address: 0, type: float32}
"""
SECONDS = 10.0  # generous: each answers in under 4 s on a loaded 2-core machine
MAX_RSS_MB = 400  # the valid 2-file plant alone: ~30 MB


def plant(tmp_path: Path) -> Path:
    config = tmp_path / "plant"
    (config / "devices").mkdir(parents=True)
    (config / "gateway.yaml").write_text(GATEWAY_YAML)
    (config / "devices" / "press-1.yaml").write_text(PRESS_YAML)
    return config


# `fieldgate validate`, then its own peak RSS (VmHWM: this process image only; ru_maxrss of a
# child counts the forking pytest's memory too) on the last line.
VALIDATE = """
import atexit, re, runpy, sys
def peak():
    status = open("/proc/self/status").read()
    print("peak-rss-kb", re.search(r"VmHWM:\\s*(\\d+)", status).group(1), flush=True)
atexit.register(peak)
sys.argv = ["fieldgate", "validate", sys.argv[1]]
runpy.run_module("gateway.cli", run_name="__main__")
"""


def validate_measured(config: Path) -> tuple[int, str, float, float]:
    """(exit code, output, seconds, peak RSS in MB) of `fieldgate validate DIR`."""
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", VALIDATE, str(config)], capture_output=True, text=True,
                            errors="replace", timeout=60, env=child_environment())
    seconds = time.monotonic() - start
    output = result.stdout + result.stderr
    peak = re.search(r"^peak-rss-kb (\d+)$", output, re.M)
    assert peak is not None, output[-2000:]
    return result.returncode, output, seconds, int(peak.group(1)) / 1024


@pytest.mark.parametrize("case", HOSTILE, ids=lambda case: case.name)
def test_validate_refuses_a_hostile_file_quickly(case: Hostile, tmp_path: Path) -> None:
    config = plant(tmp_path)
    path = config / "devices" / "x.yaml"
    case.make(path)
    code, output, seconds, rss = validate_measured(config)
    print(f"{case.name}: exit {code} in {seconds:.2f} s, peak RSS {rss:.0f} MB")
    assert code == 1, output[-2000:]
    line = next((ln for ln in output.splitlines() if case.says[0] in ln), None)
    assert line is not None, output[-2000:]
    assert line.startswith(f"{path.parent / case.file}{case.where}:"), line
    assert all(words in output for words in case.says), output[-2000:]
    assert "Traceback" not in output
    assert seconds < SECONDS and rss < MAX_RSS_MB


def test_a_file_just_under_the_limits_is_read(tmp_path: Path) -> None:
    """The limits leave room: a 5,000-tag device with a merge key per tag is valid."""
    config = plant(tmp_path)
    tags = "".join(f"  - {{<<: *t, name: t{i}, address: {i}}}\n" for i in range(1, 5000))
    (config / "devices" / "big.yaml").write_text(
        "name: big\nprotocol: modbus\nconnection:\n  tcp: {host: 127.0.0.1, port: 1503}\ntags:\n"
        "  - &t {name: t0, table: input, address: 0, type: int16, unit: degC}\n" + tags)
    code, output, seconds, rss = validate_measured(config)
    print(f"5,000 tags with merge keys: exit {code} in {seconds:.2f} s, peak RSS {rss:.0f} MB")
    assert code == 0, output[-2000:]
    assert "5001 tags" in output


def test_an_exception_the_loader_does_not_expect_is_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Belt and braces for the running supervisor: whatever escapes load_config (a bug) refuses
    the change, named by its type; it never reaches the loop (which would stop every service)."""
    import gateway.config
    from gateway.supervisor import load

    def explode(_dir: Path) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(gateway.config, "load_config", explode)
    config, errors = load(Path("plant"))
    assert config is None
    assert errors == ("plant: the config could not be read (RecursionError, a fieldgate bug: please report it "
                      "with the file that caused it)")


def test_a_component_refuses_a_deeply_nested_slice_instead_of_crashing(tmp_path: Path) -> None:
    """A component reads its own slice too (`--config FILE`): 50,000 nested `[` made libyaml's
    composer segfault (exit -11); now it is refused at its position with the config exit code 2."""
    from tests.support.entry import run_entry_point

    config = tmp_path / "modbus.yaml"
    config.write_text("name: modbus\ndevices: " + "[" * 50_000 + "]" * 50_000 + "\n")
    result = run_entry_point("collectors.modbus", config)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{config}:2:73: lists and mappings nest deeper than 64 levels" in result.stderr + result.stdout
