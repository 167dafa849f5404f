"""An attacker who can write the bundle (a USB stick, a share) changes it in every way a fuzzer
finds: flipped bits, cut or grown files, a swapped or forged manifest.sig, a manifest re-signed
with the attacker's own key. `verify_bundle` refuses each one with a SigningError (never another
exception, never a pass), so `images load --trust` loads nothing."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.signing import (
    MANIFEST,
    SIGNATURE,
    SigningError,
    generate,
    load_private,
    sign_manifest,
    signature_bytes,
    verify_bundle,
)
from tests.gateway.test_signing import TAR, make_bundle

pytestmark = pytest.mark.security

MEMBERS = [TAR, MANIFEST, SIGNATURE]
RUNS = {"refused": 0}


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("signed")
    generate(root / "keys" / "plant")
    generate(root / "keys" / "attacker")
    return make_bundle(root, root / "keys" / "plant"), root / "keys" / "plant.pub", root / "keys" / "attacker"


mutation = st.one_of(
    st.tuples(st.just("flip"), st.sampled_from(MEMBERS), st.floats(0, 1), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.sampled_from(MEMBERS), st.floats(0, 0.999), st.just(0)),
    st.tuples(st.just("grow"), st.sampled_from(MEMBERS), st.binary(min_size=1, max_size=64), st.just(0)),
    st.tuples(st.just("sig"), st.sampled_from(["key", "signature", "whole"]),
              st.one_of(st.text(max_size=90), st.integers(), st.none(), st.lists(st.integers(), max_size=3)),
              st.just(0)),
)


@settings(max_examples=400, deadline=None)
@given(change=mutation)
def test_every_change_to_a_signed_bundle_is_refused(
    signed: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory, change: tuple[str, object, object, int]
) -> None:
    bundle = tmp_path_factory.mktemp("b") / "bundle"
    shutil.copytree(signed[0], bundle)
    kind, what, value, bit = change
    if kind in ("flip", "cut", "grow"):
        path = bundle / str(what)
        data = bytearray(path.read_bytes())
        if kind == "flip":
            data[min(int(float(value) * len(data)), len(data) - 1)] ^= 1 << bit  # type: ignore[arg-type]
        elif kind == "cut":
            data = data[: int(float(value) * len(data))]  # type: ignore[arg-type]
        else:
            assert isinstance(value, bytes)
            data += value
        path.write_bytes(bytes(data))
    else:
        signature = json.loads((bundle / SIGNATURE).read_text())
        if what == "whole":
            signature = value
        elif signature.get(what) == value:
            return  # not a change
        else:
            signature[what] = value
        (bundle / SIGNATURE).write_text(json.dumps(signature))
    with pytest.raises(SigningError):
        verify_bundle(bundle, [signed[1]])
    RUNS["refused"] += 1


def test_a_manifest_re_signed_with_another_key_under_the_trusted_key_id_is_refused(
    signed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """The attacker changes an image id, signs with a key of their own and writes the trusted
    key's id into manifest.sig: the id only selects the key, the signature must still hold."""
    bundle = tmp_path / "bundle"
    shutil.copytree(signed[0], bundle)
    trusted_id = json.loads((bundle / SIGNATURE).read_text())["key"]
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["images"][0]["id"] = "sha256:" + "66" * 32
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    sign_manifest(bundle, load_private(signed[2]))
    forged = base64.b64decode(json.loads((bundle / SIGNATURE).read_text())["signature"])
    (bundle / SIGNATURE).write_bytes(signature_bytes(trusted_id, forged))  # exactly our form
    with pytest.raises(SigningError, match="does not match its signature"):
        verify_bundle(bundle, [signed[1]])


def test_the_fuzzer_ran(signed: tuple[Path, Path, Path]) -> None:
    print(f"\n{RUNS['refused']} changed bundles, every one refused with SigningError")
    assert RUNS["refused"] >= 100
