"""Signed offline bundles: ed25519 keys, the manifest's signature, and the trusted image ids.

A bundle is a directory: members (the `docker save` tar), `manifest.json` that lists each
member's sha256 and each image's id, and `manifest.sig` that signs the manifest's exact bytes.
So one signature covers every byte: a changed member no longer matches its sha256 in the
manifest, a changed manifest no longer matches the signature. `verify_bundle` checks all of it
before anything is loaded; it needs no Docker engine.

`fieldgate images load --trust KEY.pub` records the ids of the images it loaded in the trust
store; `fieldgate up --trusted-images` then creates containers only from those ids.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from collectors.core.errors import FieldgateError

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
TRUST_STORE_ENV = "FIELDGATE_TRUST_STORE"


class SigningError(FieldgateError):
    """A key could not be made or read, or a bundle is unsigned, signed by an unknown key, or tampered."""


# ------------------------------------------------------------------------------------ keys


def key_id(public: Ed25519PublicKey) -> str:
    """A short name for a public key: the first 16 hex digits of sha256 over its 32 raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate(out: Path) -> tuple[Path, str]:
    """Write a new private key to OUT (mode 0600, PEM PKCS#8) and its public key to OUT.pub.

    Refuses to overwrite either file: a key replaced by mistake orphans every bundle it signed.
    Returns the public key's path and its id."""
    public_path = out.with_name(out.name + ".pub")
    for path in (out, public_path):
        if path.exists():
            raise SigningError(f"{path} exists; keys are never overwritten (remove it first if you mean it)")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL with the mode at creation: the key is never readable by others, not even for a moment.
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    public = private.public_key()
    public_path.write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return public_path, key_id(public)


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise SigningError(f"cannot read the signing key {path}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path} is not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path} is not an ed25519 key (make one with `fieldgate keys generate`)")
    if os.stat(path).st_mode & 0o077:
        print(f"warning: {path} is readable by others than its owner (chmod 600 it)", file=sys.stderr)
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise SigningError(f"cannot read the trusted key {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise SigningError(f"{path} is not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path} is not an ed25519 public key")
    return key


# ------------------------------------------------------------------------------- the bundle


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def sign_manifest(bundle: Path, key: Ed25519PrivateKey) -> str:
    """Write BUNDLE/manifest.sig over the exact bytes of BUNDLE/manifest.json; returns the key id."""
    data = (bundle / MANIFEST).read_bytes()
    kid = key_id(key.public_key())
    (bundle / SIGNATURE).write_bytes(signature_bytes(kid, key.sign(data)))
    return kid


def signature_bytes(kid: str, signature: bytes) -> bytes:
    """manifest.sig: one form only, so a changed byte anywhere in it is noticed."""
    text = json.dumps({"key": kid, "algorithm": "ed25519", "signature": base64.b64encode(signature).decode()},
                      indent=2)
    return (text + "\n").encode()


@dataclass(frozen=True, slots=True)
class Verified:
    manifest: dict[str, Any]
    key: str  # the id of the trusted key that signed it


def members(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Each member file with its sha256; a manifest from before `members` lists its one tar."""
    listed = manifest.get("members")
    if isinstance(listed, list):
        return listed
    return [{"path": manifest.get("tar"), "sha256": manifest.get("sha256")}]


def verify_bundle(bundle: Path, trusted: Iterable[Path]) -> Verified:
    """Signature, signer and every member's sha256, or SigningError naming what is wrong.

    The order matters: the manifest is parsed only once its signature holds, so nothing an
    attacker wrote is trusted before that."""
    keys = {key_id(k): (path, k) for path in trusted for k in [load_public(path)]}
    manifest_path, signature_path = bundle / MANIFEST, bundle / SIGNATURE
    if not manifest_path.is_file():
        raise SigningError(f"{bundle} is not a bundle: no {MANIFEST}")
    if not signature_path.is_file():
        raise SigningError(f"{bundle} is not signed (no {SIGNATURE}); with --trust only signed bundles load")
    written = signature_path.read_bytes()
    try:
        signature = json.loads(written)
        kid = str(signature["key"])
        raw = base64.b64decode(signature["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise SigningError(f"{signature_path} is damaged: not a fieldgate signature ({exc})") from exc
    if written != signature_bytes(kid, raw):
        raise SigningError(f"{signature_path} is damaged: not in the form `images save --sign` writes it")
    if kid not in keys:
        known = ", ".join(f"{k} ({p})" for k, (p, _) in keys.items())
        raise SigningError(f"{bundle} is signed by key {kid}, which is not trusted here (trusted: {known})")
    data = manifest_path.read_bytes()
    try:
        keys[kid][1].verify(raw, data)
    except InvalidSignature:
        raise SigningError(
            f"{manifest_path} does not match its signature by key {kid}: the manifest or the "
            "signature was changed after signing"
        ) from None
    manifest: dict[str, Any] = json.loads(data)
    for member in members(manifest):
        path = bundle / str(member["path"])
        if Path(str(member["path"])).name != str(member["path"]):
            raise SigningError(f"{MANIFEST} names a member outside the bundle: {member['path']}")
        if not path.is_file():
            raise SigningError(f"{path} is missing from the bundle")
        actual = sha256_file(path)
        if actual != member["sha256"]:
            raise SigningError(
                f"{path} was changed after signing: sha256 {actual}, the signed manifest says {member['sha256']}"
            )
    return Verified(manifest, kid)


# ----------------------------------------------------------------------------- trust store


def trust_store() -> Path:
    """Where the ids of images loaded from trusted bundles are kept, one file per machine."""
    if TRUST_STORE_ENV in os.environ:
        return Path(os.environ[TRUST_STORE_ENV])
    if os.geteuid() == 0:
        return Path("/var/lib/fieldgate/trusted-images.json")
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "fieldgate" / "trusted-images.json"


def trusted_ids(store: Path | None = None) -> dict[str, dict[str, str]]:
    """image id -> {name, key} for every image a trusted bundle loaded; {} when none was."""
    try:
        data = json.loads((store or trust_store()).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SigningError(f"the trust store {store or trust_store()} cannot be read: {exc}") from exc
    images: dict[str, dict[str, str]] = data.get("images", {})
    return images


def record_trusted(images: Iterable[dict[str, Any]], kid: str, store: Path | None = None) -> Path:
    """Add image ids to the trust store (written whole, then renamed: never half a file)."""
    path = store or trust_store()
    known = trusted_ids(path)
    for image in images:
        known[str(image["id"])] = {"name": str(image["name"]), "key": kid}
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps({"images": known}, indent=2, sort_keys=True) + "\n")
    os.chmod(temp, 0o644)
    os.replace(temp, path)
    return path


# ------------------------------------------------------------------------------------ verb


def main_keys(args: argparse.Namespace) -> int:
    """`fieldgate keys generate OUT`."""
    try:
        public_path, kid = generate(args.out)
    except (SigningError, OSError) as exc:
        print(f"fieldgate keys: {exc}", file=sys.stderr)
        return 1
    print(f"private key {args.out} (mode 0600; keep it off the gateways)")
    print(f"public key  {public_path} (key id {kid}; copy it to the gateways for `images load --trust`)")
    return 0
