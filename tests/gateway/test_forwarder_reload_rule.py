"""Which changes the forwarder takes in place (Reload) and which recreate it, under both runtimes.

The forwarder's reload_hash covers its slice without the catalog (`devices:`), and the runtime's
own part (command, secrets; a container's service and mounted files): a change of the catalog
is a Reload, anything else - the MQTT session's settings, the Sparkplug group and node id, the
buffer, a password - a Recreate, as docs/runtime.md says.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.plan import BackoffState, Observed, ServiceSpec, plan
from gateway.runtime.common import RunDir
from gateway.runtime.docker import DockerRuntime
from gateway.runtime.process import ProcessRuntime

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"
TAG = "  - name: extra\n    table: holding\n    address: 40\n    type: uint16\n    unit: cm\n  - name: "


def specs(runtime: str, config_dir: Path, state: Path, env: dict[str, str]) -> dict[str, ServiceSpec]:
    config = load_config(config_dir, env=env)
    run_dir = RunDir.for_config(config_dir, state)
    if runtime == "process":
        process = ProcessRuntime(run_dir)
        process._key = b"k" * 32  # one key for both looks, as one runtime instance has
        return process.desired(config, config_dir)
    docker = DockerRuntime(config_dir, run_dir, client=object(), printer=lambda _: None)  # type: ignore[arg-type]
    return docker.desired(config, config_dir)


def running(spec: ServiceSpec) -> Observed:
    return Observed(spec.name, "running", spec.config_hash, 0.0, image=spec.image, reload_hash=spec.reload_hash)


def edit(path: str, old: str, new: str) -> Callable[[Path], None]:
    def apply(config_dir: Path) -> None:
        file = config_dir / path
        text = file.read_text()
        assert old in text, (path, old)
        file.write_text(text.replace(old, new, 1))
    return apply


def remove(path: str) -> Callable[[Path], None]:
    return lambda config_dir: (config_dir / path).unlink()


CHANGES = [
    ("a tag added", edit("devices/press-1.yaml", "  - name: ", TAG), "Reload"),
    ("a unit changed", edit("devices/press-1.yaml", "unit: degC", "unit: K"), "Reload"),
    ("a device removed", remove("devices/meter-7.yaml"), "Reload"),
    ("the MQTT keep-alive", edit("gateway.yaml", "  qos: 1\n", "  qos: 1\n  keepalive: 10s\n"), "Recreate"),
    ("the broker port", edit("gateway.yaml", "port: 1883", "port: 1884"), "Recreate"),
    ("the payload format", edit("gateway.yaml", "format: json", "format: sparkplug"), "Recreate"),
    ("the Sparkplug group id", edit("gateway.yaml", "group: plant1", "group: plant2"), "Recreate"),
    ("the buffer size", edit("gateway.yaml", "max_bytes: 256MiB", "max_bytes: 128MiB"), "Recreate"),
    ("a password", edit("gateway.yaml", "  qos: 1\n", "  qos: 1\n  username: gw\n  password: ${MQTT_PASSWORD}\n"),
     "Recreate"),
]


@pytest.mark.parametrize("runtime", ["process", "docker"])
@pytest.mark.parametrize(("title", "change", "step"), CHANGES, ids=[c[0] for c in CHANGES])
def test_what_reloads_the_forwarder_in_place_and_what_recreates_it(
    tmp_path: Path, runtime: str, title: str, change: Callable[[Path], None], step: str
) -> None:
    config_dir = tmp_path / "plant"
    shutil.copytree(EXAMPLE, config_dir)
    env = {"MQTT_PASSWORD": "one"}
    before = specs(runtime, config_dir, tmp_path / "state", env)["forwarder"]
    assert before.reload_hash is not None
    change(config_dir)
    after = specs(runtime, config_dir, tmp_path / "state", env)["forwarder"]
    steps = plan({"forwarder": after}, {"forwarder": running(before)}, 10.0, BackoffState())
    assert [type(s).__name__ for s in steps] == [step], steps


def test_a_changed_password_recreates_the_forwarder(tmp_path: Path) -> None:
    """The process runtime hands each child its passwords: a new value is a new process."""
    config_dir = tmp_path / "plant"
    shutil.copytree(EXAMPLE, config_dir)
    edit("gateway.yaml", "  qos: 1\n", "  qos: 1\n  username: gw\n  password: ${MQTT_PASSWORD}\n")(config_dir)
    before = specs("process", config_dir, tmp_path / "state", {"MQTT_PASSWORD": "one"})["forwarder"]
    after = specs("process", config_dir, tmp_path / "state", {"MQTT_PASSWORD": "two"})["forwarder"]
    steps = plan({"forwarder": after}, {"forwarder": running(before)}, 10.0, BackoffState())
    assert [type(s).__name__ for s in steps] == ["Recreate"], steps
