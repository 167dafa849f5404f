"""`fieldgate images build|save|load`: the collector images, and offline bundles for air-gapped plants.

`build` makes the wheels of fieldgate and every dependency on this machine first (pip, with
its cache; for another platform, pip downloads that platform's binary wheels of the same
versions without running them), then builds each image from one template
(compose/image.Dockerfile) in a context holding only those wheels and compose/rootfs.py, so
the image build itself needs no network and, for arm64 on an x86_64 host, no emulation.
Each platform's images are tagged TAG-ARCH (fieldgate/forwarder:0.1.0-arm64); the machine's
own platform also gets the plain TAG, the one gateway.yaml names.

`save` writes one `docker save` tar per platform (shared layers stored once in each) plus
manifest.json with the sha256 of each member and each image's id and platform, and with
`--sign KEY` manifest.sig over the manifest (gateway/signing.py); `load` checks all of it
before the first byte reaches the engine, loads the machine's own platform only, and checks
each image id after loading. `load --trust` refuses unsigned bundles.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import TYPE_CHECKING

from collectors.core.errors import FieldgateError

if TYPE_CHECKING:
    from gateway.runtime.engine import Engine, ImageInfo

# image -> the pip extra it installs; all three are built from compose/image.Dockerfile
IMAGES: dict[str, str] = {
    "collector-modbus": "modbus",
    "collector-opcua": "opcua",
    "forwarder": "",
}


@dataclass(frozen=True, slots=True)
class Flavour:
    """What the template needs per image beyond its extra."""

    module: str  # the entry point: python3 -m MODULE
    component: str  # io.fieldgate.component
    description: str
    metrics_port: int


FLAVOURS: dict[str, Flavour] = {
    "collector-modbus": Flavour("collectors.modbus", "modbus", "fieldgate Modbus collector", 9109),
    "collector-opcua": Flavour("collectors.opcua", "opcua", "fieldgate OPC UA collector", 9110),
    "forwarder": Flavour("collectors.forwarder", "forwarder", "fieldgate forwarder", 9108),
}
TEMPLATE = "image.Dockerfile"
ASSEMBLER = "rootfs.py"
REPOSITORY = "fieldgate"
DEFAULT_BASE = "python:3.11-slim"
BUNDLE_TAR = "fieldgate-images.tar"
BUNDLE_MANIFEST = "manifest.json"
# Platforms the images are built for: Docker's name -> Debian's architecture (tag suffix).
PLATFORMS: dict[str, str] = {"linux/amd64": "amd64", "linux/arm64": "arm64"}
# platform.machine() -> architecture
MACHINES: dict[str, str] = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
# pip's platform tags for another architecture's wheels: manylinux up to bookworm's glibc 2.36.
MANYLINUX = [f"manylinux_2_{minor}" for minor in range(36, 16, -1)] + ["manylinux2014"]
PIP_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}
# Size targets of the docker tier (tests/docker/test_images.py), bytes as Docker counts them.
SIZE_TARGETS = {"collector-modbus": 60_000_000, "collector-opcua": 110_000_000, "forwarder": 55_000_000}
STACK_TARGET = 150_000_000


class ImagesError(FieldgateError):
    """An image could not be built, saved or loaded."""


def package_version() -> str:
    try:
        return installed_version("fieldgate")
    except Exception:  # not installed (a bare checkout on sys.path)
        return "0.0.0"


def image_name(image: str, tag: str | None = None, arch: str | None = None) -> str:
    """`collector-modbus` -> `fieldgate/collector-modbus:0.1.0` (the names gateway.yaml uses);
    with ARCH `fieldgate/collector-modbus:0.1.0-arm64`, that platform's build."""
    return f"{REPOSITORY}/{image}:{tag or package_version()}{'-' + arch if arch else ''}"


def host_arch() -> str:
    """This machine's architecture as the images name it (amd64, arm64)."""
    machine = platform.machine()
    if machine not in MACHINES:
        raise ImagesError(f"fieldgate images exist for {', '.join(PLATFORMS)}; this machine is {machine}")
    return MACHINES[machine]


