"""The boot unit as systemd reads it: `fieldgate install` into a scratch root, then
`systemd-analyze verify` (which also checks that ExecStart's program and docker.service exist)
and the enable symlink. Skipped where systemd's tools are not installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.install import escape_path
from tests.docker.stack import ROOT, fieldgate
from tests.gateway.test_compose_render import plant

pytestmark = pytest.mark.docker

ANALYZE = shutil.which("systemd-analyze")


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(ANALYZE is None or shutil.which("systemctl") is None,
                    reason="systemd-analyze/systemctl not installed (apt-get install systemd)")
def test_install_writes_a_unit_systemd_accepts_and_enables_it(tmp_path: Path) -> None:
    config_dir = plant(tmp_path)
    root = tmp_path / "root"
    result = subprocess.run(fieldgate("install", str(config_dir), "--root", str(root), "--trusted-images"),
                            capture_output=True, text=True, cwd=ROOT, timeout=60, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    instance = f"fieldgate@{escape_path(str(config_dir.resolve()))}.service"
    units = root / "etc" / "systemd" / "system"
    wants = units / "multi-user.target.wants" / instance
    assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/fieldgate@.service"
    # verify reads the template and the instance's drop-in beside it; any warning is a defect.
    checked = verify(units / instance)
    print(f"systemd-analyze verify {instance}: exit {checked.returncode} {checked.stdout}{checked.stderr}")
    assert checked.returncode == 0 and checked.stdout + checked.stderr == ""
    drop_in = (units / f"{instance}.d" / "fieldgate.conf").read_text()
    assert "FIELDGATE_FLAGS=--trusted-images" in drop_in and "TimeoutStopSec=80s" in drop_in

    # The check can fail: a misspelt value in the drop-in and a dependency that does not exist.
    (units / f"{instance}.d" / "fieldgate.conf").write_text(drop_in.replace("80s", "eighty"))
    assert "Failed to parse time value" in verify(units / instance).stderr
    (units / f"{instance}.d" / "fieldgate.conf").write_text("[Unit]\nRequires=no-such-engine.service\n")
    assert verify(units / instance).returncode != 0
