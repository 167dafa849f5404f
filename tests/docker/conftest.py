"""Fixtures of the docker tier: a real engine (its absence fails the tests, never skips them),
the fieldgate images, a Mosquitto on the host, and a running stack shared by a module."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from gateway.images import IMAGES, image_name
from tests.docker.stack import IMAGE_TAG, Stack
from tests.support.broker import Mosquitto
from tests.support.mqtt import Subscriber


@pytest.fixture(scope="session")
def engine() -> Iterator[docker.DockerClient]:
    """The local Docker engine with the three images built; `.ci/docker.sh` provides both."""
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"no Docker engine answers ({exc}): run `bash .ci/docker.sh` as root", pytrace=False)
    missing = [image_name(i, IMAGE_TAG) for i in IMAGES if not client.images.list(name=image_name(i, IMAGE_TAG))]
    if missing:
        pytest.fail(f"images not built: {missing}: run `fieldgate images build`", pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    try:
        yield mosquitto
    finally:
        mosquitto.stop()


@pytest.fixture
def make_stack(engine: docker.DockerClient, tmp_path: Path) -> Iterator[type[Stack]]:
    """Stacks made in a test are closed (supervisor stopped, containers and volumes removed) after it."""
    made: list[Stack] = []

    def factory(broker_port: int, network: str = "host") -> Stack:
        stack = Stack(tmp_path / f"stack{len(made)}", broker_port, network)
        made.append(stack)
        return stack

    yield factory  # type: ignore[misc]
    for stack in made:
        stack.close()


@pytest.fixture
def module_subscriber(module_broker: Mosquitto) -> Iterator[Subscriber]:
    sub = Subscriber(module_broker.host, module_broker.port)
    try:
        yield sub
    finally:
        sub.close()


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A null-modem cable: the collector opens the first end, the simulator serves the second.

    mode=666: the container runs as uid 10001, not as the pty's owner.
    """
    collector_end, simulator_end = tmp_path / "ttyCOLLECTOR", tmp_path / "ttySIM"
    socat = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,mode=666,link={collector_end}",
         f"pty,raw,echo=0,mode=666,link={simulator_end}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (collector_end.exists() and simulator_end.exists()):
            assert time.monotonic() < deadline, "socat made no pty pair"
            time.sleep(0.05)
        yield collector_end, simulator_end
    finally:
        socat.terminate()
        socat.wait(5)
