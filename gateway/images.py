"""`fieldgate images build|save|load`: the collector images, and offline bundles for air-gapped plants.

`build` makes the wheels of fieldgate and every dependency on this machine first (pip, with
its cache), then builds each image from a context holding only those wheels and the
Dockerfiles in compose/, so the image build itself needs no network. `save` writes one
`docker save` tar of the three images (shared layers stored once) plus manifest.json with
the sha256 of each member and each image's id, and with `--sign KEY` manifest.sig over the
manifest (gateway/signing.py); `load` checks all of it before the first byte reaches the
engine, and each image id after loading. `load --trust` refuses unsigned bundles.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

from collectors.core.errors import FieldgateError

# image -> the pip extra it installs; the Dockerfile is compose/<image>.Dockerfile
IMAGES: dict[str, str] = {
    "collector-modbus": "modbus",
    "collector-opcua": "opcua",
    "forwarder": "",
}
REPOSITORY = "fieldgate"
DEFAULT_BASE = "python:3.11-slim"
BUNDLE_TAR = "fieldgate-images.tar"
BUNDLE_MANIFEST = "manifest.json"


class ImagesError(FieldgateError):
    """An image could not be built, saved or loaded."""


def package_version() -> str:
    try:
        return installed_version("fieldgate")
    except Exception:  # not installed (a bare checkout on sys.path)
        return "0.0.0"


def image_name(image: str, tag: str | None = None) -> str:
    """`collector-modbus` -> `fieldgate/collector-modbus:0.1.0` (the names gateway.yaml uses)."""
    return f"{REPOSITORY}/{image}:{tag or package_version()}"


def source_root() -> Path:
    """The checkout the images are built from: Dockerfiles in compose/, the package beside it."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "compose").is_dir() or not (root / "pyproject.toml").is_file():
        raise ImagesError(f"images are built from a source checkout; {root} lacks compose/ or pyproject.toml")
    return root


def cache_dir() -> Path:
    base = os.environ.get("FIELDGATE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fieldgate"
    )
    return Path(base) / "images"


def git_revision(root: Path) -> str:
    """HEAD's commit, with `-dirty` when the packaged sources differ from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "collectors", "gateway", "compose",
             "pyproject.toml"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def build_wheels(root: Path, wheels: Path) -> list[Path]:
    """Wheels for fieldgate with every extra the images use, for the host's CPython (3.11 = the images')."""
    if sys.version_info[:2] != (3, 11):
        raise ImagesError(
            f"build the wheels with Python 3.11 (the images run 3.11), not {sys.version.split()[0]}"
        )
    shutil.rmtree(wheels, ignore_errors=True)  # only this build's wheels may reach the images
    wheels.mkdir(parents=True)
    extras = ",".join(sorted(e for e in IMAGES.values() if e))
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
               "--wheel-dir", str(wheels), f"{root}[{extras}]"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImagesError(f"pip wheel failed:\n{result.stderr[-3000:]}")
    return sorted(wheels.glob("*.whl"))


@dataclass(frozen=True, slots=True)
class Built:
    image: str
    name: str
    id: str
    size: int
    seconds: float


def build(base: str, tag: str | None, out: Path | None = None) -> tuple[list[Built], int]:
    """Build the three images on `base`; returns them and the base image's size in bytes."""
    from gateway.runtime.engine import Engine, EngineError

    root = source_root()
    context = (out or cache_dir()) / "context"
    context.mkdir(parents=True, exist_ok=True)
    wheel_list = build_wheels(root, context / "wheels")
    for image in IMAGES:
        shutil.copyfile(root / "compose" / f"{image}.Dockerfile", context / f"{image}.Dockerfile")
    args = {"BASE": base, "VERSION": tag or package_version(), "REVISION": git_revision(root)}
    built: list[Built] = []
    with Engine() as engine:
        base_info = engine.image(base)
        if base_info is None:
            raise ImagesError(
                f"base image {base} is not on this engine: pull it, or build one without a registry "
                "(.ci/docker.sh imports a debootstrap bookworm as fieldgate/base:bookworm)"
            )
        print(f"{len(wheel_list)} wheels in {context / 'wheels'}; base {base}", file=sys.stderr)
        for image in IMAGES:
            name = image_name(image, tag)
            started = time.monotonic()
            try:
                log = context / f"{image}.build.log"
                info = engine.build(context, f"{image}.Dockerfile", name, args, log)
            except EngineError as exc:
                raise ImagesError(str(exc)) from exc
            built.append(Built(image, name, info.id, info.size, time.monotonic() - started))
        engine.prune_leftovers()
    return built, base_info.size


