"""`sandbox: gvisor` on a real engine: the Modbus collector runs under runsc (gVisor) against our
simulator, beside a forwarder under runc, and its readings reach a real Mosquitto.

An engine without a `runsc` runtime fails the test (never skips it): `sudo bash .ci/runsc.sh`
installs gVisor and declares the runtime; `.ci/docker.sh` runs it for CI. A sandbox starts in
about a second on an idle machine; the deadlines are minutes, for a loaded shared engine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import docker
import pytest

from tests.docker.stack import Stack, after, modbus_tcp_device, readings
from tests.support.broker import Mosquitto, free_port
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.docker

T = TypeVar("T")


@pytest.fixture
def runsc(engine: docker.DockerClient) -> str:
    runtimes = engine.info().get("Runtimes") or {}
    if "runsc" not in runtimes:
        pytest.fail(f"the Docker engine declares no runsc runtime (it has: {', '.join(sorted(runtimes))}): "
                    "run `sudo bash .ci/runsc.sh` (installs gVisor, declares runsc in /etc/docker/daemon.json)",
                    pytrace=False)
    return "runsc"


def explained(stack: Stack, wait: Callable[[], T]) -> T:
    """`wait()`, and when it times out, what the supervisor and the containers said."""
    try:
        return wait()
    except TimeoutError as exc:
        said = [f"fieldgate up:\n{stack.supervisor.text()[-2000:] if stack.supervisor else ''}"]
        for name, container in stack.containers().items():
            logs = container.logs(tail=15).decode(errors="replace")
            said.append(f"{name} ({container.attrs['HostConfig'].get('Runtime')}, {container.status}):\n{logs}")
        raise AssertionError(f"{exc}\n\n" + "\n".join(said)) from exc


def health(containers: dict[str, Any]) -> str:
    return str(containers["modbus"].attrs["State"].get("Health", {}).get("Status"))


@pytest.mark.timeout(420)
def test_a_sandboxed_modbus_collector_delivers_readings(
    runsc: str, make_stack: type[Stack], module_broker: Mosquitto, module_subscriber: Subscriber
) -> None:
    sub = module_subscriber
    stack = make_stack(module_broker.port)
    path = stack.plant / "gateway.yaml"
    text = path.read_text()
    assert "    update: stop-first\n" in text  # the Modbus collector's section of tests/docker/stack.py
    path.write_text(text.replace("    update: stop-first\n", "    update: stop-first\n    sandbox: gvisor\n"))
    stack.add_device("press-1", modbus_tcp_device("press-1", free_port()))
    started = time.time()
    stack.up()
    first = explained(stack, lambda: sub.wait_for(readings(stack.topic_prefix, "press-1", "counter"),
                                                  timeout=180)[0])
    print(f"\nup -> first sandboxed reading at the broker: {first.at - started:.1f}s")
    assert isinstance(first.json()["value"], int) and first.json()["quality"] == "good"
    temperature = explained(stack, lambda: sub.wait_for(readings(stack.topic_prefix, "press-1", "temperature"),
                                                        timeout=60)[0])
    assert temperature.json()["value"] == pytest.approx(21.5)

    containers = stack.wait_containers(lambda c: {"forwarder", "modbus"} <= set(c), 60, "two containers")
    modbus, forwarder = containers["modbus"], containers["forwarder"]
    assert modbus.attrs["HostConfig"]["Runtime"] == runsc
    assert forwarder.attrs["HostConfig"]["Runtime"] == "runc"
    # Inside, the kernel is gVisor's (the release its Linux emulation reports), not the host's.
    code, output = modbus.exec_run(["python3", "-c", "import os; print(os.uname().release)"])
    assert code == 0, output[:300]
    assert output.decode().strip() != os.uname().release, (output, os.uname().release)
    # The lock-down is kept under runsc, and the health check (an exec in the sandbox) answers.
    host = modbus.attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert modbus.attrs["Config"]["User"] == "10001:10001"
    explained(stack, lambda: stack.wait_containers(lambda c: health(c) == "healthy", 180,
                                                   "a healthy sandboxed collector"))
    # Readings keep coming after the health check turned healthy.
    explained(stack, lambda: sub.wait_for(after(time.time(), readings(stack.topic_prefix, "press-1", "counter")),
                                          timeout=60))
    # The forwarder admitted the sandbox's connection (runsc's gofer connects as root) and no other.
    assert "refused a connection" not in forwarder.logs().decode(errors="replace")


@pytest.mark.timeout(420)
def test_a_sandboxed_forwarder_takes_readings_from_a_runc_collector(
    runsc: str, make_stack: type[Stack], module_broker: Mosquitto, module_subscriber: Subscriber
) -> None:
    """The other way round: the hand-off socket is made inside the sandbox (`--host-uds=all`
    creates it on the shared volume) and a collector under runc connects to it as uid 10001."""
    sub = module_subscriber
    stack = make_stack(module_broker.port)
    path = stack.plant / "gateway.yaml"
    text = path.read_text()
    assert "  memory: 128MiB\ncollectors:" in text  # the forwarder's section of tests/docker/stack.py
    path.write_text(text.replace("  memory: 128MiB\ncollectors:", "  memory: 128MiB\n  sandbox: gvisor\ncollectors:"))
    stack.add_device("press-2", modbus_tcp_device("press-2", free_port()))
    stack.up()
    explained(stack, lambda: sub.wait_for(readings(stack.topic_prefix, "press-2", "counter"), timeout=180))
    containers = stack.wait_containers(lambda c: {"forwarder", "modbus"} <= set(c), 60, "two containers")
    assert containers["forwarder"].attrs["HostConfig"]["Runtime"] == runsc
    assert containers["modbus"].attrs["HostConfig"]["Runtime"] == "runc"
    assert "refused a connection" not in containers["forwarder"].logs().decode(errors="replace")
