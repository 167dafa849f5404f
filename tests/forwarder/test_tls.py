"""TLS to the broker: a CA and certificates made here, Mosquitto with a TLS listener."""

from __future__ import annotations

import asyncio
import datetime
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from collectors.core.model import Reading
from collectors.forwarder.app import Forwarder
from collectors.forwarder.config import ForwarderConfig
from tests.forwarder.helpers import collector, config_dict, until
from tests.support.broker import Mosquitto, free_port
from tests.support.mqtt import Subscriber

pytestmark = pytest.mark.sim


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )
    return path.with_suffix(".pem"), path.with_suffix(".key")


Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: Issuer | None,
    ca: bool = False, san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA, a broker certificate for `localhost`, a client certificate, and an unrelated CA."""
    directory.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("fieldgate test CA", ca_key, None, ca=True)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _certificate("some other CA", other_key, None, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate(
        "broker", server_key, (ca, ca_key),
        san=[x509.DNSName("localhost")],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate("fieldgate-line3", client_key, (ca, ca_key))
    files = {}
    files["ca"], _ = _write(directory / "ca", ca, ca_key)
    files["other_ca"], _ = _write(directory / "other-ca", other, other_key)
    files["server"], files["server_key"] = _write(directory / "server", server, server_key)
    files["client"], files["client_key"] = _write(directory / "client", client, client_key)
    return files


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, int, dict[str, Path]]]:
    """A plain listener for the test's subscriber, a TLS one (client certificate required)."""
    pki = make_pki(tmp_path / "pki")
    tls_port = free_port()
    conf = (
        f"listener {tls_port} 127.0.0.1\ncafile {pki['ca']}\ncertfile {pki['server']}\n"
        f"keyfile {pki['server_key']}\nrequire_certificate true\n"
        "user root\n"  # Mosquitto would switch to its own user, which cannot read tmp_path
    )
    broker = Mosquitto(tmp_path, extra_conf=conf).start()
    try:
        yield broker, tls_port, pki
    finally:
        broker.stop()


def tls_config(
    tmp_path: Path, broker: Mosquitto, port: int, ca: Path, pki: dict[str, Path]
) -> ForwarderConfig:
    raw = config_dict(tmp_path, broker)
    raw["mqtt"] |= {
        "host": "localhost",  # the name in the broker's certificate
        "port": port,
        "tls": {"ca_file": str(ca), "cert_file": str(pki["client"]), "key_file": str(pki["client_key"])},
    }
    return ForwarderConfig.model_validate(raw)


async def test_tls_with_the_right_ca_and_a_client_certificate_delivers(
    tmp_path: Path, tls_broker: tuple[Mosquitto, int, dict[str, Path]]
) -> None:
    broker, tls_port, pki = tls_broker
    subscriber = Subscriber(broker.host, broker.port, "fieldgate/line3/#")
    try:
        config = tls_config(tmp_path, broker, tls_port, pki["ca"], pki)
        async with Forwarder(config) as forwarder, collector(config) as client:
            await until(lambda: forwarder.session.connected, 15, "the TLS session")
            client.publish([Reading("press-1", "temperature", 21.5, 1_764_316_800_000)])
            got = await asyncio.to_thread(
                subscriber.wait_for, lambda m: m.topic == "fieldgate/line3/press-1/temperature", 10
            )
        assert got[0].json()["value"] == 21.5
    finally:
        subscriber.close()


async def test_tls_with_the_wrong_ca_is_refused_with_a_clear_error(
    tmp_path: Path, tls_broker: tuple[Mosquitto, int, dict[str, Path]], caplog: pytest.LogCaptureFixture
) -> None:
    broker, tls_port, pki = tls_broker
    caplog.set_level(logging.ERROR, logger="collectors.forwarder.mqtt")
    config = tls_config(tmp_path, broker, tls_port, pki["other_ca"], pki)
    async with Forwarder(config) as forwarder:
        await until(lambda: forwarder.session.last_error is not None, 15, "the refusal")
        await asyncio.sleep(1.5)  # a retry or two: still one ERROR line
        assert not forwarder.session.connected
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert f"TLS: the certificate of localhost:{tls_port} was refused (" in errors[0]
    assert str(pki["other_ca"]) in errors[0]


async def test_hostname_verification_is_on_by_default(
    tmp_path: Path, tls_broker: tuple[Mosquitto, int, dict[str, Path]], caplog: pytest.LogCaptureFixture
) -> None:
    broker, tls_port, pki = tls_broker
    caplog.set_level(logging.ERROR, logger="collectors.forwarder.mqtt")
    config = tls_config(tmp_path, broker, tls_port, pki["ca"], pki)
    config = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"host": "127.0.0.1"})})
    async with Forwarder(config) as forwarder:
        await until(lambda: forwarder.session.last_error is not None, 15, "the refusal")
    assert "does not name '127.0.0.1'" in caplog.text


async def test_missing_tls_file_is_named(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    raw = config_dict(tmp_path, broker)
    raw["mqtt"]["tls"] = {"ca_file": str(tmp_path / "nope.pem")}
    caplog.set_level(logging.ERROR, logger="collectors.forwarder.mqtt")
    async with Forwarder(ForwarderConfig.model_validate(raw)) as forwarder:
        await until(lambda: forwarder.session.last_error is not None, 10, "the error")
    assert f"mqtt.tls.ca_file {tmp_path / 'nope.pem'}: not a usable CA file (No such file" in caplog.text


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    passwords = tmp_path / "passwd"
    passwords.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "plant", "s3cret-Pa55"], check=True)
    broker = Mosquitto(tmp_path, extra_conf=f"allow_anonymous false\npassword_file {passwords}\nuser root\n")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd (mosquitto)")
async def test_username_and_password_file_and_the_password_is_never_logged(
    tmp_path: Path, auth_broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = tmp_path / "mqtt_password"
    secret.write_text("s3cret-Pa55\n")
    raw = config_dict(tmp_path, auth_broker)
    raw["mqtt"] |= {"username": "plant", "password_file": str(secret)}
    async with Forwarder(ForwarderConfig.model_validate(raw)) as forwarder:
        await until(lambda: forwarder.session.connected, 10, "the authenticated session")
    raw["mqtt"] = {k: v for k, v in raw["mqtt"].items() if k != "password_file"} | {"password": "wrong-Pa55"}
    async with Forwarder(ForwarderConfig.model_validate(raw)) as forwarder:
        await until(lambda: forwarder.session.last_error is not None, 10, "the refusal")
        assert not forwarder.session.connected
    assert "refused the session" in caplog.text and "check mqtt.username and the password" in caplog.text
    assert "s3cret-Pa55" not in caplog.text and "wrong-Pa55" not in caplog.text
