"""What `fieldgate update` removes once the new image is healthy: a pure choice, table-tested."""

from __future__ import annotations

import pytest

from gateway.retention import LocalImage, repository, stale_images

pytestmark = pytest.mark.unit

REPO = "fieldgate/collector-modbus"


def img(id_: str, *tags: str, component: str | None = "modbus", created: str = "",
        platform: str = "linux/amd64") -> LocalImage:
    return LocalImage(f"sha256:{id_}", tuple(tags), component, created or id_, platform=platform)


V1, V2, V3, V4 = (img(f"v{n}", f"{REPO}:0.1.{n}") for n in range(1, 5))


@pytest.mark.parametrize(("case", "images", "running", "keep", "removed"), [
    ("five versions: the running one and the one before stay",
     [V1, V2, V3, V4], V4, {"sha256:v3"}, ["sha256:v1", "sha256:v2"]),
    ("an image a container uses (a stopped one too) stays",
     [V1, V2, V3, V4], V4, {"sha256:v3", "sha256:v1"}, ["sha256:v2"]),
    ("the previous image is kept by id even when its tag moved to the new build",
     [img("old"), img("new", f"{REPO}:0.1.0")], img("new", f"{REPO}:0.1.0"), {"sha256:old"}, []),
    ("another repository is never touched",
     [img("o", "fieldgate/forwarder:0.1.1", component="forwarder"), img("x", "fieldgate/collector-opcua:0.1.1",
                                                                        component="opcua"), V1, V4],
     V4, set(), ["sha256:v1"]),
    ("the same repository without the fieldgate label (someone else's image) stays",
     [img("foreign", f"{REPO}:hand-made", component=None), V2, V4], V4, set(), ["sha256:v2"]),
    ("an image also tagged in another repository stays (someone else named it)",
     [img("shared", f"{REPO}:0.1.0", "acme/modbus:prod"), V4], V4, set(), []),
    ("an image derived from ours (label inherited) in another repository stays",
     [img("derived", "acme/collector-modbus:1"), V4], V4, set(), []),
    ("an untagged image stays (`images build` prunes those)",
     [img("dangling"), V4], V4, set(), []),
    ("an image with several tags of the repository goes, all tags",
     [img("two", f"{REPO}:0.1.0", f"{REPO}:stable"), V4], V4, set(), ["sha256:two"]),
    ("another platform's build (a cross-built arm64 image on the build host) stays",
     [img("arm", f"{REPO}:0.1.0-arm64", platform="linux/arm64"), V1, V4], V4, set(), ["sha256:v1"]),
    ("a running image that is not a fieldgate image: nothing is removed",
     [V1, V2], img("z", f"{REPO}:custom", component=None), set(), []),
    ("a registry with a port is part of the repository, not a tag",
     [img("r1", "registry:5000/fieldgate/collector-modbus:1"), img("r2", "registry:5000/fieldgate/collector-modbus:2"),
      img("r3", "registry:5000/fieldgate/collector-modbus:3"), V1],
     img("r3", "registry:5000/fieldgate/collector-modbus:3"), {"sha256:r2"}, ["sha256:r1"]),
])
def test_what_an_update_removes(
    case: str, images: list[LocalImage], running: LocalImage, keep: set[str], removed: list[str]
) -> None:
    assert [i.id for i in stale_images(images, running, keep)] == removed, case


def test_repository_of_a_reference() -> None:
    assert repository("fieldgate/forwarder:0.1.0") == "fieldgate/forwarder"
    assert repository("registry:5000/fieldgate/forwarder:0.1.0") == "registry:5000/fieldgate/forwarder"
    assert repository("registry:5000/fieldgate/forwarder") == "registry:5000/fieldgate/forwarder"
