"""The docker runtime's Reload step on a real engine: the container sees its replaced slice and
gets SIGHUP, and nothing is recreated.

It relies on two things: `compose.write` replaces the slice by rename and the container mounts
the slice's directory (a bind mount of the file itself would keep showing the old inode), then
the runtime sends SIGHUP through the Engine API (`docker kill --signal HUP`). The modbus image
runs with a stand-in entry point that prints how many names its slice holds on each SIGHUP, so
the images on the engine serve as they are.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest

from gateway.plan import BackoffState, Reload, Start, plan
from gateway.runtime.common import RunDir
from gateway.runtime.containers import ContainerFactory
from gateway.runtime.docker import RELOAD_LABEL, DockerRuntime
from gateway.runtime.engine_api import connect
from gateway.supervisor import load
from tests.gateway.test_compose_render import plant

pytestmark = pytest.mark.docker

STAND_IN = """
import signal, time
def show(*_):
    print("slice:", open("/etc/fieldgate/config.yaml").read().count('"name"'), flush=True)
signal.signal(signal.SIGHUP, show)
show()
while True:
    time.sleep(1)
"""

EXTRA_TAG = "  - name: extra\n    table: holding\n    address: 40\n    type: uint16\n  - name: "


def names_in(path: Path) -> int:
    return path.read_text().count('"name"')


async def logs_until(container: Any, text: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while text not in (out := container.logs().decode()):
        assert time.monotonic() < deadline, f"{text!r} not in the container's output: {out!r}"
        await asyncio.sleep(0.2)


async def test_reload_hands_the_new_slice_to_the_running_container(
    engine: docker.DockerClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_args = ContainerFactory.create_args

    def stand_in(self: ContainerFactory, *args: Any, **kwargs: Any) -> dict[str, Any]:
        made = create_args(self, *args, **kwargs)
        made["healthcheck"] = {"test": ["NONE"]}  # the stand-in serves no /healthz
        return {**made, "entrypoint": ["python3", "-c", STAND_IN], "command": []}

    monkeypatch.setattr(ContainerFactory, "create_args", stand_in)
    config_dir = plant(tmp_path)
    gateway = config_dir / "gateway.yaml"
    gateway.write_text(gateway.read_text().replace("line3", f"reload-{uuid.uuid4().hex[:8]}"))
    device = config_dir / "devices" / "press-1.yaml"
    config, errors = load(config_dir)
    assert config is not None, errors
    # The runtime's own Engine client (engine_api); docker-py, the test's, reads the container's output.
    async with DockerRuntime(config_dir, RunDir.for_config(config_dir), client=connect(), printer=lambda _: None,
                             stats_interval=3600) as runtime:
        container = None
        try:
            spec = runtime.desired(config, config_dir)["modbus"]
            assert (await runtime.execute(Start(spec, "test"))).ok
            container = engine.containers.get(runtime._listing()[0]["modbus"].id)
            assert container.labels[RELOAD_LABEL] == spec.reload_hash
            slice_file = Path(spec.config_file or "")
            names = names_in(slice_file)
            await logs_until(container, f"slice: {names}")

            device.write_text(device.read_text().replace("  - name: ", EXTRA_TAG, 1))
            config, errors = load(config_dir)
            assert config is not None, errors
            new = runtime.desired(config, config_dir)["modbus"]
            observed = await runtime.observe()
            steps = plan({"modbus": new}, {"modbus": observed["modbus"]}, time.monotonic(), BackoffState())
            assert [type(s) for s in steps] == [Reload], steps
            assert (await runtime.execute(steps[0])).ok
            assert names_in(slice_file) == names + 1
            await logs_until(container, f"slice: {names + 1}")

            observed = await runtime.observe()
            assert observed["modbus"].instance == container.short_id  # the same container
            assert observed["modbus"].config_hash == new.config_hash
            assert plan({"modbus": new}, observed, time.monotonic(), BackoffState()) == []
            container.reload()
            assert container.status == "running" and container.attrs["RestartCount"] == 0
        finally:
            if container is not None:
                container.remove(force=True)
