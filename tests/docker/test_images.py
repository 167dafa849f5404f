"""The images as built by `.ci/docker.sh` / `fieldgate images build`, and the offline bundle."""

from __future__ import annotations

import hashlib
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
    """save -> the images leave the engine (their bundle tag; the layers stay, other tests use them)
    -> load brings them back under the same ids; a flipped byte in the tar is refused."""
    tag = f"bundle-{tmp_path.name[-8:]}".replace("_", "-")
    for image in IMAGES:
        repository = image_name(image).rsplit(":", 1)[0]
        engine.images.get(image_name(image)).tag(repository, tag)
    bundle = tmp_path / "bundle"
    try:
        result = subprocess.run(fieldgate("images", "save", str(bundle), "--tag", tag), capture_output=True,
                                text=True, cwd=ROOT, timeout=300)
        assert result.returncode == 0, result.stderr
        manifest = json.loads((bundle / "manifest.json").read_text())
        tar = bundle / "fieldgate-images.tar"
        assert manifest["sha256"] == hashlib.sha256(tar.read_bytes()).hexdigest()
        assert manifest["bytes"] == tar.stat().st_size
        assert manifest["sha256"] in result.stdout
        assert {entry["name"] for entry in manifest["images"]} == {image_name(i, tag) for i in IMAGES}
        ids = {entry["name"]: entry["id"] for entry in manifest["images"]}
        for name, image_id in ids.items():
            assert image_id == engine.images.get(name).id
            engine.images.remove(name, noprune=True)
        assert not any(engine.images.list(name=name) for name in ids)

        result = subprocess.run(fieldgate("images", "load", str(bundle)), capture_output=True, text=True,
                                cwd=ROOT, timeout=300)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("loaded fieldgate/") == 3
        for name, image_id in ids.items():
            assert engine.images.get(name).id == image_id, name

        with tar.open("r+b") as file:
            file.seek(4096)
            byte = file.read(1)
            file.seek(4096)
            file.write(bytes([byte[0] ^ 0xFF]))
        result = subprocess.run(fieldgate("images", "load", str(bundle)), capture_output=True, text=True,
                                cwd=ROOT, timeout=300)
        assert result.returncode == 1
        assert "damaged" in result.stderr and "sha256" in result.stderr
    finally:
        for image in IMAGES:
            if engine.images.list(name=image_name(image, tag)):
                engine.images.remove(image_name(image, tag), noprune=True)
