"""`fieldgate install`: the boot unit's text, the instance name and the stop timeout (no systemd needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.install import (
    SHIPPED_EXEC,
    drop_in_text,
    escape_path,
    grace_periods,
    shipped_unit,
    stop_timeout,
    unit_text,
)
from tests.gateway.test_compose_render import plant

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("path", "escaped"), [  # each one as `systemd-escape --path` prints it
    ("/etc/fieldgate/plant", "etc-fieldgate-plant"),
    ("/", "-"),
    ("/opt/my plant/line-2", "opt-my\\x20plant-line\\x2d2"),
    ("/srv/.hidden/a.b", "srv-.hidden-a.b"),
    ("/tmp//x/", "tmp-x"),
    ("/data/Über", "data-\\xc3\\x9cber"),
    ("/.dot", "\\x2edot"),
])
def test_the_instance_name_is_the_path_escaped_as_systemd_escapes_it(path: str, escaped: str) -> None:
    assert escape_path(path) == escaped


def unit_keys(text: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys[key] = value
    return keys


def test_the_unit_runs_up_with_docker_after_docker_restarts_on_failure_and_stops_by_sigterm() -> None:
    keys = unit_keys(unit_text("/opt/venv/bin/fieldgate"))
    assert keys["ExecStart"] == "/opt/venv/bin/fieldgate up %f --runtime docker $FIELDGATE_FLAGS"
    assert keys["Requires"] == "docker.service"
    assert "docker.service" in keys["After"].split()
    assert keys["Restart"] == "on-failure"
    assert keys["StartLimitIntervalSec"] == "0"  # never gives up
    # The supervisor stops the stack in order on SIGTERM; systemd signals only it (mixed), and
    # SIGKILLs what is left after the timeout.
    assert keys["KillSignal"] == "SIGTERM" and keys["KillMode"] == "mixed"
    assert keys["WantedBy"] == "multi-user.target"
    assert f"ExecStart={SHIPPED_EXEC} " in shipped_unit()


def test_the_stop_timeout_covers_every_grace_period_of_the_plant(tmp_path: Path) -> None:
    graces = sorted(grace_periods(plant(tmp_path)))
    assert graces == [10.0, 10.0, 30.0]  # two collectors, then the forwarder (it flushes its buffer)
    timeout = stop_timeout(graces)
    assert timeout == 80
    text = drop_in_text(tmp_path, ["--trusted-images"], timeout)
    assert "Environment=FIELDGATE_FLAGS=--trusted-images\n" in text and "TimeoutStopSec=80s\n" in text
