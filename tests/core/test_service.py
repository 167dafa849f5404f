"""The log plumbing every service shares: errors said once, flaps summarised, asyncio's
unhandled transport errors latched instead of a traceback each."""

from __future__ import annotations

import asyncio
import logging

import pytest

from collectors.core.service import ErrorLatch, run_service


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


@pytest.mark.unit
def test_a_flapping_device_is_said_once_then_summarised(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    latch = ErrorLatch(logging.getLogger("t"), "press-1", settle=60, summary_every=600, clock=clock)
    caplog.set_level(logging.DEBUG, logger="t")
    # fails and recovers every 5 s for 21 minutes
    for _ in range(252):
        latch.failure("timeout")
        clock.now += 2
        latch.success()
        clock.now += 3
    assert lines(caplog, logging.ERROR) == ["press-1: timeout"]
    assert lines(caplog, logging.INFO) == ["press-1: recovered after 1 failed attempts"]
    assert lines(caplog, logging.WARNING) == [
        "press-1: unsteady: failed and recovered 121 times in 10 min, last: timeout",
        "press-1: unsteady: failed and recovered 121 times in 10 min, last: timeout",
    ]
    # good for longer than `settle`: the next failure is news again
    clock.now += 61
    caplog.clear()
    assert latch.failure("connection refused")
    assert lines(caplog, logging.ERROR) == ["press-1: connection refused"]
    latch.success()
    assert lines(caplog, logging.INFO) == ["press-1: recovered after 1 failed attempts"]


class Choking(asyncio.Protocol):
    """A protocol whose data_received raises, as pymodbus' did on an undecodable frame."""

    def data_received(self, data: bytes) -> None:
        raise ValueError(f"cannot decode {data[:4]!r}")


@pytest.mark.sim
def test_transport_errors_nobody_caught_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()
        server = await asyncio.start_server(lambda _r, w: accepted.put_nowait(w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for _ in range(30):  # each connection's first frame chokes its protocol
            transport, _protocol = await loop.create_connection(Choking, "127.0.0.1", port)
            server_side = await asyncio.wait_for(accepted.get(), 5)
            server_side.write(b"\xde\xad\xbe\xef garbage")
            await server_side.drain()
            for _ in range(200):
                if transport.is_closing():
                    break
                await asyncio.sleep(0.005)
            server_side.close()
        server.close()
        await server.wait_closed()

    caplog.set_level(logging.DEBUG, logger="asyncio")
    assert run_service(main()) == 0
    errors = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    [error] = errors
    assert "data_received() call failed" in error.getMessage()
    assert "ValueError: cannot decode" in error.getMessage()
    assert error.exc_info is None and "\n" not in error.getMessage()  # one line, no traceback
    repeats = [r for r in caplog.records if r.name == "asyncio" and "(repeat" in r.getMessage()]
    assert len(repeats) == 29 and all(r.levelno == logging.DEBUG for r in repeats)