def parse_platforms(text: str | None) -> list[str]:
    """`linux/amd64,linux/arm64` -> ["amd64", "arm64"]; None -> this machine's own."""
    if not text:
        return [host_arch()]
    arches: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if item not in PLATFORMS:
            raise ImagesError(f"unknown platform {item!r}: allowed {', '.join(PLATFORMS)} (comma-separated)")
        if PLATFORMS[item] not in arches:
            arches.append(PLATFORMS[item])
    return arches


def platform_base(base: str, arch: str) -> str:
    """The base of ARCH's images: BASE for this machine's own, BASE-ARCH for another
    (fieldgate/base:bookworm-arm64, python:3.11-slim-arm64): one engine holds one platform per tag."""
    if arch == host_arch():
        return base
    return f"{base}-{arch}" if ":" in base.rsplit("/", 1)[-1] else f"{base}:latest-{arch}"


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


def foreign_wheels(native: list[Path], wheels: Path, arch: str) -> list[Path]:
    """ARCH's wheels of exactly the versions in NATIVE: pure ones copied, binary ones downloaded
    by pip for that platform (never built, never run here)."""
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    pins = []
    for wheel in native:
        name, version, *_, platform_tag = wheel.name[:-len(".whl")].split("-")
        if platform_tag == "any":
            shutil.copyfile(wheel, wheels / wheel.name)
        else:
            pins.append(f"{name}=={version}")
    if pins:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                   "--no-deps", "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                   "--dest", str(wheels)]
        for tag in MANYLINUX:
            command += ["--platform", f"{tag}_{PIP_MACHINE[arch]}"]
        result = subprocess.run([*command, *pins], capture_output=True, text=True)
        if result.returncode != 0:
            raise ImagesError(f"pip download of the {arch} wheels ({' '.join(pins)}) failed:\n"
                              f"{result.stderr[-3000:]}")
    return sorted(wheels.glob("*.whl"))


@dataclass(frozen=True, slots=True)
class Built:
    image: str
    name: str
    id: str
    size: int
    seconds: float
    arch: str = ""


@dataclass(frozen=True, slots=True)
class Platform:
    """One platform's build: its images, their base, and the bytes on disk of the three together."""

    arch: str
    base: str
    base_size: int
    images: list[Built]
    stack: int  # shared layers counted once


def render(root: Path, context: Path) -> None:
    """compose/image.Dockerfile -> CONTEXT/IMAGE.Dockerfile, the entry point filled in."""
    template = (root / "compose" / TEMPLATE).read_text()
    for image, flavour in FLAVOURS.items():
        (context / f"{image}.Dockerfile").write_text(template.replace("@MODULE@", flavour.module))
    shutil.copyfile(root / "compose" / ASSEMBLER, context / ASSEMBLER)


def check_base(engine: Engine, base: str, arch: str) -> ImageInfo:
    """The base of ARCH's images, present and of that architecture, or a message saying how to get it."""
    info = engine.image(base)
    if info is None:
        how = (f"`docker pull --platform linux/{arch} python:3.11-slim` then `docker tag` it {base}"
               if base.startswith("python:") else ".ci/docker.sh builds fieldgate/base:bookworm and "
               "fieldgate/base:bookworm-arm64 from Debian packages (debootstrap)")
        raise ImagesError(f"base image {base} for linux/{arch} is not on this engine: {how}")
    actual = str(engine.client.images.get(base).attrs.get("Architecture", ""))
    if actual and actual != arch:
        raise ImagesError(f"base image {base} is built for {actual}, not {arch}: the {arch} images need an "
                          f"{arch} base")
    return info


