"""The forwarder's /healthz: a broker outage is degraded but healthy (a restart cannot cure it),
a connected session that stops acknowledging publishes is unhealthy (a new session cures it).

Both with a real Mosquitto; the stuck session is a TcpProxy that relays everything but the
broker's PUBACKs (pings still answered, so keep-alive sees a live link).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collectors.forwarder.app import Forwarder
from collectors.forwarder.config import ForwarderConfig
from tests.forwarder.helpers import (
    collector,
    config_dict,
    counter_readings,
    fill,
    out_of_order,
    small_disk,
    until,
    values_by_tag,
)
from tests.support.broker import Mosquitto, free_port
from tests.support.http import http_get
from tests.support.mqtt import Subscriber
from tests.support.proxy import TcpProxy

pytestmark = pytest.mark.sim

TAGS = ["temperature", "pressure", "run", "count"]
KEEPALIVE = 1.0  # the old rule (unhealthy after 2 x keepalive down) fired after 2 s


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


async def test_a_spill_the_disk_refuses_loses_nothing_and_is_unhealthy_until_written_or_sent(
    tmp_path: Path, durable_broker: Mosquitto, durable_subscriber: Subscriber, caplog: pytest.LogCaptureFixture
) -> None:
    """The session is lost while readings wait in memory for PUBACKs, and the disk is full: the
    spill fails inside paho's disconnect callback. The readings stay in memory and arrive."""
    with small_disk(tmp_path / "disk", "256k") as disk:
        async with TcpProxy(durable_broker.host, durable_broker.port, mqtt=True) as proxy:
            data = config_dict(tmp_path, _Where(proxy.port), qos=1, keepalive="1s")  # type: ignore[arg-type]
            data["metrics"] = {"port": free_port()}
            data["buffer"]["dir"] = str(disk / "buffer")
            config = ForwarderConfig.model_validate(data)
            port = config.metrics.port
            assert port is not None
            async with Forwarder(config) as forwarder, collector(config) as client:
                await until(lambda: forwarder.session.connected, 10, "the broker session")
                proxy.swallow_acks()  # published, never acknowledged: they stay in the live lane
                client.publish(counter_readings(0, 2000, TAGS))
                await until(lambda: forwarder.buffer.live.pending == 2000, 10, "2000 unacknowledged readings")
                filler = fill(disk)
                proxy.refuse()
                proxy.drop()  # the connection is lost: the live lane must go to the full disk
                await until(lambda: not forwarder.session.connected, 10, "the loss to be noticed")
                assert forwarder.buffer.unwritten.pending == 2000, "kept in memory"
                status, body = await http_get(port, "/healthz")
                assert status == 503
                assert body.startswith("buffer cannot be written: [Errno 28] No space left on device")
                assert "2000 readings wait in memory" in body
                _, metrics = await http_get(port, "/metrics")
                assert metric(metrics, "buffer_write_errors_total") >= 1
                assert 'fieldgate_forwarder_buffered_readings{lane="unwritten"} 2000' in metrics
                # new readings meanwhile are not acknowledged: the collector keeps them
                client.publish(counter_readings(2000, 400, TAGS))
                await asyncio.sleep(1)
                assert client.pending == 400 and forwarder.buffer.pending == 2000

                proxy.resume()  # the broker is back, the disk still full: sent from memory
                await until(lambda: len(delivered(durable_subscriber)) == 2400, 60, "every reading")
                await until(lambda: forwarder.buffer.pending == 0, 10, "the buffer to empty")
                assert await http_get(port, "/healthz") == (200, "ok\n")
                filler.unlink()
            assert delivered(durable_subscriber) == set(range(2400))
            with durable_subscriber._lock:
                by_tag = values_by_tag(list(durable_subscriber.messages))
            for tag, values in by_tag.items():
                assert out_of_order(values) == [], f"{tag} out of order"
    lines = [r for r in caplog.records if "cannot write to" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "ERROR", "one ERROR line per episode"
    assert not [r for r in caplog.records if r.exc_info], "no exception escaped (paho callback, tasks)"