def save(out: Path, tag: str | None = None, sign: Path | None = None) -> dict[str, object]:
    """Write OUT/fieldgate-images.tar and OUT/manifest.json (and OUT/manifest.sig with `sign`)."""
    from gateway.runtime.engine import Engine

    key = None
    if sign is not None:  # a bad key fails before minutes of `docker save`
        from gateway.signing import load_private

        key = load_private(sign)
    out.mkdir(parents=True, exist_ok=True)
    with Engine() as engine:
        infos = []
        for image in IMAGES:
            info = engine.image(image_name(image, tag))
            if info is None:
                raise ImagesError(f"{image_name(image, tag)} is not built: run `fieldgate images build`")
            infos.append(info)
        tar_sha = engine.save([i.name for i in infos], out / BUNDLE_TAR)
    size = (out / BUNDLE_TAR).stat().st_size
    manifest: dict[str, object] = {
        "format": 1,
        "tar": BUNDLE_TAR,
        "sha256": tar_sha,
        "bytes": size,
        "members": [{"path": BUNDLE_TAR, "sha256": tar_sha, "bytes": size}],
        "images": [
            {"name": i.name, "id": i.id, "size": i.size,
             "revision": i.labels.get("org.opencontainers.image.revision", "")}
            for i in infos
        ],
    }
    (out / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    stale = out / "manifest.sig"
    stale.unlink(missing_ok=True)  # a signature of an earlier manifest would only mislead
    if key is not None:
        from gateway.signing import sign_manifest

        manifest["signed_by"] = sign_manifest(out, key)
    return manifest


def load(bundle: Path, trust: list[Path] | None = None) -> list[dict[str, str]]:
    """Check the bundle whole, load it, then check each image id the engine now has.

    With `trust`, the bundle must be signed by one of those public keys and nothing reaches the
    engine unless every byte matches; the loaded ids are then recorded as trusted."""
    from gateway.runtime.engine import Engine, EngineError
    from gateway.signing import SigningError, members, record_trusted, sha256_file, verify_bundle

    signer = None
    if trust:
        try:
            verified = verify_bundle(bundle, trust)
        except SigningError as exc:
            raise ImagesError(f"{exc}; nothing was loaded") from exc
        manifest, signer = verified.manifest, verified.key
    else:
        manifest_path = bundle / BUNDLE_MANIFEST
        if not manifest_path.is_file():
            raise ImagesError(f"{bundle} is not a bundle: no {BUNDLE_MANIFEST}")
        manifest = json.loads(manifest_path.read_text())
        for member in members(manifest):
            path = bundle / str(member["path"])
            if not path.is_file():
                raise ImagesError(f"{path} is missing")
            actual = sha256_file(path)
            if actual != member["sha256"]:
                raise ImagesError(f"{path} is damaged: sha256 {actual}, the manifest says {member['sha256']}")
    images: list[dict[str, str]] = list(manifest.get("images", []))
    with Engine() as engine:
        for member in members(manifest):
            try:
                engine.load(bundle / str(member["path"]))
            except EngineError as exc:
                raise ImagesError(str(exc)) from exc
        for entry in images:
            info = engine.image(entry["name"])
            if info is None or info.id != entry["id"]:
                got = info.id if info else "nothing"
                raise ImagesError(f"{entry['name']}: the engine has {got}, the manifest says {entry['id']}")
    if signer is not None:
        record_trusted(images, signer)
    return images


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def main_images(args: argparse.Namespace) -> int:
    try:
        if args.images_verb == "build":
            base = args.base or DEFAULT_BASE
            built, base_size = build(base, args.tag)
            print(f"{'image':<42} {'size':>10} {'over base':>10} {'build':>7}")
            for b in built:
                print(f"{b.name:<42} {_mb(b.size):>10} {_mb(b.size - base_size):>10} {b.seconds:>6.1f}s")
            print(f"{'base ' + base:<42} {_mb(base_size):>10}")
        elif args.images_verb == "save":
            manifest = save(args.out, getattr(args, "tag", None), getattr(args, "sign", None))
            size = _mb(int(str(manifest["bytes"])))
            print(f"wrote {args.out / BUNDLE_TAR} ({size}, sha256 {manifest['sha256']})")
            if "signed_by" in manifest:
                print(f"signed {args.out / BUNDLE_MANIFEST} with key {manifest['signed_by']}")
        elif args.images_verb == "load":
            trust = getattr(args, "trust", None)
            for entry in load(args.bundle, trust):
                print(f"loaded {entry['name']} {entry['id']}{' (trusted)' if trust else ''}")
    except FieldgateError as exc:
        print(f"fieldgate images: {exc}", file=sys.stderr)
        return 1
    return 0
