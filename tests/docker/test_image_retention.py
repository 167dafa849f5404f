"""Disk kept in check on a real engine: five updates, each followed by the cleanup
`fieldgate update` runs once the new image is healthy. The images are made here with
`docker import` (4 MB of random bytes each, the fieldgate component label) in a repository of
this test only, so no other image of the engine is ever a candidate."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from collections.abc import Iterator

import docker
import pytest

from gateway.retention import COMPONENT_LABEL
from gateway.update import clean_after_update

pytestmark = pytest.mark.docker

PAYLOAD = 4 * 1024 * 1024


def image_tar(seed: int) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        body = os.urandom(PAYLOAD - 16) + seed.to_bytes(16, "big")
        info = tarfile.TarInfo("opt/fieldgate/payload")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return data.getvalue()


@pytest.fixture
def repo(engine: docker.DockerClient) -> Iterator[str]:
    name = f"fieldgate-retention-{os.getpid()}/collector-modbus"
    yield name
    for container in engine.containers.list(all=True, filters={"label": f"test-repo={name}"}):
        container.remove(force=True)
    for image in engine.images.list(name=name):
        for tag in image.tags:
            with contextlib.suppress(docker.errors.ImageNotFound):
                engine.images.remove(tag)


def make(engine: docker.DockerClient, repo: str, tag: str, seed: int, label: bool = True) -> str:
    changes = ['CMD ["/opt/fieldgate/payload"]'] + ([f"LABEL {COMPONENT_LABEL}=modbus"] if label else [])
    engine.api.import_image_from_data(image_tar(seed), repository=repo, tag=tag, changes=changes)
    return str(engine.images.get(f"{repo}:{tag}").id)


def repo_use(engine: docker.DockerClient, repo: str) -> tuple[int, int]:
    images = engine.images.list(name=repo)
    return len(images), sum(int(i.attrs["Size"]) for i in images)


def test_five_updates_leave_the_running_image_the_previous_one_and_what_a_container_uses(
    engine: docker.DockerClient, repo: str
) -> None:
    ids = {0: make(engine, repo, "1.0", 0)}
    # Someone's own image in the same repository (no fieldgate label), and a stopped container
    # kept on the first version (e.g. for inspection): neither may go.
    foreign = make(engine, repo, "hand-made", 99, label=False)
    engine.containers.create(f"{repo}:1.0", name=f"retention-kept-{os.getpid()}", labels={"test-repo": repo})
    running = engine.containers.create(f"{repo}:1.0", labels={"test-repo": repo})
    said: list[str] = []
    for n in range(1, 6):  # the update: a new image, the service's container recreated on it
        ids[n] = make(engine, repo, f"1.{n}", n)
        running.remove(force=True)
        running = engine.containers.create(f"{repo}:1.{n}", labels={"test-repo": repo})
        clean_after_update(f"{repo}:1.{n}", ids[n - 1], said.append)
    count, size = repo_use(engine, repo)
    left = {str(i.id) for i in engine.images.list(name=repo)}
    print(f"\nafter five updates: {count} images, {size / 1e6:.1f} MB in {repo} "
          f"(without the cleanup: 7 images, {7 * PAYLOAD / 1e6:.1f} MB)\n  " + "\n  ".join(said))
    assert left == {ids[5], ids[4], ids[0], foreign}  # running, previous, a container's, someone else's
    assert size <= 4 * PAYLOAD * 1.01
    assert [line.split()[3] for line in said] == [f"{repo}:1.{n}" for n in (1, 2, 3)]
