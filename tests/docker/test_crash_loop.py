"""A collector that cannot run: a memory limit far too small (8 MiB, a typo for 80) gets it
OOM-killed at every start. The Engine restarts it for ever; `fieldgate status` shows the loop and
why; fixing gateway.yaml while `up` runs ends it."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.docker.stack import Stack, after, image, modbus_tcp_device, readings
from tests.support.broker import Mosquitto, free_port
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.docker

MODBUS_LIMITS = f"    image: {image('collector-modbus')}\n    cpus: 0.5\n    memory: {{}}\n"


@pytest.mark.timeout(240)
def test_a_crash_loop_shows_in_status_with_its_cause_and_a_config_fix_ends_it(
    make_stack: Callable[..., Stack], broker: Mosquitto, subscriber: Subscriber
) -> None:
    stack = make_stack(broker.port)
    gateway = stack.plant / "gateway.yaml"
    good = gateway.read_text()
    assert MODBUS_LIMITS.format("128MiB") in good
    gateway.write_text(good.replace(MODBUS_LIMITS.format("128MiB"), MODBUS_LIMITS.format("8MiB")))
    stack.add_device("press-1", modbus_tcp_device("press-1", free_port()))
    stack.up()

    deadline = time.monotonic() + 90
    while not (row := stack.status_table().get("modbus", {})).get("STATE", "").startswith("crash-looping"):
        assert time.monotonic() < deadline, f"no crash loop in `fieldgate status`: {row}"
        time.sleep(1)
    assert "out of memory" in row["STATE"] and "exited with code 137" in row["STATE"], row
    assert int(row["RESTARTS"]) >= 3, row
    assert row["IMAGE"] == image("collector-modbus")
    assert stack.status_table()["forwarder"]["STATE"] in ("starting", "running")  # the others run on
    container = stack.containers()["modbus"]
    # The Engine restarts it and never gives up: no retry limit; the supervisor leaves it to the
    # Engine instead of stacking restarts of its own on top.
    assert container.attrs["HostConfig"]["RestartPolicy"] == {"Name": "unless-stopped", "MaximumRetryCount": 0}
    assert container.attrs["HostConfig"]["Memory"] == 8 * 2**20
    assert "restart modbus" not in (stack.supervisor.text() if stack.supervisor else "")
    result = stack.status()
    assert result.returncode == 0 and "crash-looping" in result.stdout, result.stdout
    print(f"\n{result.stdout}")

    gateway.write_text(good)
    fixed = time.time()
    subscriber.wait_for(after(fixed, readings(stack.topic_prefix, "press-1", "counter")), timeout=90)
    assert "config change applied: modbus" in (stack.supervisor.text() if stack.supervisor else "")
    new = stack.containers()["modbus"]
    assert new.id != container.id and new.attrs["HostConfig"]["Memory"] == 128 * 2**20
    deadline = time.monotonic() + 30
    while (row := stack.status_table()["modbus"])["STATE"] not in ("running", "starting"):
        assert time.monotonic() < deadline, row
        time.sleep(1)
