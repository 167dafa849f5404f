"""Who holds a collector's name when a start-first update's standby meets a restarted forwarder."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collectors.core.handoff import STANDBY_CLAIM, HandoffServer
from tests.support.handoff import Peer, Sink

pytestmark = pytest.mark.sim


async def test_the_old_collector_reconnecting_within_the_claim_time_keeps_its_name(tmp_path: Path) -> None:
    """The forwarder restarted mid-handover and the standby reconnected first: the old collector,
    reconnecting within STANDBY_CLAIM, gets its name (and its writes) back; the standby waits on."""
    socket = tmp_path / "handoff.sock"
    async with HandoffServer(socket, Sink()) as handoff:
        standby = await Peer.hello(socket, "next", standby=True)
        assert await standby.next() == {"t": "standby"}
        old = await Peer.hello(socket, "old")
        await asyncio.sleep(STANDBY_CLAIM + 0.3)
        assert handoff.collectors == ["modbus"] and handoff.standbys == ["modbus"]
        with pytest.raises(TimeoutError):
            await standby.next(timeout=0.1)  # never told to become active
        old.close()  # the handover goes on: the old one leaves, the standby takes over at once
        assert await standby.next() == {"t": "active"}
        standby.close()
