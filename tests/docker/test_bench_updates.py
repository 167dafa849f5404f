"""bench/bench_updates.py keeps running: its smallest row on a real engine (no figure is checked)."""

from __future__ import annotations

import subprocess
import sys

import docker
import pytest

from tests.docker.stack import ROOT

pytestmark = pytest.mark.docker


@pytest.mark.timeout(450)
def test_bench_updates_smallest_row_runs() -> None:
    try:
        client = docker.from_env(timeout=10)
        client.ping()
        client.close()
    except docker.errors.DockerException as exc:
        pytest.skip(f"no Docker engine answers ({exc})")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_updates.py"), "--only", "poll-changed", "--seconds", "short"],
        capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[:1] == ["poll-changed"]]
    assert rows, result.stdout
    assert rows[0][2] == "press-1", result.stdout  # the row names the untouched device's figures
