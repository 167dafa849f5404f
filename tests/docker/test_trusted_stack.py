"""`fieldgate up --runtime docker --trusted-images` on a real engine: a service whose image id no
trusted bundle loaded is not created and says why in `fieldgate status`; once its id is trusted
(what `fieldgate images load --trust` records) the supervisor's next attempt starts it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from gateway.images import image_name
from gateway.signing import record_trusted
from tests.docker.stack import Process, Stack, fieldgate, modbus_tcp_device, readings
from tests.support.broker import Mosquitto, free_port
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.docker


@pytest.mark.timeout(300)
def test_an_untrusted_image_is_not_run_until_a_trusted_bundle_brought_its_id(
    make_stack: Callable[..., Stack], engine: docker.DockerClient, broker: Mosquitto, subscriber: Subscriber,
    tmp_path: Path,
) -> None:
    store = tmp_path / "trusted-images.json"
    forwarder, modbus = image_name("forwarder"), image_name("collector-modbus")
    record_trusted([{"name": forwarder, "id": str(engine.images.get(forwarder).id)}], "test", store)
    stack = make_stack(broker.port)
    stack.add_device("press-1", modbus_tcp_device("press-1", free_port()))
    stack.supervisor = Process(fieldgate("up", str(stack.plant), "--runtime", "docker", "--trusted-images"),
                               stack.workdir / "up.log", env={"FIELDGATE_TRUST_STORE": str(store)})

    deadline = time.monotonic() + 90
    while True:
        table = stack.status_table()
        state = table.get("modbus", {}).get("STATE", "")
        if state.startswith("image untrusted") and table.get("forwarder", {}).get("STATE", "").startswith("running"):
            break
        if time.monotonic() > deadline:
            logs = {n: c.logs(tail=20).decode() for n, c in stack.containers().items()}
            raise AssertionError(f"{table}\n{logs}\n{stack.supervisor.text()[-3000:]}")
        time.sleep(0.5)
    print(f"\nmodbus: {state}")
    assert "modbus" not in stack.containers()
    assert "came from no trusted bundle" in stack.supervisor.text()

    record_trusted([{"name": modbus, "id": str(engine.images.get(modbus).id)}], "test", store)
    stack.wait_containers(lambda c: "modbus" in c and c["modbus"].status == "running", 90,
                          "modbus created on the next attempt")
    subscriber.wait_for(readings(stack.topic_prefix, "press-1", "counter"), timeout=120)
