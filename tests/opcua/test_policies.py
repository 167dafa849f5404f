"""Every security policy and mode the device file offers, and X.509 user certificates, on one server."""
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from cryptography.x509.oid import ExtendedKeyUsageOID

from collectors.core.model import Quality
from tests.opcua.support import certificate, running_collector
from tests.support.broker import free_port

pytestmark = pytest.mark.sim

# every policy and mode a device file may name (asyncua 2.1 still serves and speaks the two
# deprecated ones, Basic128Rsa15 and Basic256)
POLICIES = [
    (policy, mode)
    for policy in ("Basic256Sha256", "Basic256", "Basic128Rsa15")
    for mode in ("Sign", "SignAndEncrypt")
]


def _user_certificate(directory: Path) -> tuple[Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    return certificate(directory, "user", "operator-7", now, now + datetime.timedelta(days=1))


class Users:
    """A user name with its password, or the one user certificate; nothing else."""

    def __init__(self, user_cert: bytes) -> None:
        self.user_cert = user_cert

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is not None:  # `certificate` is then the client's application certificate
            return User(role=UserRole.User, name="op") if (username, password) == ("op", "pw") else None
        if certificate == self.user_cert:
            return User(role=UserRole.User, name="operator-7")
        return None


@pytest.fixture
async def secure_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path, Path]]:
    user_cert, user_key = _user_certificate(tmp_path)
    server = Server(user_manager=Users(user_cert.read_bytes()))
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}"
    server.set_endpoint(endpoint)
    server.set_security_policy(
        [getattr(ua.SecurityPolicyType, f"{policy}_{mode}") for policy, mode in POLICIES]
    )
    server.set_identity_tokens([ua.UserNameIdentityToken, ua.X509IdentityToken])
    key_file, cert_file = tmp_path / "server-key.pem", tmp_path / "server.der"
    await setup_self_signed_certificate(
        key_file, cert_file, "urn:test:secure", "localhost", [ExtendedKeyUsageOID.SERVER_AUTH], {}
    )
    await server.load_certificate(str(cert_file))
    await server.load_private_key(str(key_file))
    await server.nodes.objects.add_variable(ua.NodeId("speed", 2), "speed", 12.5)
    async with server:
        yield endpoint, user_cert, user_key


async def test_each_policy_and_mode_with_a_user_and_an_x509_user_certificate(
    secure_server: tuple[str, Path, Path], tmp_path: Path
) -> None:
    endpoint, user_cert, user_key = secure_server

    def device(name: str, **security: Any) -> dict[str, Any]:
        return {
            "name": name,
            "protocol": "opcua",
            "endpoint": endpoint,
            "security": security,
            "subscription": {"publishing_interval": "100ms"},
            "tags": [{"name": "speed", "node": "ns=2;s=speed"}],
        }

    devices = [
        device(f"{policy}-{mode}", policy=policy, mode=mode, username="op", password="pw")
        for policy, mode in POLICIES
    ]
    devices.append(
        device(
            "x509-user",
            policy="Basic256Sha256",
            mode="SignAndEncrypt",
            user_certificate=str(user_cert),
            user_private_key=str(user_key),
        )
    )
    devices.append(device("anonymous", policy="Basic256Sha256", mode="Sign"))  # refused by this server
    async with running_collector(devices, tmp_path) as (_, sink):
        for d in devices[:-1]:
            name = d["name"]
            reading = (await sink.wait_for(lambda r: r.device == name, within=30))[0]  # noqa: B023
            assert (reading.value, reading.quality) == (12.5, Quality.GOOD), d["name"]
        refused = await sink.wait_state(lambda s: s.device == "anonymous" and not s.online, within=30)
    assert refused.reason in ("BadIdentityTokenInvalid", "BadIdentityTokenRejected", "BadUserAccessDenied")
