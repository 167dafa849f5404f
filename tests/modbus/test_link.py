"""The link: writes before polls, backoff, stable reasons, and a silent device holding up no other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from collectors.core.config import HandoffConfig
from collectors.core.errors import DeviceError
from collectors.core.handoff import HandoffServer
from collectors.modbus.collector import ModbusCollector
from collectors.modbus.config import ModbusDevice, Table
from collectors.modbus.link import POLL, WRITE, Backoff, Link, PriorityLock
from tests.modbus.conftest import Server, Sink, collector_config, until
from tests.support.broker import free_port


def device(port: int, name: str = "d1", **extra: Any) -> ModbusDevice:
    return ModbusDevice.model_validate({
        "name": name, "protocol": "modbus", "connection": {"tcp": {"host": "127.0.0.1", "port": port}},
        "timeout": "300ms", "tags": [{"name": "x", "table": "holding", "address": 0, "type": "uint16"}],
        **extra,
    })


def user(lock: PriorityLock, order: list[str]) -> Callable[[str, int], Coroutine[Any, Any, None]]:
    """A holder of the lock that notes its turn in `order`."""

    async def use(name: str, priority: int) -> None:
        await lock.acquire(priority)
        order.append(name)
        await asyncio.sleep(0)
        lock.release()

    return use


@pytest.mark.unit
async def test_waiting_writes_are_served_before_waiting_polls() -> None:
    lock = PriorityLock()
    order: list[str] = []
    use = user(lock, order)

    await lock.acquire(POLL)  # a poll is in flight
    tasks = [asyncio.create_task(use(n, p)) for n, p in
             [("poll-a", POLL), ("poll-b", POLL), ("write-1", WRITE), ("poll-c", POLL), ("write-2", WRITE)]]
    await asyncio.sleep(0.01)
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["write-1", "write-2", "poll-a", "poll-b", "poll-c"]


@pytest.mark.unit
async def test_a_queue_of_writes_lets_a_waiting_poll_through_every_burst() -> None:
    lock = PriorityLock(burst=3)
    order: list[str] = []
    use = user(lock, order)

    await lock.acquire(WRITE)
    tasks = [asyncio.create_task(use("poll-a", POLL)), asyncio.create_task(use("poll-b", POLL))]
    tasks += [asyncio.create_task(use(f"w{i}", WRITE)) for i in range(7)]
    await asyncio.sleep(0.01)
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["w0", "w1", "w2", "poll-a", "w3", "w4", "w5", "poll-b", "w6"]


@pytest.mark.unit
async def test_a_cancelled_waiter_does_not_keep_the_lock() -> None:
    lock = PriorityLock()
    await lock.acquire(POLL)
    waiter = asyncio.create_task(lock.acquire(WRITE))
    await asyncio.sleep(0.01)
    waiter.cancel()
    lock.release()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(lock.acquire(POLL), 1)  # free again
    lock.release()


@pytest.mark.unit
def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    backoff = Backoff(0.25, 4.0)
    delays = [backoff.next_delay() for _ in range(10)]
    caps = [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert all(cap * 0.5 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert len({round(d, 6) for d in delays[4:]}) > 1  # jitter: devices do not reconnect in lockstep
    backoff.reset()
    assert backoff.next_delay() <= 0.25


@pytest.mark.sim
async def test_refused_connection_is_a_stable_reason_and_backs_off() -> None:
    dev = device(free_port())
    async with Link([dev], reconnect_first=5.0) as link:
        loop = asyncio.get_running_loop()
        with pytest.raises(DeviceError) as first:
            await link.read(dev, Table.HOLDING, 0, 1)
        assert first.value.reason == "connection refused"
        started = loop.time()
        with pytest.raises(DeviceError) as second:  # backing off: fails at once, no connect
            await link.read(dev, Table.HOLDING, 0, 1)
        assert second.value.reason == "connection refused"
        assert loop.time() - started < 0.1


@pytest.mark.sim
async def test_link_reads_writes_and_names_exceptions(server: Server) -> None:
    dev = device(server.port)
    async with Link([dev]) as link:
        async with link.turn(WRITE) as turn:
            await turn.write(dev, Table.HOLDING, 4, [1, 2, 3])
            assert await turn.read(dev, Table.HOLDING, 3, 5) == [0, 1, 2, 3, 0]
            await turn.write(dev, Table.COIL, 9, [1])
            assert await turn.read(dev, Table.COIL, 8, 3) == [0, 1, 0]
        with pytest.raises(DeviceError) as caught:
            await link.read(dev, Table.INPUT, 60, 10)
        assert caught.value.reason == "exception 2: illegal data address"
        with pytest.raises(DeviceError, match="read-only"):
            async with link.turn(WRITE) as turn:
                await turn.write(dev, Table.INPUT, 0, [1])
    assert await server.get(1, "holding", 4, 3) == [1, 2, 3]


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A TCP server that accepts and never answers: a device that hangs."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):
            pass
        writer.close()

    port = free_port()
    silent = await asyncio.start_server(swallow, "127.0.0.1", port)
    try:
        yield port
    finally:
        silent.close()


@pytest.mark.sim
async def test_a_silent_device_holds_up_no_other_link(
    silent_port: int, server: Server, forwarder: tuple[Sink, HandoffServer, HandoffConfig], tmp_path: Path
) -> None:
    sink, _handoff, settings = forwarder
    await server.set(1, "holding", 0, [5])
    devices = [
        device(silent_port, "hung", poll="100ms", timeout="1s").model_dump(mode="json"),
        device(server.port, "fine", poll="100ms").model_dump(mode="json"),
    ]
    async with ModbusCollector(collector_config(settings, devices, tmp_path)) as collector:
        task = asyncio.create_task(collector.run())
        try:
            await until(lambda: sink.of("hung", "x"), timeout=4, what="hung goes bad")
            before = len(sink.of("fine", "x"))
            await asyncio.sleep(1.0)
            assert len(sink.of("fine", "x")) - before >= 7  # ~10 polls a second despite the hung one
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    (hung,) = sink.of("hung", "x")
    assert (hung.quality, hung.reason) == ("bad", "timeout")
    assert {r.quality for r in sink.of("fine", "x")} == {"good"}


@pytest.mark.sim
async def test_rtu_frames_over_tcp() -> None:
    """A serial-to-Ethernet converter in transparent mode: RTU frames, CRC and all, over TCP."""
    from pymodbus.framer import FramerType
    from pymodbus.server import ModbusTcpServer

    from tests.modbus.conftest import sim_device

    port = free_port()
    gateway = ModbusTcpServer([sim_device(3)], address=("127.0.0.1", port), framer=FramerType.RTU)
    await gateway.serve_forever(background=True)
    try:
        await gateway.async_setValues(3, 3, 7, [1234])
        dev = ModbusDevice.model_validate({
            "name": "rtu-gw", "protocol": "modbus", "unit": 3, "timeout": "500ms",
            "connection": {"tcp": {"host": "127.0.0.1", "port": port, "framer": "rtu"}},
            "tags": [{"name": "x", "table": "holding", "address": 7, "type": "uint16"}],
        })
        async with Link([dev]) as link:
            assert await link.read(dev, Table.HOLDING, 7, 1) == [1234]
    finally:
        await gateway.shutdown()
