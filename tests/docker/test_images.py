"""The images as built by `.ci/docker.sh` / `fieldgate images build`, and the offline bundle."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import docker
import pytest

from gateway.images import IMAGES, SIZE_TARGETS, STACK_TARGET, image_name, layer_sizes, stack_size
from gateway.runtime.engine import Engine
from tests.docker.stack import IMAGE_TAG, ROOT, fieldgate

pytestmark = pytest.mark.docker


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0xFF]))


def save_bundle(bundle: Path, tag: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`fieldgate images save BUNDLE --tag TAG` as a user runs it; its output and the manifest."""
    result = subprocess.run(fieldgate("images", "save", str(bundle), "--tag", tag), capture_output=True,
                            text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    return result, json.loads((bundle / "manifest.json").read_text())


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
        name = image_name(image, IMAGE_TAG)
        assert run_in(engine, name, probe).strip() == expected[image], name
        attrs = engine.images.get(name).attrs
        config = attrs["Config"]
        assert config["User"] == "10001:10001", name
        assert config["Healthcheck"]["Test"][0] == "CMD", name
        version = name.rsplit(":", 1)[1].removesuffix("-amd64").removesuffix("-arm64")  # TAG-ARCH: TAG
        assert config["Labels"]["org.opencontainers.image.version"] == version
        assert config["Labels"]["org.opencontainers.image.revision"], name
        assert config["Entrypoint"][:2] == ["python3", "-m"], name


def test_images_are_small_and_share_their_lower_layers(engine: docker.DockerClient) -> None:
    """The sizes `fieldgate images build` prints, against the targets: each image, and the three on
    disk with the shared layers (interpreter + libraries + stdlib, then fieldgate's core) once."""
    names = [image_name(image, IMAGE_TAG) for image in IMAGES]
    with Engine(docker.from_env()) as images:
        sizes = {image: int(engine.images.get(image_name(image, IMAGE_TAG)).attrs["Size"]) for image in IMAGES}
        stack = stack_size(images, names)
        layers = [layer_sizes(images, name) for name in names]
    print(f"\nsizes {IMAGE_TAG}: " + ", ".join(f"{i} {s / 1e6:.1f} MB" for i, s in sizes.items())
          + f"; the three on disk {stack / 1e6:.1f} MB")
    for image, size in sizes.items():
        assert size <= SIZE_TARGETS[image], f"{image} is {size / 1e6:.1f} MB, over {SIZE_TARGETS[image] / 1e6:.0f} MB"
    assert stack <= STACK_TARGET, f"the three take {stack / 1e6:.1f} MB on disk, over {STACK_TARGET / 1e6:.0f} MB"
    assert all(layers), "the layer sizes could not be read from the images' history"
    shared = {tuple(diff for diff, _ in image_layers[:2]) for image_layers in layers}
    assert len(shared) == 1, f"the three images do not share their two lower layers: {shared}"
    assert sum(size for _, size in layers[0][:2]) > 0.5 * stack


# What a gateway may import only when a plant's config or a rare path asks for it: each must be in
# every image (or, for a driver's own, in that image), or that plant has an outage the day it does.
LAZY = ("import ssl, _ssl, hashlib, hmac, secrets, json, uuid, decimal, zlib, bz2, lzma, gzip, zipfile, "
        "sqlite3, zoneinfo, csv, pickle, queue, socket, select, selectors, signal, termios, fcntl, tty, pty, "
        "subprocess, locale, gettext, traceback, linecache, tokenize, struct, array, math, random, datetime, "
        "calendar, logging.handlers, logging.config, concurrent.futures.thread, concurrent.futures.process, "
        "asyncio.unix_events, urllib.request, http.client, email.utils, ipaddress, platform, unicodedata, "
        "ctypes, mmap, resource, runpy, importlib.metadata, importlib.resources, faulthandler, tempfile, "
        "shutil, glob, pathlib, getpass, shlex, textwrap, argparse, inspect, dataclasses, typing\n"
        "import datetime as d; d.datetime.strptime('2026-12-03 10:00', '%Y-%m-%d %H:%M')\n"
        "for codec in ('utf-8', 'utf-16-le', 'latin-1', 'ascii', 'cp1252', 'idna', 'utf-32', 'shift_jis', 'gbk'):\n"
        "    'x'.encode(codec)\n"
        "ctx = ssl.create_default_context(); assert ctx.cert_store_stats()['x509_ca'] > 100, 'no CA bundle'\n"
        "import collectors.core.service, collectors.forwarder.mqtt, collectors.forwarder.sparkplug\n"
        "from google.protobuf.internal import api_implementation; assert api_implementation.Type() == 'upb'\n"
        "import yaml; assert yaml.__with_libyaml__\n")
DRIVERS = {"collector-modbus": "import pymodbus.client, serial, collectors.modbus.__main__\n",
           "collector-opcua": "import asyncua, asyncua.crypto.security_policies, asyncua.crypto.uacrypto, "
                              "cryptography.hazmat.primitives.asymmetric.rsa, aiosqlite, collectors.opcua.__main__\n",
           "forwarder": "import collectors.forwarder.__main__\n"}


def test_every_module_a_gateway_may_import_lazily_is_in_each_image(engine: docker.DockerClient) -> None:
    for image in IMAGES:
        name = image_name(image, IMAGE_TAG)
        assert run_in(engine, name, LAZY + DRIVERS[image] + "print('ok')").strip() == "ok", name


def test_bundle_round_trip_and_a_damaged_bundle_is_refused(
    engine: docker.DockerClient, tmp_path: Path
) -> None:
    """save -> the images leave the engine (their bundle tag; the layers stay, other tests use them)
    -> load brings them back under the same ids; a flipped byte in the tar is refused."""
    tag = f"bundle-{tmp_path.name[-8:]}".replace("_", "-")
    for image in IMAGES:
        repository = image_name(image).rsplit(":", 1)[0]
        engine.images.get(image_name(image, IMAGE_TAG)).tag(repository, tag)
    bundle = tmp_path / "bundle"
    try:
        result, manifest = save_bundle(bundle, tag)
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

        flip_byte(tar, 4096)
        result = subprocess.run(fieldgate("images", "load", str(bundle)), capture_output=True, text=True,
                                cwd=ROOT, timeout=300)
        assert result.returncode == 1
        assert "damaged" in result.stderr and "sha256" in result.stderr
    finally:
        for image in IMAGES:
            if engine.images.list(name=image_name(image, tag)):
                engine.images.remove(image_name(image, tag), noprune=True)
