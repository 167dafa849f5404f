"""The arm64 images, built on this x86_64 host without emulation (`fieldgate images build --platform
linux/arm64`), run here under qemu (binfmt_misc, .ci/qemu.sh) as on an arm64 gateway: readings
from the Modbus simulator reach the broker. And the offline bundle of both platforms: every byte
checked, only the machine's own platform loaded.

About 1.5 min on a 2-core CI (python under qemu starts in seconds, not tenths).
"""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from gateway.images import IMAGES, host_arch, image_name
from tests.docker.stack import IMAGE_TAG, ROOT, Stack, fieldgate, modbus_tcp_device, readings
from tests.docker.test_images import flip_byte, save_bundle
from tests.support.broker import Mosquitto, free_port
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.docker

ARCH = "arm64"


@pytest.fixture(scope="module")
def arm64(engine: docker.DockerClient) -> docker.DockerClient:
    """The arm64 images of FIELDGATE_TEST_IMAGE_TAG, and an engine that can run them here."""
    wanted = [image_name(image, IMAGE_TAG, ARCH) for image in IMAGES]
    missing = [name for name in wanted if not engine.images.list(name=name)]
    if missing:
        pytest.fail(f"arm64 images not built: {missing}: run `fieldgate images build --platform "
                    f"linux/amd64,linux/arm64` (.ci/docker.sh does)", pytrace=False)
    if platform.machine() != "aarch64":
        registered = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
        if not registered.exists() or not registered.read_text().startswith("enabled"):
            pytest.fail("arm64 programs cannot run on this machine: qemu-aarch64 is not registered in "
                        "binfmt_misc: run `sudo bash .ci/qemu.sh` (qemu-user-static, binfmt-support)", pytrace=False)
    return engine


def test_arm64_images_say_arm64_and_run_aarch64_code(arm64: docker.DockerClient) -> None:
    for image in IMAGES:
        name = image_name(image, IMAGE_TAG, ARCH)
        attrs = arm64.images.get(name).attrs
        assert (attrs["Os"], attrs["Architecture"]) == ("linux", "arm64"), name
        assert attrs["Config"]["User"] == "10001:10001", name
        out = arm64.containers.run(name, entrypoint=["python3", "-c", "import platform; print(platform.machine())"],
                                   remove=True)
        assert out.decode().strip() == "aarch64", name


@pytest.fixture
def stack(arm64: docker.DockerClient, module_broker: Mosquitto, tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path / "stack", module_broker.port)
    gateway_yaml = stack.plant / "gateway.yaml"
    text = gateway_yaml.read_text()
    assert f":{IMAGE_TAG}\n" in text
    gateway_yaml.write_text(text.replace(f":{IMAGE_TAG}\n", f":{IMAGE_TAG}-{ARCH}\n"))
    try:
        yield stack
    finally:
        stack.close()


def test_arm64_stack_under_qemu_brings_modbus_readings_to_the_broker(
    stack: Stack, module_subscriber: Subscriber
) -> None:
    stack.add_device("press-1", modbus_tcp_device("press-1", free_port()))
    started = time.time()
    stack.up()
    counter = readings(stack.topic_prefix, "press-1", "counter")
    first = module_subscriber.wait_for(counter, timeout=300)[0]
    # The simulator's counter steps once a second, the collector polls every 250 ms: a later
    # reading with another value shows the arm64 collector keeps polling.
    later = module_subscriber.wait_for(
        lambda m: counter(m) and m.json()["value"] != first.json()["value"], timeout=60)[0]
    temperature = module_subscriber.wait_for(readings(stack.topic_prefix, "press-1", "temperature"), timeout=60)[0]
    twenty = module_subscriber.wait_for(counter, timeout=120, count=20)  # 250 ms polls: about 5 s
    print(f"\narm64 under qemu: up -> first reading at the broker {first.at - started:.1f}s; 20 counter "
          f"readings in {twenty[-1].at - twenty[0].at:.1f}s: {[m.json()['value'] for m in twenty]}; temperature "
          f"{temperature.json()['value']} {temperature.json()['unit']}")
    assert first.json()["quality"] == "good" and later.json()["quality"] == "good"
    assert isinstance(later.json()["value"], int)
    assert temperature.json()["value"] == pytest.approx(21.5)
    containers = stack.wait_containers(lambda c: {"forwarder", "modbus"} <= set(c), 60, "both containers")
    for service in ("forwarder", "modbus"):
        image = containers[service].image
        assert image.attrs["Architecture"] == "arm64", service
        assert containers[service].attrs["Config"]["Image"].endswith(f":{IMAGE_TAG}-{ARCH}"), service


def test_bundle_of_both_platforms_loads_only_this_machines(arm64: docker.DockerClient, tmp_path: Path) -> None:
    """save carries amd64 and arm64 (one tar each, both in the manifest); load checks both tars and
    loads only this machine's, under its plain tag too; a flipped byte in the other platform's tar
    is refused all the same (the signature and the sha256 cover every byte of the bundle)."""
    own = host_arch()
    tag = f"multi-{tmp_path.name[-8:]}".replace("_", "-")
    names = []
    for image in IMAGES:
        repository = f"fieldgate/{image}"
        for arch in ("amd64", "arm64"):
            arm64.images.get(image_name(image, IMAGE_TAG, arch)).tag(repository, f"{tag}-{arch}")
            names.append(image_name(image, tag, arch))
    bundle = tmp_path / "bundle"
    try:
        result, manifest = save_bundle(bundle, tag)
        assert manifest["platforms"] == ["amd64", "arm64"]
        assert sorted(m["path"] for m in manifest["members"]) == [
            "fieldgate-images-amd64.tar", "fieldgate-images-arm64.tar"]
        assert {e["platform"] for e in manifest["images"] if e["name"].endswith("-arm64")} == {"arm64"}
        print("\n" + result.stdout)
        for name in names:
            arm64.images.remove(name, noprune=True)

        result = subprocess.run(fieldgate("images", "load", str(bundle)), capture_output=True, text=True,
                                cwd=ROOT, timeout=600)
        assert result.returncode == 0, result.stderr
        for image in IMAGES:
            loaded = arm64.images.get(image_name(image, tag, own))
            assert loaded.attrs["Architecture"] == own
            assert arm64.images.get(image_name(image, tag)).id == loaded.id  # the plain tag: gateway.yaml's
            other = "arm64" if own == "amd64" else "amd64"
            assert not arm64.images.list(name=image_name(image, tag, other)), "the other platform was loaded"

        other_tar = bundle / f"fieldgate-images-{'arm64' if own == 'amd64' else 'amd64'}.tar"
        flip_byte(other_tar, 4096)
        result = subprocess.run(fieldgate("images", "load", str(bundle)), capture_output=True, text=True,
                                cwd=ROOT, timeout=600)
        assert result.returncode == 1
        assert "damaged" in result.stderr and other_tar.name in result.stderr
    finally:
        for image in IMAGES:
            for reference in (image_name(image, tag), image_name(image, tag, "amd64"), image_name(image, tag, "arm64")):
                if arm64.images.list(name=reference):
                    arm64.images.remove(reference, noprune=True)
