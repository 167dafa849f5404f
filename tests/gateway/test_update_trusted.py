"""`fieldgate update DIR SERVICE --image X` beside a supervisor started with `--trusted-images`:
an image no trusted bundle loaded is refused before gateway.yaml is touched, with what to do,
instead of being tried for the whole health deadline and rolled back.

The Engine is faked at docker-py's seam (every image present with one id); the supervisor's
status.json is the one a running `up --trusted-images` writes (checked against the fake Engine
of test_trusted_images)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

import gateway.runtime.engine
from gateway.runtime.common import RunDir
from gateway.signing import TRUST_STORE_ENV, record_trusted
from gateway.update import update_image
from tests.gateway.test_compose_render import plant
from tests.gateway.test_trusted_images import run_plant

pytestmark = pytest.mark.unit

NEW = "fieldgate/collector-modbus:0.2.0"
NEW_ID = "sha256:" + "7a" * 32


class _Image:
    def __init__(self, name: str) -> None:
        self.id = NEW_ID if name == NEW else "sha256:" + "01" * 32
        self.attrs = {"Size": 1}
        self.labels: dict[str, str] = {}


class _Images:
    def get(self, name: str) -> _Image:
        return _Image(name)


class _Client:
    images = _Images()

    def close(self) -> None:
        pass


def supervised(config_dir: Path, store: Path | None) -> None:
    """status.json of a live supervisor (this process) started with or without --trusted-images."""
    run_dir = RunDir.for_config(config_dir)
    run_dir.status_file.parent.mkdir(parents=True, exist_ok=True)
    run_dir.status_file.write_text(json.dumps({
        "supervisor": {"pid": os.getpid(), "running": True, "runtime": "docker", "config_dir": str(config_dir),
                       "trusted_images": None if store is None else str(store)},
        "config": {"applied_at": time.time(), "error": None},
        "services": [],
    }))


def update(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(gateway.runtime.engine, "connect", _Client)
    args = argparse.Namespace(dir=config_dir, collector="modbus", image=NEW, timeout=0.5, keep_images=True)
    return update_image(args)


def test_an_untrusted_image_is_refused_up_front_and_gateway_yaml_is_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config_dir = plant(tmp_path)
    store = tmp_path / "trusted-images.json"
    record_trusted([{"name": "fieldgate/collector-modbus:0.1.0", "id": "sha256:" + "01" * 32}], "k", store)
    supervised(config_dir, store)
    before = (config_dir / "gateway.yaml").read_bytes()
    started = (config_dir / "gateway.yaml").stat().st_mtime_ns

    assert update(config_dir, monkeypatch) == 1
    out, err = capsys.readouterr()
    assert err.strip() == (
        f"fieldgate update: image {NEW} ({NEW_ID[:19]}) came from no trusted bundle, and the supervisor "
        f"(pid {os.getpid()}) runs only trusted images (`fieldgate up --trusted-images`, trust store {store}): "
        "it would not start it. Load it from a signed bundle first (`fieldgate images load BUNDLE --trust "
        "KEY.pub`); gateway.yaml is unchanged")
    assert "->" not in out and "rolling back" not in err  # never tried
    assert (config_dir / "gateway.yaml").read_bytes() == before
    assert (config_dir / "gateway.yaml").stat().st_mtime_ns == started


@pytest.mark.parametrize("trusted", [True, False], ids=["id-in-the-store", "supervisor-runs-any-image"])
def test_an_image_the_supervisor_would_run_is_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], trusted: bool
) -> None:
    config_dir = plant(tmp_path)
    store = tmp_path / "trusted-images.json"
    record_trusted([{"name": NEW, "id": NEW_ID}], "k", store)
    supervised(config_dir, store if trusted else None)
    update(config_dir, monkeypatch)  # this fake supervisor never turns it healthy: rolled back
    out, err = capsys.readouterr()
    assert f"modbus: fieldgate/collector-modbus:0.1.0 -> {NEW} (via the running supervisor)" in out
    assert "trusted bundle" not in err


async def test_the_supervisor_names_its_trust_store_in_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "trusted-images.json"
    monkeypatch.setenv(TRUST_STORE_ENV, str(store))
    for trusted_only, named in ((True, str(store)), (False, None)):
        await run_plant(tmp_path / str(trusted_only), trusted_only=trusted_only)
        status: dict[str, Any] = json.loads(RunDir.for_config(tmp_path / str(trusted_only) / "plant")
                                            .status_file.read_text())
        assert status["supervisor"]["trusted_images"] == named
