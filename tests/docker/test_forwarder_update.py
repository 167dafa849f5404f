"""`fieldgate update DIR forwarder --image` on a running Sparkplug stack: a host sees one clean
NDEATH then NBIRTH, bdSeq in order (the NDEATH's is the last NBIRTH's, the new NBIRTH's the
next: the bdSeq lives in the buffer volume, which the new container mounts again), and the
readings the collector hands off while the forwarder is away are all published after it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import docker
import pytest

from tests.docker.stack import ROOT, Stack, fieldgate, image
from tests.support import sparkplug as sp
from tests.support.broker import Mosquitto
from tests.support.counting import CountingDevice, device_yaml, missing, sparkplug_counter
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.docker


def test_a_forwarder_image_update_is_one_clean_ndeath_then_nbirth(
    make_stack: Callable[..., Stack], engine: docker.DockerClient, broker: Mosquitto
) -> None:
    target = image("forwarder") + "-next"
    repository, tag = target.rsplit(":", 1)
    engine.images.get(image("forwarder")).tag(repository, tag)
    sub = Subscriber(broker.host, broker.port, "spBv1.0/#")
    device = CountingDevice().__enter__()
    try:
        stack = make_stack(broker.port)
        gateway = stack.plant / "gateway.yaml"
        gateway.write_text(gateway.read_text().replace("  qos: 1\n", "  qos: 1\n  format: sparkplug\n", 1))
        stack.add_device("press-1", device_yaml(device.port), simulate=False)
        group, node = "fieldgate", stack.gateway_id
        stack.up()
        data = f"spBv1.0/{group}/DDATA/{node}/press-1"
        sub.wait_for(lambda m: m.topic == data, timeout=120, count=10)

        result = subprocess.run(
            fieldgate("update", str(stack.plant), "forwarder", "--image", target, "--timeout", "90",
                      "--keep-images"), capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        reborn = sub.wait_for(lambda m: m.topic == f"spBv1.0/{group}/NBIRTH/{node}", timeout=60, count=2)[1]
        sub.wait_for(lambda m: m.topic == data and m.at > reborn.at + 1, timeout=60)
        assert stack.containers()["forwarder"].attrs["Config"]["Image"] == target

        messages = list(sub.messages)
        lifecycle = [(m.topic.split("/")[2], sp.decode(m.payload).metric("bdSeq").value) for m in messages
                     if m.topic in (f"spBv1.0/{group}/NBIRTH/{node}", f"spBv1.0/{group}/NDEATH/{node}")]
        first = lifecycle[0][1]
        assert lifecycle == [("NBIRTH", first), ("NDEATH", first), ("NBIRTH", (first + 1) % 256)], lifecycle
        # Every poll the collector made while the forwarder was away reached the host after it.
        values = sparkplug_counter(messages, group, node)
        assert missing(values) == [], "counter values read from the device and never published"
    finally:
        sub.close()
        device.__exit__(None, None, None)
        engine.images.remove(target, noprune=True)
