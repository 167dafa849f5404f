"""The collector's application certificate and the trust it gives server certificates.

Layout under the collector's `state_dir` (it survives restarts and image updates)::

    opcua/own/cert.der        our application instance certificate (generated on first start)
    opcua/own/key.pem         its private key (0600)
    opcua/pinned/DEVICE.der   trust: tofu - the first server certificate seen for DEVICE
    opcua/trusted/            trust: strict - server certificates (or their CAs) we accept;
                              a device's `security.trust_dir` replaces it

`tofu` (trust on first use) pins the first certificate a server presents and refuses a
different one later with a log line naming both fingerprints and the pin file to delete if
the change is intended. `strict` accepts a server only when its certificate, or the CA that
issued it, is in the trust dir, and only while that certificate (and the CA) is valid: an
expired or not yet valid one is refused with BadCertificateTimeInvalid (Part 4, 6.1.3:
"Validity Period"). Both run before any secret (password, user key) is sent; with security
policy None there is no certificate to check, so no password is sent at all unless the device
file allows it (`allow_password_without_encryption`).
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collectors.core.errors import FieldgateError

log = logging.getLogger(__name__)

APPLICATION_URI = "urn:fieldgate:collector:opcua"
CERT_DAYS = 3650  # plant IPCs run for years; an expired certificate is regenerated at start


class SecurityError(FieldgateError):
    """A server certificate we do not trust, or credentials the server refused.

    `reason` is a StatusCode name (the `bad` readings' reason); the message says what to do.
    """

    def __init__(self, message: str, reason: str = "BadSecurityChecksFailed") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class OwnCertificate:
    cert: Path
    key: Path


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as AB:CD:..., the form certificate tools print."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return ":".join(f"{b:02X}" for b in digest.finalize())


def application_certificate(state_dir: Path, application_uri: str = APPLICATION_URI) -> OwnCertificate:
    """Our certificate and key: generated on first start, reused after, renewed when expired or unreadable."""
    own = state_dir / "opcua" / "own"
    cert_path, key_path = own / "cert.der", own / "key.pem"
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_der_x509_certificate(cert_path.read_bytes())
            serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            valid = cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(
                days=1
            )
            uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            if valid and application_uri in uris.get_values_for_type(x509.UniformResourceIdentifier):
                return OwnCertificate(cert_path, key_path)
            log.warning(
                "application certificate %s expired or for another application: renewing it", cert_path
            )
        except (ValueError, x509.ExtensionNotFound) as exc:
            log.warning("application certificate %s unreadable (%s): renewing it", cert_path, exc)
    own.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _self_signed(key, application_uri)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(key_path, key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    log.info(
        "generated application certificate %s (sha256 %s)",
        cert_path,
        fingerprint(cert.public_bytes(serialization.Encoding.DER)),
    )
    return OwnCertificate(cert_path, key_path)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _self_signed(key: rsa.RSAPrivateKey, application_uri: str) -> x509.Certificate:
    """An application instance certificate as Part 6, 6.2.2 describes it (self-signed, URI in the SAN)."""
    host = socket.gethostname()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "fieldgate opcua collector"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fieldgate"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(application_uri), x509.DNSName(host)]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def trust_dir(state_dir: Path, configured: Path | None) -> Path:
    return configured if configured is not None else state_dir / "opcua" / "trusted"


def check_server_certificate(
    device: str,
    der: bytes,
    mode: str,
    state_dir: Path,
    configured_trust_dir: Path | None = None,
    now: datetime.datetime | None = None,
) -> None:
    """Accept the server certificate `der` for `device` per `mode` (tofu | strict), or raise SecurityError."""
    if mode == "strict":
        when = now if now is not None else datetime.datetime.now(datetime.UTC)
        _check_strict(device, der, trust_dir(state_dir, configured_trust_dir), when)
    else:
        _check_pinned(device, der, state_dir / "opcua" / "pinned" / f"{device}.der")


def _check_pinned(device: str, der: bytes, pin: Path) -> None:
    if not pin.exists():
        pin.parent.mkdir(parents=True, exist_ok=True)
        pin.write_bytes(der)
        log.info(
            "%s: pinned the server certificate (sha256 %s) in %s (trust: tofu)", device, fingerprint(der), pin
        )
        return
    pinned = pin.read_bytes()
    if pinned == der:
        return
    raise SecurityError(
        f"{device}: the server certificate changed: pinned sha256 {fingerprint(pinned)}, the server now "
        f"presents sha256 {fingerprint(der)}; refusing to connect. If the server was re-keyed on purpose, "
        f"delete {pin} to pin the new certificate",
        "BadCertificateUntrusted",
    )


def _load_any(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes()
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        log.warning("ignoring %s in the trust dir: not a certificate", path)
        return []


def _check_strict(device: str, der: bytes, directory: Path, now: datetime.datetime) -> None:
    server = x509.load_der_x509_certificate(der)
    trusted: list[x509.Certificate] = []
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            if path.is_file() and path.suffix.lower() in (".der", ".pem", ".crt", ".cer"):
                trusted.extend(_load_any(path))
    for cert in trusted:
        if cert.public_bytes(serialization.Encoding.DER) == der:
            _check_dates(device, server, "the server certificate", "BadCertificateTimeInvalid", now)
            return
        if cert.subject == server.issuer:
            try:
                server.verify_directly_issued_by(cert)
            except (ValueError, TypeError, InvalidSignature):
                continue
            _check_dates(device, server, "the server certificate", "BadCertificateTimeInvalid", now)
            _check_dates(device, cert, "the CA certificate that issued it", "BadCertificateIssuerTimeInvalid", now)
            return
    raise SecurityError(
        f"{device}: the server certificate (sha256 {fingerprint(der)}, "
        f"subject {server.subject.rfc4514_string()}) is not in the trust dir {directory} (trust: strict); "
        "copy the server's certificate there to trust it",
        "BadCertificateUntrusted",
    )


def _check_dates(device: str, cert: x509.Certificate, what: str, reason: str, now: datetime.datetime) -> None:
    """Refuse a certificate outside its validity period (notBefore..notAfter), saying which end."""
    described = f"{what} (sha256 {fingerprint(cert.public_bytes(serialization.Encoding.DER))}, " \
        f"subject {cert.subject.rfc4514_string()})"
    if now < cert.not_valid_before_utc:
        raise SecurityError(
            f"{device}: {described} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z "
            f"(trust: strict; now {now:%Y-%m-%d %H:%M:%S}Z); check the clocks of this machine and the "
            "server, or issue a certificate that is valid now",
            reason,
        )
    if now > cert.not_valid_after_utc:
        raise SecurityError(
            f"{device}: {described} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z "
            f"(trust: strict; now {now:%Y-%m-%d %H:%M:%S}Z); renew it and put the new one in the trust dir",
            reason,
        )
