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


TIERS = ("unit", "sim", "docker", "security")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test belongs to exactly one tier (pyproject's markers), so `-m unit` and friends
    select the whole suite between them and no test runs in two tiers."""
    wrong = []
    for item in items:
        tiers = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
        if len(tiers) != 1:
            wrong.append(f"{item.nodeid}: {', '.join(tiers) or 'no tier'}")
    if wrong:
        raise pytest.UsageError(
            f"each test needs exactly one tier marker of {', '.join(TIERS)}:\n  " + "\n  ".join(wrong)
        )
