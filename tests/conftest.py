"""Fixtures shared by every tier: real brokers, free ports, and a guard against leftovers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto, free_port
from tests.support.mqtt import Subscriber


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto on a free port; `broker.stop()` / `broker.start()` simulate outages."""
    mosquitto = Mosquitto(tmp_path).start()
    try:
        yield mosquitto
    finally:
        mosquitto.stop()


@pytest.fixture
def subscriber(broker: Mosquitto) -> Iterator[Subscriber]:
    sub = Subscriber(broker.host, broker.port)
    try:
        yield sub
    finally:
        sub.close()


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    """Fail a test that leaves threads running behind it."""
    before = set(threading.enumerate())
    yield
    deadline_threads = [
        t for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.daemon and t.name != "asyncio_0"
    ]
    for thread in deadline_threads:
        thread.join(timeout=5)
    leftover = [t.name for t in deadline_threads if t.is_alive()]
    assert not leftover, f"test left threads running: {leftover}"
