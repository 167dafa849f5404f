"""The images as built by `.ci/docker.sh` / `fieldgate images build`, and the offline bundle."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import docker
import pytest

from gateway.images import IMAGES, image_name
from tests.docker.stack import ROOT, fieldgate

pytestmark = pytest.mark.docker


def run_in(engine: docker.DockerClient, image: str, code: str) -> str:
    output: bytes = engine.containers.run(image, entrypoint=["python3", "-c", code], remove=True)
    return output.decode()


def test_each_image_has_only_its_extra_a_user_a_healthcheck_and_labels(
    engine: docker.DockerClient,
) -> None:
    # The demo's broker (amqtt) and live view (rich) are in no image: they come with fieldgate[demo].
    modules = "('pymodbus', 'asyncua', 'paho', 'amqtt', 'rich')"
    probe = f"import importlib.util as u; print(*[bool(u.find_spec(m)) for m in {modules}])"
    expected = {"collector-modbus": "True False True False False", "collector-opcua": "False True True False False",
                "forwarder": "False False True False False"}
    for image in IMAGES:
        name = image_name(image)
        assert run_in(engine, name, probe).strip() == expected[image], name
        attrs = engine.images.get(name).attrs
        config = attrs["Config"]
        assert config["User"] == "10001:10001", name
        assert config["Healthcheck"]["Test"][0] == "CMD", name
        assert config["Labels"]["org.opencontainers.image.version"] == name.rsplit(":", 1)[1]
        assert config["Labels"]["org.opencontainers.image.revision"], name
        assert config["Entrypoint"][:2] == ["python3", "-m"], name


def test_bundle_round_trip_and_a_damaged_bundle_is_refused(
    engine: docker.DockerClient, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    result = subprocess.run(fieldgate("images", "save", str(bundle)), capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {entry["name"] for entry in manifest["images"]} == {image_name(i) for i in IMAGES}
    for entry in manifest["images"]:
        assert entry["id"] == engine.images.get(entry["name"]).id

    result = subprocess.run(fieldgate("images", "load", str(bundle)), capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("loaded fieldgate/") == 3

    with (bundle / "fieldgate-images.tar").open("r+b") as tar:
        tar.seek(4096)
        byte = tar.read(1)
        tar.seek(4096)
        tar.write(bytes([byte[0] ^ 0xFF]))
    result = subprocess.run(fieldgate("images", "load", str(bundle)), capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 1
    assert "damaged" in result.stderr
