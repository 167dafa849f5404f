"""The application certificate and the trust given to server certificates (files, no server)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from collectors.opcua.security import (
    APPLICATION_URI,
    SecurityError,
    application_certificate,
    check_server_certificate,
    fingerprint,
)

pytestmark = pytest.mark.unit


def _cert(
    subject: str, issuer: tuple[str, rsa.RSAPrivateKey] | None = None
) -> tuple[bytes, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer_name, signer = (issuer[0], issuer[1]) if issuer else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(signer, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER), key


def test_application_certificate_is_generated_once_and_reused(tmp_path: Path) -> None:
    first = application_certificate(tmp_path)
    cert = x509.load_der_x509_certificate(first.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert APPLICATION_URI in san.get_values_for_type(x509.UniformResourceIdentifier)
    assert first.key.stat().st_mode & 0o077 == 0  # the private key is the collector's alone
    der = first.cert.read_bytes()
    assert application_certificate(tmp_path).cert.read_bytes() == der
    first.cert.write_bytes(b"garbage")  # unreadable: renewed, not a crash
    assert application_certificate(tmp_path).cert.read_bytes() not in (der, b"garbage")


def test_tofu_pins_the_first_certificate_and_refuses_a_changed_one(tmp_path: Path) -> None:
    der, _ = _cert("server")
    check_server_certificate("oven", der, "tofu", tmp_path)
    check_server_certificate("oven", der, "tofu", tmp_path)  # the same again: fine
    other, _ = _cert("server")
    with pytest.raises(SecurityError) as refused:
        check_server_certificate("oven", other, "tofu", tmp_path)
    message = str(refused.value)
    pin = tmp_path / "opcua" / "pinned" / "oven.der"
    assert "oven: the server certificate changed" in message
    assert fingerprint(der) in message and fingerprint(other) in message and f"delete {pin}" in message
    assert refused.value.reason == "BadCertificateUntrusted"
    pin.unlink()  # the operator accepts the new one
    check_server_certificate("oven", other, "tofu", tmp_path)


def test_strict_accepts_certificates_in_the_trust_dir_or_issued_by_a_ca_there(tmp_path: Path) -> None:
    trust = tmp_path / "trusted"
    trust.mkdir()
    server, _ = _cert("server")
    ca, ca_key = _cert("plant-ca")
    issued, _ = _cert("plc-7", issuer=("plant-ca", ca_key))
    stranger, _ = _cert("stranger")
    with pytest.raises(SecurityError, match="is not in the trust dir"):
        check_server_certificate("oven", server, "strict", tmp_path, trust)
    (trust / "server.der").write_bytes(server)
    pem = x509.load_der_x509_certificate(ca).public_bytes(serialization.Encoding.PEM)
    (trust / "plant-ca.pem").write_bytes(pem)
    (trust / "notes.pem").write_text("not a certificate")
    check_server_certificate("oven", server, "strict", tmp_path, trust)
    check_server_certificate("plc", issued, "strict", tmp_path, trust)
    with pytest.raises(SecurityError, match=r"stranger.*copy the server's certificate there"):
        check_server_certificate("oven", stranger, "strict", tmp_path, trust)


def test_strict_checks_the_validity_dates_of_the_certificate_and_of_its_ca(tmp_path: Path) -> None:
    trust = tmp_path / "trusted"
    trust.mkdir()
    server, _ = _cert("server")  # valid from now for one day
    ca, ca_key = _cert("plant-ca")
    issued, _ = _cert("plc-7", issuer=("plant-ca", ca_key))
    (trust / "server.der").write_bytes(server)
    (trust / "plant-ca.der").write_bytes(ca)
    now = datetime.datetime.now(datetime.UTC)
    check_server_certificate("oven", server, "strict", tmp_path, trust, now=now + datetime.timedelta(hours=1))
    later = now + datetime.timedelta(days=2)
    with pytest.raises(SecurityError, match=r"oven: the server certificate .* expired on") as expired:
        check_server_certificate("oven", server, "strict", tmp_path, trust, now=later)
    assert expired.value.reason == "BadCertificateTimeInvalid"
    earlier = now - datetime.timedelta(days=1)
    with pytest.raises(SecurityError, match="is not valid before") as early:
        check_server_certificate("oven", server, "strict", tmp_path, trust, now=earlier)
    assert early.value.reason == "BadCertificateTimeInvalid"
    with pytest.raises(SecurityError, match="expired on"):
        check_server_certificate("plc", issued, "strict", tmp_path, trust, now=later)
    check_server_certificate("oven", server, "tofu", tmp_path, now=later)  # tofu pins; strict checks dates
