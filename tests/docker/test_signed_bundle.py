"""A signed offline bundle on a real engine: save --sign, load --trust, and every refusal loads
nothing. The bundle holds three tiny images made here with `docker import` (a few bytes each,
tagged like the fieldgate images under a tag of this test), so saving and loading take
milliseconds and the real images are never touched."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from gateway.images import IMAGES, image_name
from tests.docker.stack import ROOT, fieldgate

pytestmark = pytest.mark.docker


def tiny_tar(text: str) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        body = text.encode()
        info = tarfile.TarInfo("etc/fieldgate-test")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return data.getvalue()


@pytest.fixture
def tiny_images(engine: docker.DockerClient, tmp_path: Path) -> Iterator[dict[str, str]]:
    """name -> id of three imported images, removed again after the test."""
    tag = f"signed-{os.getpid()}-{tmp_path.name[-6:]}".replace("_", "-")
    made: dict[str, str] = {}
    for image in IMAGES:
        name = image_name(image, tag)
        repository, _, version = name.rpartition(":")
        engine.api.import_image_from_data(tiny_tar(f"{image} {tag}\n"), repository=repository, tag=version)
        made[name] = str(engine.images.get(name).id)
    try:
        yield made
    finally:
        for name in made:
            with contextlib.suppress(docker.errors.ImageNotFound):
                engine.images.remove(name, force=True)


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(fieldgate(*args), capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, **env})


def present(engine: docker.DockerClient, names: Iterator[str] | list[str]) -> list[str]:
    return [n for n in names if engine.images.list(name=n)]


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_signed_bundle_loads_with_trust_and_each_refusal_loads_nothing(
    engine: docker.DockerClient, tiny_images: dict[str, str], tmp_path: Path
) -> None:
    env = {"FIELDGATE_TRUST_STORE": str(tmp_path / "trusted-images.json")}
    names = list(tiny_images)
    tag = names[0].rpartition(":")[2]
    for key in ("plant", "stranger"):
        result = run("keys", "generate", str(tmp_path / "keys" / key), env=env)
        assert result.returncode == 0, result.stderr
    bundle = tmp_path / "bundle"
    result = run("images", "save", str(bundle), "--tag", tag, "--sign", str(tmp_path / "keys" / "plant"), env=env)
    assert result.returncode == 0, result.stderr
    assert "signed" in result.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {i["name"]: i["id"] for i in manifest["images"]} == tiny_images
    for name in names:
        engine.images.remove(name, force=True)
    assert present(engine, names) == []

    trust = ["--trust", str(tmp_path / "keys" / "plant.pub")]
    tar_size = (bundle / "fieldgate-images.tar").stat().st_size

    def variant(label: str) -> Path:
        copy = tmp_path / label
        shutil.copytree(bundle, copy)
        return copy

    unsigned = variant("unsigned")
    (unsigned / "manifest.sig").unlink()
    tar_flipped = variant("tar-flipped")
    flip(tar_flipped / "fieldgate-images.tar", tar_size // 2)
    manifest_flipped = variant("manifest-flipped")
    flip(manifest_flipped / "manifest.json", 40)
    signature_flipped = variant("signature-flipped")
    sig = signature_flipped / "manifest.sig"
    data = bytearray(sig.read_bytes())
    at = data.index(b'"signature": "') + 24  # a byte inside the base64: still well formed, no longer the signature
    data[at] = ord("A") if data[at] != ord("A") else ord("B")
    sig.write_bytes(bytes(data))
    refusals = [
        (unsigned, trust, "is not signed (no manifest.sig); with --trust only signed bundles load"),
        (bundle, ["--trust", str(tmp_path / "keys" / "stranger.pub")], "which is not trusted here"),
        (tar_flipped, trust, "fieldgate-images.tar was changed after signing"),
        (manifest_flipped, trust, "manifest.json does not match its signature"),
        (signature_flipped, trust, "manifest.json does not match its signature"),
    ]
    for path, keys, message in refusals:
        result = run("images", "load", str(path), *keys, env=env)
        print(f"{path.name}: exit {result.returncode}: {result.stderr.strip()}")
        assert result.returncode == 1, (path.name, result.stdout, result.stderr)
        assert message in result.stderr and "nothing was loaded" in result.stderr, (path.name, result.stderr)
        assert present(engine, names) == [], f"{path.name}: a refused bundle loaded images"
    assert not (tmp_path / "trusted-images.json").exists()

    result = run("images", "load", str(bundle), *trust, env=env)
    assert result.returncode == 0, result.stderr
    print(result.stdout.strip())
    assert {n: str(engine.images.get(n).id) for n in names} == tiny_images
    assert result.stdout.count("(trusted)") == len(names)
    store = json.loads((tmp_path / "trusted-images.json").read_text())
    assert set(store["images"]) == set(tiny_images.values())
