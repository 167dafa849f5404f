"""Run a component's entry point (`python -m MODULE --config FILE`) as a user would, to completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_entry_point(module: str, config: Path) -> subprocess.CompletedProcess[str]:
    """The finished process, stdout and stderr as text; for configs it refuses at once."""
    return subprocess.run(
        [sys.executable, "-m", module, "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
