"""Fixtures of the forwarder tests that stop and start the broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto
from tests.support.mqtt import Subscriber


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto that keeps subscriber sessions across stop()/start(), so the test's own
    subscriber misses nothing while everyone reconnects."""
    broker = Mosquitto.durable(tmp_path).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def durable_subscriber(durable_broker: Mosquitto) -> Iterator[Subscriber]:
    sub = Subscriber(durable_broker.host, durable_broker.port, "fieldgate/line3/#", persistent=True)
    try:
        yield sub
    finally:
        sub.close()
