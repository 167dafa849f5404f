"""`trust: strict` against real servers: a certificate in the trust dir is accepted only within its
validity period (Part 4, 6.1.3), and the refusal says which end and what to do."""
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import datetime
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from asyncua import Server, ua

from collectors.core.model import Quality
from tests.opcua.support import certificate, running_collector
from tests.support.broker import free_port

pytestmark = pytest.mark.sim

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


@asynccontextmanager
async def server_with(cert: Path, key: Path) -> AsyncIterator[str]:
    server = Server()
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}"
    server.set_endpoint(endpoint)
    await server.set_application_uri("urn:test:server")
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    await server.load_certificate(str(cert))
    await server.load_private_key(str(key))
    await server.nodes.objects.add_variable(ua.NodeId("speed", 2), "speed", 12.5)
    async with server:
        yield endpoint


@pytest.mark.parametrize(
    ("not_before", "not_after", "refusal"),
    [
        (NOW - 30 * DAY, NOW - DAY, "expired on"),
        (NOW + DAY, NOW + 30 * DAY, "is not valid before"),
        (NOW - DAY, NOW + DAY, None),  # the same server with a certificate valid now: accepted
    ],
    ids=["expired", "not-yet-valid", "valid"],
)
async def test_strict_refuses_a_trusted_certificate_outside_its_validity_period(
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    refusal: str | None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert, key = certificate(tmp_path, "server", "test server", not_before, not_after, "urn:test:server")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "plc.der").write_bytes(cert.read_bytes())  # the operator trusts exactly this certificate
    caplog.set_level(logging.ERROR, logger="collectors.opcua")
    async with server_with(cert, key) as endpoint:
        device = {
            "name": "oven",
            "protocol": "opcua",
            "endpoint": endpoint,
            "security": {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", "trust": "strict",
                         "trust_dir": str(trusted)},
            "tags": [{"name": "speed", "node": "ns=2;s=speed"}],
        }
        async with running_collector([device], tmp_path) as (_, sink):
            if refusal is None:
                (good,) = await sink.wait_for(lambda r: r.tag == "speed" and r.quality == Quality.GOOD)
                assert good.value == 12.5
                return
            state = await sink.wait_state(lambda s: s.reason == "BadCertificateTimeInvalid", within=20)
            (bad,) = await sink.wait_for(lambda r: r.tag == "speed" and r.quality == Quality.BAD)
    assert not state.online and bad.reason == "BadCertificateTimeInvalid"
    assert not [r for r in sink.got if r.quality == Quality.GOOD]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(refusal in m and "trust: strict" in m for m in errors), errors
