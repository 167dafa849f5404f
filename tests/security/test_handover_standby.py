"""Rogue standbys against the hand-off: the standby of a start-first update must not become a way
to queue up behind the real collector, publish beside it, take its writes, or come in from
another user."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from collectors.core.handoff import HandoffServer, encode_frame
from collectors.core.model import WriteRequest
from tests.support.handoff import Peer, Sink

pytestmark = pytest.mark.security

TS = 1_764_316_800_000
ROGUE_UID = 65534


async def active_and_standby(socket: Path) -> tuple[Peer, Peer]:
    """The running collector, and a new instance admitted as its standby."""
    active = await Peer.hello(socket, "real")
    standby = await Peer.hello(socket, "next", standby=True)
    assert await standby.next() == {"t": "standby"}
    return active, standby


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[HandoffServer, Sink, Path]]:
    sink = Sink()
    socket = tmp_path / "run" / "handoff.sock"
    async with HandoffServer(socket, sink) as handoff:
        yield handoff, sink, socket


async def test_a_second_standby_is_refused_and_the_first_keeps_its_place(
    server: tuple[HandoffServer, Sink, Path],
) -> None:
    handoff, _sink, socket = server
    active, standby = await active_and_standby(socket)
    rogue = await Peer.hello(socket, "rogue", standby=True)
    refusal = await rogue.next()
    assert refusal["t"] == "error" and "already has a standby" in refusal["error"]
    assert await rogue.closed()
    assert handoff.collectors == ["modbus"] and handoff.standbys == ["modbus"]
    active.close()  # the old collector leaves: the first standby, not the rogue, is made active
    assert await standby.next() == {"t": "active"}
    standby.close()


async def test_a_standby_that_sends_before_it_is_active_is_dropped_and_nothing_is_published(
    server: tuple[HandoffServer, Sink, Path],
) -> None:
    handoff, sink, socket = server
    active, standby = await active_and_standby(socket)
    standby.writer.write(encode_frame({"t": "batch", "seq": 1, "r": [["press-1", "counter", 666, TS, "good"]]}))
    refusal = await standby.next()
    assert refusal["t"] == "error" and "is a standby" in refusal["error"]
    assert await standby.closed()
    assert sink.received == [] and handoff.standbys == []
    active.close()


async def test_writes_go_only_to_the_active_collector_while_a_standby_waits(
    server: tuple[HandoffServer, Sink, Path],
) -> None:
    handoff, _sink, socket = server
    active, standby = await active_and_standby(socket)
    assert handoff.send_write("modbus", WriteRequest("w1", "press-1", "run", 1))
    assert (await active.next())["id"] == "w1"
    with pytest.raises(TimeoutError):
        await standby.next(timeout=0.3)
    active.close()
    assert await standby.next() == {"t": "active"}
    assert handoff.send_write("modbus", WriteRequest("w2", "press-1", "run", 1))
    assert (await standby.next())["id"] == "w2"
    standby.close()


@pytest.mark.parametrize("flag", ["yes", 1, None, []], ids=["text", "one", "null", "list"])
async def test_only_a_literal_true_asks_for_standby_anything_else_is_a_second_collector(
    server: tuple[HandoffServer, Sink, Path], flag: object
) -> None:
    handoff, _sink, socket = server
    active = await Peer.hello(socket, "real")
    other = await Peer.hello(socket, "other", standby=flag)
    refusal = await other.next()
    assert refusal["t"] == "error" and "already connected" in refusal["error"]
    assert handoff.standbys == []
    active.close()


# Runs as uid 65534 (stdlib only): says hello as the standby of modbus; prints what came back.
ROGUE = r"""
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
body = json.dumps({"t": "hello", "collector": "modbus", "epoch": "rogue", "standby": True}).encode()
try:
    s.sendall(struct.pack(">I", len(body)) + body)  # the forwarder may have closed already
    head = s.recv(4)
    print(json.dumps({"answer": json.loads(s.recv(65536)) if len(head) == 4 else "closed"}))
except OSError as exc:
    print(json.dumps({"answer": type(exc).__name__}))
"""


async def test_a_standby_from_another_user_is_refused_without_an_answer(open_dir: Path) -> None:
    socket = open_dir / "run" / "handoff.sock"
    async with HandoffServer(socket, Sink()) as handoff:
        socket.parent.chmod(0o755)  # opened by mistake: the peer check must still hold
        socket.chmod(0o666)
        active = await Peer.hello(socket, "real")
        done = await asyncio.to_thread(
            subprocess.run,
            ["setpriv", "--reuid", str(ROGUE_UID), "--regid", str(ROGUE_UID), "--clear-groups",
             "/usr/bin/python3", "-c", ROGUE, str(socket)],
            capture_output=True, text=True, timeout=30, check=True)
        answer = json.loads(done.stdout)["answer"]
        assert answer in ("closed", "ConnectionResetError", "BrokenPipeError"), answer  # no answer
        assert handoff.standbys == [] and handoff.refused == 1
        active.close()
