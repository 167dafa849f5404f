"""The forwarder's /healthz: a broker outage is degraded but healthy (a restart cannot cure it),
a connected session that stops acknowledging publishes is unhealthy (a new session cures it).

Both with a real Mosquitto; the stuck session is a TcpProxy that relays everything but the
broker's PUBACKs (pings still answered, so keep-alive sees a live link).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.forwarder.app import Forwarder
from collectors.forwarder.config import ForwarderConfig
from tests.forwarder.helpers import collector, config_dict, counter_readings, until, values_by_tag
from tests.support.broker import Mosquitto, free_port
from tests.support.mqtt import Subscriber
from tests.support.proxy import TcpProxy

pytestmark = pytest.mark.sim

TAGS = ["temperature", "pressure", "run", "count"]
KEEPALIVE = 1.0  # the old rule (unhealthy after 2 x keepalive down) fired after 2 s


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[Mosquitto]:
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


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"fieldgate_forwarder_{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name} in /metrics")


def delivered(subscriber: Subscriber) -> set[int]:
    with subscriber._lock:
        return {v for values in values_by_tag(list(subscriber.messages)).values() for v in values}


def health_config(tmp_path: Path, broker_port: int) -> ForwarderConfig:
    data = config_dict(tmp_path, _Where(broker_port), qos=1, keepalive=f"{KEEPALIVE:g}s")  # type: ignore[arg-type]
    data["metrics"] = {"port": free_port()}
    return ForwarderConfig.model_validate(data)


class _Where:
    """What config_dict reads of a broker: where the forwarder connects (the broker or a proxy)."""

    def __init__(self, port: int) -> None:
        self.host, self.port = "127.0.0.1", port


async def test_a_broker_outage_is_degraded_not_unhealthy_and_buffered_readings_arrive(
    tmp_path: Path, durable_broker: Mosquitto, durable_subscriber: Subscriber
) -> None:
    config = health_config(tmp_path, durable_broker.port)
    port = config.metrics.port
    assert port is not None
    async with Forwarder(config) as forwarder, collector(config) as client:
        assert forwarder.stuck_after == 4 * KEEPALIVE
        client.publish(counter_readings(0, 100, TAGS))
        await until(lambda: len(delivered(durable_subscriber)) == 100, 15, "readings before the outage")
        assert await http_get(port, "/healthz") == (200, "ok\n")

        durable_broker.stop()
        await until(lambda: not forwarder.session.connected, 10, "the forwarder to notice")
        # Longer than the old rule (2 x keepalive) and than the stuck bound (4 x keepalive):
        # every answer is 200, and says why readings wait.
        loop = asyncio.get_running_loop()
        end = loop.time() + 3 * forwarder.stuck_after / 2
        sent = 100
        answers: list[tuple[int, str]] = []
        while loop.time() < end:
            client.publish(counter_readings(sent, 20, TAGS))
            sent += 20
            answers.append(await http_get(port, "/healthz"))
            await asyncio.sleep(0.2)
        assert {status for status, _ in answers} == {200}, [a for a in answers if a[0] != 200][:1]
        body = answers[-1][1]
        assert body.startswith(f"degraded: broker 127.0.0.1:{durable_broker.port} not connected for ")
        assert "refused the connection" in body and "readings buffered; reconnecting (attempt " in body
        _, metrics = await http_get(port, "/metrics")
        assert metric(metrics, "broker_connected") == 0
        assert metric(metrics, "broker_disconnected_seconds") > forwarder.stuck_after
        assert metric(metrics, "broker_connect_attempts_total") >= 3

        durable_broker.start()
        await until(lambda: len(delivered(durable_subscriber)) == sent, 60, "the buffered readings")
        assert delivered(durable_subscriber) == set(range(sent))
        await until(lambda: forwarder.session.connected, 5, "connected")
        assert await http_get(port, "/healthz") == (200, "ok\n")
        _, metrics = await http_get(port, "/metrics")
        assert metric(metrics, "broker_disconnected_seconds") == 0


async def test_a_connected_session_whose_publishes_are_never_acknowledged_is_unhealthy(
    tmp_path: Path, durable_broker: Mosquitto, durable_subscriber: Subscriber
) -> None:
    async with TcpProxy(durable_broker.host, durable_broker.port, mqtt=True) as proxy:
        config = health_config(tmp_path, proxy.port)
        port = config.metrics.port
        assert port is not None
        async with Forwarder(config) as forwarder, collector(config) as client:
            client.publish(counter_readings(0, 100, TAGS))
            await until(lambda: len(delivered(durable_subscriber)) == 100, 15, "readings through the proxy")

            proxy.swallow_acks()
            client.publish(counter_readings(100, 100, TAGS))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 6 * forwarder.stuck_after
            while (answer := await http_get(port, "/healthz"))[0] == 200:
                assert loop.time() < deadline, f"still healthy: {answer}"
                await asyncio.sleep(0.2)
            assert answer[0] == 503
            body = answer[1]
            assert body.startswith("broker session stuck: connected, but ")
            assert "unacknowledged" in body and "(limit 4s, 4 x mqtt.keepalive)" in body
            assert forwarder.session.connected and proxy.swallowed > 0  # keep-alive saw a live link
            _, metrics = await http_get(port, "/metrics")
            assert metric(metrics, "broker_unacked_seconds") > forwarder.stuck_after

            # What the supervisor's restart would do, a new session, cures it: nothing is lost.
            proxy.resume()
            proxy.drop()
            await until(lambda: len(delivered(durable_subscriber)) == 200, 30, "the unacknowledged readings")
            assert delivered(durable_subscriber) == set(range(200))
            await until(lambda: forwarder.session.connected and not forwarder.session.outstanding, 10, "idle")
            assert await http_get(port, "/healthz") == (200, "ok\n")