def build(base: str, tag: str | None, arches: list[str] | None = None, out: Path | None = None) -> list[Platform]:
    """Build the three images on `base` for each architecture (default: this machine's)."""
    from gateway.runtime.engine import Engine, EngineError

    arches = arches or [host_arch()]
    own = host_arch()
    root = source_root()
    context = (out or cache_dir()) / "context"
    shutil.rmtree(context, ignore_errors=True)  # earlier layouts (one Dockerfile per image) must not linger
    context.mkdir(parents=True)
    native = build_wheels(root, context / "wheels" / own)
    for arch in arches:
        if arch != own:
            foreign_wheels(native, context / "wheels" / arch, arch)
    render(root, context)
    extras = ",".join(sorted(e for e in IMAGES.values() if e))
    version = tag or package_version()
    platforms: list[Platform] = []
    with Engine() as engine:
        bases = {arch: check_base(engine, platform_base(base, arch), arch) for arch in arches}
        print(f"{len(native)} wheels in {context / 'wheels'}; base {base}", file=sys.stderr)
        for arch in arches:
            built: list[Built] = []
            args = {"BASE": bases[arch].name, "BUILD_BASE": base, "ARCH": arch, "BUILD_ARCH": own,
                    "EXTRAS": extras, "VERSION": version, "REVISION": git_revision(root)}
            for image, extra in IMAGES.items():
                flavour = FLAVOURS[image]
                name = image_name(image, tag, arch)
                started = time.monotonic()
                # Docker's classic builder checks every stage against the build's platform, so the
                # build runs for this machine's (its stages run natively) and, for another
                # platform, only the image's config is rewritten afterwards.
                built_as = name if arch == own else f"{name}-build"
                try:
                    log = context / f"{image}-{arch}.build.log"
                    info = engine.build(context, f"{image}.Dockerfile", built_as,
                                        {**args, "EXTRA": extra, "TITLE": f"fieldgate-{image}",
                                         "DESCRIPTION": flavour.description, "COMPONENT": flavour.component,
                                         "METRICS_PORT": str(flavour.metrics_port)},
                                        log)
                    if arch != own:
                        info = retarget(engine, built_as, name, arch, context)
                except EngineError as exc:
                    raise ImagesError(str(exc)) from exc
                if arch == own:
                    engine.client.images.get(name).tag(f"{REPOSITORY}/{image}", version)
                built.append(Built(image, name, info.id, info.size, time.monotonic() - started, arch))
            platforms.append(Platform(arch, bases[arch].name, bases[arch].size, built,
                                      stack_size(engine, [b.name for b in built])))
        engine.prune_leftovers()
    return platforms


def retarget(engine: Engine, built: str, name: str, arch: str, work: Path) -> ImageInfo:
    """Load the image BUILT again as NAME with ARCH in its config: the same layers, byte for byte
    (a `docker save` stream rewritten: the config, and the manifest that names it); BUILT goes."""
    source, target = work / "retarget.tar", work / "retarget-out.tar"
    engine.save([built], source)
    with tarfile.open(source) as src, tarfile.open(target, "w") as dst:
        manifest_file = src.extractfile("manifest.json")
        assert manifest_file is not None
        entry = json.load(manifest_file)[0]
        config_file = src.extractfile(entry["Config"])
        assert config_file is not None
        config = json.load(config_file)
        config["architecture"] = arch
        if arch == "arm64":
            config["variant"] = "v8"
        data = json.dumps(config, separators=(",", ":")).encode()
        config_name = hashlib.sha256(data).hexdigest() + ".json"
        for member in src.getmembers():
            if member.name in (entry["Config"], "manifest.json", "repositories"):
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        manifest = json.dumps([{"Config": config_name, "RepoTags": [name], "Layers": entry["Layers"]}]).encode()
        for member_name, content in ((config_name, data), ("manifest.json", manifest)):
            member = tarfile.TarInfo(member_name)
            member.size, member.mtime, member.mode = len(content), int(time.time()), 0o644
            dst.addfile(member, io.BytesIO(content))
    engine.load(target)
    source.unlink()
    target.unlink()
    engine.remove_image(built)
    info = engine.image(name)
    if info is None:
        raise ImagesError(f"{name} did not load after its architecture was set to {arch}")
    return info


