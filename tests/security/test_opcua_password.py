"""A man in the middle of an OPC UA connection with security policy None: it serves the endpoint,
offers its own certificate for the password, and records every user name and password it gets.

Policy None is neither signed nor encrypted and no server certificate is checked, so whatever the
collector sends there, the man in the middle reads. A password with policy None is refused when
the config is validated (tests/opcua/test_config.py); these tests show what the collector does at
run time: it never sends the password there unless the device file says
`allow_password_without_encryption: true`, and that this opt-in costs what the docs say.
"""
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from pydantic import SecretStr

from collectors.core.handoff import HandoffServer
from collectors.core.model import Quality
from collectors.opcua.collector import OpcuaCollector
from collectors.opcua.config import OpcuaCollectorConfig
from tests.opcua.support import Recorder
from tests.support.broker import free_port

pytestmark = pytest.mark.security

SECRET = "plant-Pa55word"


class Eavesdropper:
    """A user manager that admits anyone and keeps what they sent."""

    def __init__(self) -> None:
        self.heard: list[tuple[str | None, str | None]] = []

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User:
        self.heard.append((username, password))
        return User(role=UserRole.User, name=username)


@pytest.fixture
async def rogue() -> AsyncIterator[tuple[str, Eavesdropper]]:
    ears = Eavesdropper()
    server = Server(user_manager=ears)
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}"
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    server.set_identity_tokens([ua.UserNameIdentityToken])
    await server.nodes.objects.add_variable(ua.NodeId("speed", 2), "speed", 12.5)
    async with server:
        yield endpoint, ears


def _config(tmp_path: Path, endpoint: str, **security: Any) -> OpcuaCollectorConfig:
    return OpcuaCollectorConfig.model_validate(
        {
            "name": "opcua",
            "handoff": {"socket": str(tmp_path / "handoff.sock"), "linger": "5ms"},
            "state_dir": str(tmp_path / "state"),
            "devices": [
                {
                    "name": "oven",
                    "protocol": "opcua",
                    "endpoint": endpoint,
                    "security": {"username": "op", **security},
                    "tags": [{"name": "speed", "node": "ns=2;s=speed"}],
                }
            ],
        }
    )


def _with_password(config: OpcuaCollectorConfig) -> OpcuaCollectorConfig:
    """The config as a slice that got past validation would be: a password with policy None, no opt-in."""
    device = config.devices[0]
    security = device.security.model_copy(update={"password": SecretStr(SECRET)})
    return config.model_copy(update={"devices": [device.model_copy(update={"security": security})]})


async def _run(config: OpcuaCollectorConfig, sink: Recorder, until: Any) -> None:
    async with HandoffServer(config.handoff.socket, sink), OpcuaCollector(config) as collector:
        task = asyncio.create_task(collector.run(), name="opcua-collector-under-test")
        try:
            await until()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_the_collector_never_sends_a_password_over_policy_none_without_the_opt_in(
    rogue: tuple[str, Eavesdropper], tmp_path: Path
) -> None:
    endpoint, ears = rogue
    config = _with_password(_config(tmp_path, endpoint))
    sink = Recorder()

    async def refused() -> None:
        await sink.wait_state(lambda s: not s.online and s.reason == "BadSecurityModeInsufficient", within=20)
        await sink.wait_for(lambda r: r.quality == Quality.BAD and r.reason == "BadSecurityModeInsufficient")

    await _run(config, sink, refused)
    assert not any(password for _, password in ears.heard), ears.heard
    assert not [r for r in sink.got if r.quality == Quality.GOOD]


async def test_with_the_opt_in_the_man_in_the_middle_reads_the_password(
    rogue: tuple[str, Eavesdropper], tmp_path: Path
) -> None:
    """What `allow_password_without_encryption: true` costs, as the docs say: the password is the
    eavesdropper's (it decrypted it with the key of the certificate it offered)."""
    endpoint, ears = rogue
    config = _config(tmp_path, endpoint, password=SECRET, allow_password_without_encryption=True)
    sink = Recorder()

    async def connected() -> None:
        await sink.wait_for(lambda r: r.tag == "speed" and r.quality == Quality.GOOD)

    await _run(config, sink, connected)
    assert ("op", SECRET) in ears.heard
