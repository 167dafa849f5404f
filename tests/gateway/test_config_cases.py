"""Golden cases: each folder in cases/ holds a config directory and the exact lines
`fieldgate validate` reports for it (errors, or a valid config's warnings). A bug becomes a folder.

    cases/<name>/config/      gateway.yaml, devices/*.yaml
    cases/<name>/expected.txt one problem per line; CONFIG stands for the config directory

FIELDGATE_UPDATE_GOLDEN=1 rewrites expected.txt from what the loader says now (review the diff).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.config import ConfigErrors, load_config

CASES = Path(__file__).parent / "cases"
pytestmark = pytest.mark.unit


def reported(config_dir: Path) -> list[str]:
    try:
        config = load_config(config_dir, env={})
    except ConfigErrors as exc:
        lines = [str(problem) for problem in exc.problems]
    else:
        lines = list(config.warnings)
    return [line.replace(str(config_dir), "CONFIG") for line in lines]


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_case(case: str) -> None:
    folder = CASES / case
    got = reported(folder / "config")
    expected_file = folder / "expected.txt"
    if os.environ.get("FIELDGATE_UPDATE_GOLDEN"):
        expected_file.write_text("".join(f"{line}\n" for line in got))
    assert got == expected_file.read_text().splitlines()
