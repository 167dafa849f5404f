"""The broker session alone (mqtt.py): delivery reports against a real Mosquitto."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from functools import partial
from pathlib import Path

import pytest

from collectors.forwarder.formats import OutMessage
from collectors.forwarder.mqtt import BrokerSession
from tests.forwarder.helpers import make_config, until
from tests.support.broker import Mosquitto
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.sim


class Handler:
    def __init__(self) -> None:
        self.up = asyncio.Event()

    def session_up(self) -> None:
        self.up.set()

    def session_down(self, graceful: bool) -> None:
        self.up.clear()

    def message(self, topic: str, payload: bytes) -> None:
        pass


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_every_message_is_reported_delivered_once(tmp_path: Path, broker: Mosquitto, qos: int) -> None:
    count = 3000  # well past any in-flight window
    subscriber = Subscriber(broker.host, broker.port, "s/#", qos=qos)
    handler = Handler()
    done: Counter[int] = Counter()
    try:
        async with BrokerSession(make_config(tmp_path, broker, qos=qos), handler, lambda: None) as session:
            await asyncio.wait_for(handler.up.wait(), 10)
            for i in range(count):
                message = OutMessage(f"s/{i % 7}", str(i).encode(), qos)
                assert session.publish(message, partial(done.update, [i]))
            await until(lambda: len(done) == count, 30, "every delivery report")
            await asyncio.sleep(0.2)  # a late duplicate report would show here
            assert session.outstanding == 0
        assert set(done) == set(range(count)) and set(done.values()) == {1}
        await until(lambda: len(subscriber.messages) >= count, 30, "every message at the subscriber")
        assert sorted(int(m.payload) for m in subscriber.messages) == list(range(count))
    finally:
        subscriber.close()


@pytest.mark.parametrize("qos", [1, 2])
async def test_nothing_is_reported_delivered_before_the_broker_acknowledges(
    tmp_path: Path, broker: Mosquitto, qos: int
) -> None:
    handler = Handler()
    done: list[int] = []
    assert broker.process is not None
    async with BrokerSession(make_config(tmp_path, broker, qos=qos), handler, lambda: None) as session:
        await asyncio.wait_for(handler.up.wait(), 10)
        os.kill(broker.process.pid, signal.SIGSTOP)  # the broker still holds the connection, but answers nothing
        try:
            for i in range(500):
                assert session.publish(OutMessage("s/x", str(i).encode(), qos), partial(done.append, i))
            await asyncio.sleep(0.5)
            assert done == [] and session.outstanding == 500
        finally:
            os.kill(broker.process.pid, signal.SIGCONT)
        await until(lambda: len(done) == 500, 30, "the acknowledgements of the resumed broker")
        assert sorted(done) == list(range(500)) and session.outstanding == 0
