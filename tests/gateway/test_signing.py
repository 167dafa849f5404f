"""Signed offline bundles without an engine: keys, signature, every refusal, the trust store."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.signing import (
    MANIFEST,
    SIGNATURE,
    SigningError,
    generate,
    load_private,
    record_trusted,
    sign_manifest,
    trusted_ids,
    verify_bundle,
)

pytestmark = pytest.mark.unit

TAR = "fieldgate-images.tar"


def make_bundle(root: Path, key: Path | None) -> Path:
    """A bundle as `images save` writes it, with a few KB of stand-in tar bytes."""
    bundle = root / "bundle"
    bundle.mkdir()
    tar = bundle / TAR
    tar.write_bytes(bytes(range(256)) * 16)
    sha = hashlib.sha256(tar.read_bytes()).hexdigest()
    manifest = {
        "format": 1, "tar": TAR, "sha256": sha, "bytes": tar.stat().st_size,
        "members": [{"path": TAR, "sha256": sha, "bytes": tar.stat().st_size}],
        "images": [{"name": "fieldgate/forwarder:1", "id": "sha256:" + "ab" * 32, "size": 1, "revision": ""}],
    }
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if key is not None:
        sign_manifest(bundle, load_private(key))
    return bundle


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    generate(tmp_path / "keys" / "plant")
    return tmp_path / "keys" / "plant", tmp_path / "keys" / "plant.pub"


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_keys_generate_writes_a_private_key_only_its_owner_reads_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "k" / "signing"
    assert main(["keys", "generate", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "k" / "signing.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert "key id" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(["keys", "generate", str(out)]) == 1
    assert "never overwritten" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_a_signed_bundle_verifies_with_its_public_key(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    verified = verify_bundle(bundle, [keys[1]])
    assert verified.manifest["images"][0]["id"] == "sha256:" + "ab" * 32
    assert json.loads((bundle / SIGNATURE).read_text())["key"] == verified.key


def test_an_unsigned_bundle_is_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bundle = make_bundle(tmp_path, None)
    with pytest.raises(SigningError, match=r"is not signed \(no manifest.sig\)"):
        verify_bundle(bundle, [keys[1]])


def test_a_bundle_signed_by_an_unknown_key_is_refused_naming_both_keys(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    stranger, _ = generate(tmp_path / "other" / "stranger")
    bundle = make_bundle(tmp_path, tmp_path / "other" / "stranger")
    signer = json.loads((bundle / SIGNATURE).read_text())["key"]
    with pytest.raises(SigningError, match=f"signed by key {signer}, which is not trusted here") as caught:
        verify_bundle(bundle, [keys[1]])
    assert str(keys[1]) in str(caught.value)
    verify_bundle(bundle, [keys[1], stranger])  # trusted once its key is given


@pytest.mark.parametrize("member", [TAR, MANIFEST, SIGNATURE])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_flipped_byte_in_any_member_is_refused(
    tmp_path: Path, keys: tuple[Path, Path], member: str, where: str
) -> None:
    bundle = make_bundle(tmp_path, keys[0])
    path = bundle / member
    size = path.stat().st_size
    flip(path, {"first": 0, "middle": size // 2, "last": size - 2}[where])  # -2: before the final newline
    with pytest.raises(SigningError) as caught:
        verify_bundle(bundle, [keys[1]])
    message = str(caught.value)
    expected = {
        TAR: "fieldgate-images.tar was changed after signing",
        MANIFEST: "does not match its signature",
        SIGNATURE: "",  # a flipped signature byte breaks the JSON, the key id or the signature
    }[member]
    assert expected in message
    if member == SIGNATURE:
        assert any(s in message for s in ("manifest.sig is damaged", "not trusted here", "does not match"))


def test_a_member_the_manifest_names_outside_the_bundle_is_refused(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    bundle = make_bundle(tmp_path, None)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["members"][0]["path"] = "../escape.tar"
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    sign_manifest(bundle, load_private(keys[0]))
    with pytest.raises(SigningError, match="outside the bundle"):
        verify_bundle(bundle, [keys[1]])


def test_the_trust_store_keeps_ids_across_loads(tmp_path: Path) -> None:
    store = tmp_path / "state" / "trusted-images.json"
    assert trusted_ids(store) == {}
    record_trusted([{"name": "fieldgate/forwarder:1", "id": "sha256:aa"}], "k1", store)
    record_trusted([{"name": "fieldgate/forwarder:2", "id": "sha256:bb"}], "k2", store)
    assert trusted_ids(store) == {"sha256:aa": {"name": "fieldgate/forwarder:1", "key": "k1"},
                                  "sha256:bb": {"name": "fieldgate/forwarder:2", "key": "k2"}}
