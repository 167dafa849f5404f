"""`sandbox: gvisor` on a real engine: the Modbus collector runs under runsc (gVisor) against our
simulator, beside a forwarder under runc, and its readings reach a real Mosquitto.

Skipped when the engine declares no `runsc` runtime (`sudo bash .ci/runsc.sh` declares it).
"""

from __future__ import annotations

import time

import docker
import pytest

from tests.docker.stack import Stack, after, modbus_tcp_device, readings
from tests.support.broker import Mosquitto, free_port
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.docker


@pytest.fixture
def runsc(engine: docker.DockerClient) -> str:
    runtimes = engine.info().get("Runtimes") or {}
    if "runsc" not in runtimes:
        pytest.skip("the engine declares no runsc runtime: run `sudo bash .ci/runsc.sh`")
    return "runsc"


def test_a_sandboxed_modbus_collector_delivers_readings(
    runsc: str, make_stack: type[Stack], module_broker: Mosquitto, module_subscriber: Subscriber
) -> None:
    sub = module_subscriber
    stack = make_stack(module_broker.port)
    path = stack.plant / "gateway.yaml"
    text = path.read_text().replace("    update: stop-first\n", "    update: stop-first\n    sandbox: gvisor\n")
    path.write_text(text)
    stack.add_device("press-1", modbus_tcp_device("press-1", free_port()))
    started = time.time()
    stack.up()
    first = sub.wait_for(readings(stack.topic_prefix, "press-1", "counter"), timeout=120)[0]
    print(f"\nup -> first sandboxed reading at the broker: {first.at - started:.1f}s")
    assert isinstance(first.json()["value"], int) and first.json()["quality"] == "good"
    temperature = sub.wait_for(readings(stack.topic_prefix, "press-1", "temperature"), timeout=30)[0]
    assert temperature.json()["value"] == pytest.approx(21.5)

    containers = stack.wait_containers(lambda c: {"forwarder", "modbus"} <= set(c), 30, "two containers")
    modbus, forwarder = containers["modbus"], containers["forwarder"]
    assert modbus.attrs["HostConfig"]["Runtime"] == runsc
    assert forwarder.attrs["HostConfig"]["Runtime"] == "runc"
    # Inside, the kernel is gVisor's (its boot log), not the host's.
    code, output = modbus.exec_run(["dmesg"])
    assert code == 0 and b"Starting gVisor" in output, output[:300]
    # The lock-down is kept under runsc, and the health check (an exec in the sandbox) answers.
    host = modbus.attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert modbus.attrs["Config"]["User"] == "10001:10001"
    stack.wait_containers(lambda c: c["modbus"].attrs["State"].get("Health", {}).get("Status") == "healthy",
                          120, "a healthy sandboxed collector")
    # Readings keep coming after the health check turned healthy.
    sub.wait_for(after(time.time(), readings(stack.topic_prefix, "press-1", "counter")), timeout=30)
