"""Run a component's entry point (`python -m MODULE --config FILE`) as a user would, to completion."""

from __future__ import annotations

import os
import signal
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


def start_entry_point(module: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`python -m MODULE --config FILE` running in the background, its output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(config)],
            stdout=out, stderr=out, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )


def stop_entry_point(proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM, as the supervisor stops a component; one that does not stop in 15 s fails the test."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{proc.args!r} did not stop on SIGTERM:\n{log.read_text()}") from None