def layer_sizes(engine: Engine, name: str) -> list[tuple[str, int]]:
    """(diff id, bytes) of each layer of an image, bottom first; [] when the history does not say."""
    image = engine.client.images.get(name)
    layers = list(image.attrs.get("RootFS", {}).get("Layers", []))
    steps = list(reversed(image.history()))  # oldest first
    # A step made a layer unless it only changed the config (#(nop) without COPY/ADD).
    made = [int(step.get("Size") or 0) for step in steps
            if "#(nop) " not in str(step.get("CreatedBy", ""))
            or any(word in str(step.get("CreatedBy", "")) for word in ("#(nop) COPY", "#(nop) ADD"))]
    if len(made) != len(layers):
        return []
    return list(zip(layers, made, strict=True))


def stack_size(engine: Engine, names: list[str]) -> int:
    """Bytes on disk of several images with their shared layers counted once."""
    unique: dict[str, int] = {}
    for name in names:
        sizes = layer_sizes(engine, name)
        if not sizes:  # the history does not match the layers: count the image whole
            unique[name] = int(engine.client.images.get(name).attrs.get("Size") or 0)
        unique.update(sizes)
    return sum(unique.values())


def bundled(engine: Engine, tag: str | None) -> dict[str, list[ImageInfo]]:
    """arch -> the three images of TAG built for it: TAG-ARCH for each platform built, and the plain
    TAG as this machine's own platform when no TAG-ARCH of it exists (images tagged by hand)."""
    found: dict[str, list[ImageInfo]] = {}
    for arch in PLATFORMS.values():
        infos = [engine.image(image_name(image, tag, arch)) for image in IMAGES]
        present = [i for i in infos if i is not None]
        if present and len(present) < len(infos):
            missing = [image_name(image, tag, arch) for image, i in zip(IMAGES, infos, strict=True) if i is None]
            raise ImagesError(f"{', '.join(missing)} not built: run `fieldgate images build --platform linux/{arch}`")
        if present:
            found[arch] = present
    own = host_arch()
    plain = [engine.image(image_name(image, tag)) for image in IMAGES]
    if own in found:
        # The plain names point at this machine's images: the bundle carries them too (no bytes).
        found[own] += [i for i in plain if i is not None and i.id in {f.id for f in found[own]}]
    elif all(plain):
        arch = str(engine.client.images.get(plain[0].name).attrs.get("Architecture") or own)  # type: ignore[union-attr]
        found[arch] = [i for i in plain if i is not None]
    if not found:
        raise ImagesError(f"{image_name('forwarder', tag)} is not built: run `fieldgate images build`")
    return found


