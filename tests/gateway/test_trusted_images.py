"""`fieldgate up --trusted-images`: the docker runtime creates containers only from image ids a
signed bundle loaded. Runs against the fake Engine of test_failed_steps, on which every image
of the plant exists with an id no trusted bundle brought."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from gateway.runtime.docker import DockerRuntime
from gateway.runtime.engine_api import APIError
from gateway.runtime.process import RunDir
from gateway.signing import TRUST_STORE_ENV, record_trusted
from gateway.supervisor import Supervisor, load
from tests.gateway.test_compose_render import plant
from tests.gateway.test_failed_steps import POLICY, FakeEngine, run_for, state_of

pytestmark = pytest.mark.unit

IMAGE_ID = "sha256:" + "5e" * 32


class _Image:
    id = IMAGE_ID


class EngineWithImages(FakeEngine):
    """Every image is present (with IMAGE_ID); creating a container fails, after being counted."""

    def answer(self, call: str, *args: Any, **kwargs: Any) -> Any:
        if call == "images.list":
            self.calls[call] += 1
            return [_Image()]
        if call == "api.create_container":
            self.calls[call] += 1
            raise APIError("the fake engine creates nothing")
        return super().answer(call, *args, **kwargs)


async def run_plant(tmp_path: Path, trusted_only: bool) -> tuple[EngineWithImages, str, str]:
    config_dir = plant(tmp_path)
    config, errors = load(config_dir)
    assert config is not None, errors
    run_dir = RunDir.for_config(config_dir)
    engine = EngineWithImages()
    out = io.StringIO()
    async with DockerRuntime(config_dir, run_dir, client=engine, printer=lambda _: None, stats_interval=3600,
                             trusted_only=trusted_only) as runtime:
        supervisor = Supervisor(config_dir, runtime, run_dir, runtime.desired(config, config_dir), POLICY, out=out)
        await run_for(supervisor, 1.0)
    return engine, state_of(run_dir, "modbus"), out.getvalue()


async def test_an_image_no_trusted_bundle_loaded_is_refused_before_any_container_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TRUST_STORE_ENV, str(tmp_path / "trusted-images.json"))
    engine, state, out = await run_plant(tmp_path, trusted_only=True)
    assert "api.create_container" not in engine.calls, dict(engine.calls)
    assert state.startswith("image untrusted (image fieldgate/collector-modbus:0.1.0 (sha256:5e5e5e5e5e5e"), state
    assert "fieldgate images load BUNDLE --trust KEY.pub" in state
    assert "next try in" in state
    assert "modbus: start failed: image fieldgate/collector-modbus:0.1.0" in out


async def test_an_image_a_trusted_bundle_loaded_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "trusted-images.json"
    monkeypatch.setenv(TRUST_STORE_ENV, str(store))
    record_trusted([{"name": "fieldgate/collector-modbus:0.1.0", "id": IMAGE_ID}], "k", store)
    engine, state, _ = await run_plant(tmp_path, trusted_only=True)
    assert engine.calls["api.create_container"] >= 1
    assert "untrusted" not in state


async def test_without_trusted_images_any_local_image_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TRUST_STORE_ENV, str(tmp_path / "none.json"))
    engine, _, _ = await run_plant(tmp_path, trusted_only=False)
    assert engine.calls["api.create_container"] >= 1
