"""A Modbus RTU device on a socat pty read inside the locked-down container, and `fieldgate update`
on a running stack: a good image goes live, a broken one is rolled back."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from tests.docker.stack import (
    ROOT,
    Stack,
    after,
    fieldgate,
    image,
    modbus_rtu_device,
    modbus_tcp_device,
    opcua_device,
    readings,
)
from tests.support.broker import Mosquitto, free_port
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.docker


def test_rtu_device_on_a_pty_is_read_inside_the_container(
    make_stack: Callable[..., Stack], broker: Mosquitto, subscriber: Subscriber, pty_pair: tuple[Path, Path]
) -> None:
    collector_end, simulator_end = pty_pair
    stack = make_stack(broker.port)
    stack.add_device("drive-3", modbus_rtu_device("drive-3", str(collector_end)),
                     sim_text=modbus_rtu_device("drive-3", str(simulator_end)))
    stack.up()
    pressure = subscriber.wait_for(readings(stack.topic_prefix, "drive-3", "pressure"), timeout=120)[0]
    status = subscriber.wait_for(readings(stack.topic_prefix, "drive-3", "status"), timeout=30)[0]
    assert pressure.json()["value"] == pytest.approx(4.25)
    assert pressure.json()["unit"] == "bar"
    assert status.json()["value"] == -3

    pts = os.path.realpath(collector_end)
    rdev = os.stat(pts).st_rdev
    host = stack.containers()["modbus"].attrs["HostConfig"]
    mounts = stack.containers()["modbus"].attrs["Mounts"]
    assert {"Source": pts, "Destination": str(collector_end)}.items() <= next(
        m for m in mounts if m["Destination"] == str(collector_end)).items()
    assert host["DeviceCgroupRules"] == [f"c {os.major(rdev)}:{os.minor(rdev)} rwm"]
    assert not host["Devices"], "a pty goes in as a bind mount, not as a device"
    assert host["Privileged"] is False
    for other in ("forwarder",):
        other_host = stack.containers()[other].attrs["HostConfig"]
        assert not other_host["DeviceCgroupRules"] and not other_host["Devices"]


def _tag(engine: docker.DockerClient, source: str, target: str) -> None:
    repository, tag = target.rsplit(":", 1)
    engine.images.get(source).tag(repository, tag)


def update(stack: Stack, reference: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # --keep-images: the engine is shared with other tests, whose images of this repository
        # the default cleanup would remove (tests/docker/test_image_retention.py covers it).
        fieldgate("update", str(stack.plant), "modbus", "--image", reference, "--timeout", str(timeout),
                  "--keep-images"),
        capture_output=True, text=True, cwd=ROOT, timeout=timeout * 3 + 60)


def test_update_goes_live_when_healthy_and_rolls_back_when_not(
    make_stack: Callable[..., Stack], engine: docker.DockerClient, broker: Mosquitto, subscriber: Subscriber
) -> None:
    good, broken = image("collector-modbus") + "-next", image("collector-modbus") + "-broken"
    _tag(engine, image("collector-modbus"), good)
    # The forwarder's image under a collector's name: it starts, rejects the Modbus config, exits.
    _tag(engine, image("forwarder"), broken)
    try:
        stack = make_stack(broker.port)
        stack.add_device("press-1", modbus_tcp_device("press-1", free_port()))
        stack.up()
        subscriber.wait_for(readings(stack.topic_prefix, "press-1", "counter"), timeout=120)

        result = update(stack, good, 90)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"healthy on {good}" in result.stdout
        assert f"image: {good}" in (stack.plant / "gateway.yaml").read_text()
        assert stack.containers()["modbus"].attrs["Config"]["Image"] == good
        updated = time.time()
        subscriber.wait_for(after(updated, readings(stack.topic_prefix, "press-1", "counter")), timeout=30)

        before = (stack.plant / "gateway.yaml").read_text()
        result = update(stack, broken, 25)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"rolled back to {good}" in result.stderr
        assert (stack.plant / "gateway.yaml").read_text() == before
        container = stack.wait_containers(
            lambda c: c["modbus"].attrs["Config"]["Image"] == good and c["modbus"].status == "running",
            60, "the modbus collector back on the previous image")["modbus"]
        assert container.attrs["Config"]["Image"] == good
        rolled_back = time.time()
        resumed = after(rolled_back, readings(stack.topic_prefix, "press-1", "counter"))
        subscriber.wait_for(resumed, timeout=60)
    finally:
        for tag in (good, broken):
            engine.images.remove(tag, noprune=True)


def test_bridge_network_reaches_the_gateway_pc_through_the_host_gateway(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """network: bridge: the containers get their own network; 127.0.0.1 in the config becomes the
    gateway PC (host.docker.internal), where the broker and the simulator listen on every address."""
    broker_port = free_port()
    (tmp_path / "broker-dir").mkdir()
    broker = Mosquitto(tmp_path / "broker-dir", extra_conf=f"listener {broker_port} 0.0.0.0\n").start()
    try:
        subscriber = Subscriber("127.0.0.1", broker_port)
        try:
            stack = make_stack(broker_port, network="bridge")
            stack.add_device("press-1", modbus_tcp_device("press-1", free_port()), sim_host="0.0.0.0")
            oven = stack.add_device("oven-2", opcua_device("oven-2", free_port()), sim_host="0.0.0.0")
            stack.up()
            subscriber.wait_for(readings(stack.topic_prefix, "oven-2", "temperature"), timeout=120)
            temperature = readings(stack.topic_prefix, "press-1", "temperature")
            reading = subscriber.wait_for(temperature, timeout=120)[0]
            assert reading.json()["value"] == pytest.approx(21.5)
            containers = stack.containers()
            for name in ("forwarder", "modbus"):
                host = containers[name].attrs["HostConfig"]
                assert host["NetworkMode"] == f"{stack.project}_default", name
                assert "host.docker.internal:host-gateway" in host["ExtraHosts"], name
            # The supervisor scrapes /metrics on the container's own address: the rate shows up.
            deadline = time.monotonic() + 60
            while "readings_per_s" not in next(
                    (s for s in stack.status_json()["services"] if s["name"] == "modbus"), {}):
                assert time.monotonic() < deadline, stack.status_json()
                time.sleep(1)
            # A device edit is taken in place: the same container, the new poll interval live.
            old = stack.containers()["opcua"].id
            oven.write_text(oven.read_text().replace("interval: 200ms", "interval: 300ms"))
            edited = time.time()
            subscriber.wait_for(after(edited, readings(stack.topic_prefix, "oven-2", "temperature")),
                                timeout=60)
            assert stack.supervisor is not None
            stack.supervisor.wait_for_output("reload opcua in place", timeout=60)
            assert stack.containers()["opcua"].id == old
            # A service edit (its memory limit) is a recreate, start-first (the OPC UA setting):
            # the new container runs beside the old one until it is healthy, then takes its name.
            gateway = stack.plant / "gateway.yaml"
            gateway.write_text(gateway.read_text().replace("memory: 192MiB", "memory: 160MiB"))
            edited = time.time()
            stack.wait_containers(
                lambda c: "opcua" in c and c["opcua"].id != old and c["opcua"].status == "running",
                120, "the opcua collector replaced start-first")
            assert "recreate opcua start-first" in stack.supervisor.text()
            resumed = after(edited, readings(stack.topic_prefix, "oven-2", "temperature"))
            subscriber.wait_for(resumed, timeout=60)
        finally:
            subscriber.close()
    finally:
        broker.stop()