def save(out: Path, tag: str | None = None, sign: Path | None = None) -> dict[str, object]:
    """Write OUT/manifest.json and one `docker save` tar per platform built (OUT/manifest.sig with
    `sign`). One platform: OUT/fieldgate-images.tar; several: OUT/fieldgate-images-ARCH.tar each."""
    from gateway.runtime.engine import Engine

    key = None
    if sign is not None:  # a bad key fails before minutes of `docker save`
        from gateway.signing import load_private

        key = load_private(sign)
    out.mkdir(parents=True, exist_ok=True)
    members: list[dict[str, object]] = []
    images: list[dict[str, object]] = []
    with Engine() as engine:
        found = bundled(engine, tag)
        for arch, infos in found.items():
            tar = BUNDLE_TAR if len(found) == 1 else f"fieldgate-images-{arch}.tar"
            sha = engine.save([i.name for i in infos], out / tar)
            members.append({"path": tar, "sha256": sha, "bytes": (out / tar).stat().st_size, "platform": arch})
            images += [{"name": i.name, "id": i.id, "size": i.size, "platform": arch,
                        "revision": i.labels.get("org.opencontainers.image.revision", "")} for i in infos]
    for stale in out.glob("fieldgate-images*.tar"):  # another platform's tar of an earlier save
        if stale.name not in {m["path"] for m in members}:
            stale.unlink()
    manifest: dict[str, object] = {"format": 1, "members": members, "images": images,
                                   "platforms": sorted(found)}
    if len(members) == 1:  # as before there were platforms: one tar, named at the top too
        manifest.update({"tar": members[0]["path"], "sha256": members[0]["sha256"], "bytes": members[0]["bytes"]})
    (out / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    stale = out / "manifest.sig"
    stale.unlink(missing_ok=True)  # a signature of an earlier manifest would only mislead
    if key is not None:
        from gateway.signing import sign_manifest

        manifest["signed_by"] = sign_manifest(out, key)
    return manifest


def load(bundle: Path, trust: list[Path] | None = None) -> list[dict[str, str]]:
    """Check the bundle whole, load this machine's platform from it, then check each image id.

    Every member's sha256 is checked (with `trust`, and the signature over the manifest that
    lists them), whichever platform loads: nothing reaches the engine unless every byte of the
    bundle matches. The images of this machine's platform then also get their plain tag
    (fieldgate/forwarder:0.1.0-arm64 -> fieldgate/forwarder:0.1.0), and with `trust` their ids
    are recorded as trusted."""
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
    own = host_arch()
    listed = members(manifest)
    chosen = [m for m in listed if m.get("platform") in (None, own)]
    if not chosen:
        carried = ", ".join(f"linux/{m.get('platform')}" for m in listed)
        raise ImagesError(f"{bundle} carries {carried}; this machine is linux/{own}: nothing was loaded")
    images: list[dict[str, str]] = [i for i in manifest.get("images", []) if i.get("platform") in (None, own)]
    with Engine() as engine:
        for member in chosen:
            try:
                engine.load(bundle / str(member["path"]))
            except EngineError as exc:
                raise ImagesError(str(exc)) from exc
        for entry in images:
            info = engine.image(entry["name"])
            if info is None or info.id != entry["id"]:
                got = info.id if info else "nothing"
                raise ImagesError(f"{entry['name']}: the engine has {got}, the manifest says {entry['id']}")
            suffix = f"-{own}"
            if entry["name"].endswith(suffix):  # this machine's own: the plain tag gateway.yaml names
                repository, arch_tag = entry["name"].rsplit(":", 1)
                engine.client.images.get(entry["name"]).tag(repository, arch_tag[:-len(suffix)])
    if signer is not None:
        record_trusted(images, signer)
    return images


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def main_images(args: argparse.Namespace) -> int:
    try:
        if args.images_verb == "build":
            base = args.base or DEFAULT_BASE
            started = time.monotonic()
            platforms = build(base, args.tag, parse_platforms(getattr(args, "platform", None)))
            print(f"{'image':<48} {'platform':<12} {'size':>9} {'target':>9} {'build':>7}")
            for built in platforms:
                for b in built.images:
                    print(f"{b.name:<48} {'linux/' + b.arch:<12} {_mb(b.size):>9} "
                          f"{'<= ' + _mb(SIZE_TARGETS[b.image]):>9} {b.seconds:>6.1f}s")
                print(f"{'the three on disk, shared layers once':<48} {'linux/' + built.arch:<12} "
                      f"{_mb(built.stack):>9} {'<= ' + _mb(STACK_TARGET):>9}")
                print(f"{'base ' + built.base:<48} {'linux/' + built.arch:<12} {_mb(built.base_size):>9}")
            print(f"built in {time.monotonic() - started:.0f}s (wheels included)")
        elif args.images_verb == "save":
            manifest = save(args.out, getattr(args, "tag", None), getattr(args, "sign", None))
            for member in manifest["members"]:  # type: ignore[attr-defined]
                print(f"wrote {args.out / member['path']} (linux/{member['platform']}, {_mb(member['bytes'])}, "
                      f"sha256 {member['sha256']})")
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
