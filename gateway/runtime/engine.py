"""The Docker Engine's images: build, save and load for `fieldgate images`, the image queries and
removals of `fieldgate update`. The one module that imports docker-py for the Engine (swarm.py
for Swarm services): these are CLI verbs. The long-running supervisor speaks to the Engine with
our own small client (`gateway.runtime.engine_api`), whose errors are these modules' too.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import docker
import docker.errors
import requests

from gateway.runtime.engine_api import EngineError as EngineError

if TYPE_CHECKING:
    from gateway.retention import LocalImage


@dataclass(frozen=True, slots=True)
class ImageInfo:
    name: str
    id: str  # sha256:... of the image config: what `docker images --no-trunc` shows
    size: int  # bytes, uncompressed, shared layers counted in every image
    labels: dict[str, str]


def connect(timeout: float = 60.0) -> docker.DockerClient:
    """A docker-py client for the engine named by DOCKER_HOST (default: the local socket), API
    version negotiated; for the CLI verbs (the supervisor uses `engine_api.connect`)."""
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except docker.errors.DockerException as exc:
        raise EngineError(f"no Docker engine answers ({exc}); start dockerd or set DOCKER_HOST") from exc
    return client


class Engine:
    """Image operations on one engine; a context manager so the HTTP connections are closed."""

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self.client = client or connect()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    # ----------------------------------------------------------------------------- images

    def image(self, name: str) -> ImageInfo | None:
        try:
            image = self.client.images.get(name)
        except docker.errors.ImageNotFound:
            return None
        attrs = image.attrs
        return ImageInfo(name, str(image.id), int(attrs.get("Size") or 0), dict(image.labels or {}))

    def build(
        self, context: Path, dockerfile: str, tag: str, buildargs: dict[str, str], log: Path,
        platform: str | None = None,
    ) -> ImageInfo:
        """Build `tag` from `context` without pulling (the base must be local or reachable);
        `platform` (linux/arm64) is the image's platform, its stages' default."""
        lines: list[str] = []
        try:
            for chunk in self.client.api.build(
                path=str(context), dockerfile=dockerfile, tag=tag, buildargs=buildargs,
                rm=True, forcerm=True, pull=False, decode=True, platform=platform,
            ):
                if "stream" in chunk:
                    lines.append(str(chunk["stream"]))
                if "error" in chunk:
                    lines.append(str(chunk["error"]))
                    log.write_text("".join(lines))
                    raise EngineError(f"building {tag} failed: {str(chunk['error']).strip()} (log: {log})")
        except docker.errors.APIError as exc:
            log.write_text("".join(lines))
            raise EngineError(f"building {tag} failed: {exc.explanation or exc} (log: {log})") from exc
        log.write_text("".join(lines))
        info = self.image(tag)
        if info is None:
            raise EngineError(f"building {tag} ended without an image (log: {log})")
        return info

    def prune_leftovers(self) -> int:
        """Remove untagged images earlier builds of ours left (old images, build stages); bytes freed.

        Housekeeping only: an Engine busy with other work can take longer than our timeout to
        prune (seen here under load), and the images are built anyway, so a failure is said, not
        raised; the next build prunes again."""
        freed = 0
        for label in ("io.fieldgate.stage=build", "io.fieldgate.component"):
            try:
                result = self.client.images.prune(filters={"dangling": True, "label": label})
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                print(f"leftover images were not pruned: {exc}", file=sys.stderr)
                break
            freed += int(result.get("SpaceReclaimed") or 0)
        return freed

    def save(self, names: list[str], out: Path) -> str:
        """`docker save` of several images into one tar (shared layers stored once); returns its sha256."""
        api = self.client.api
        # docker-py's get_image takes one name; the endpoint takes several (POST-free, GET ?names=).
        response = api._get(api._url("/images/get"), params={"names": names}, stream=True)
        digest = hashlib.sha256()
        with out.open("wb") as file:
            for chunk in api._stream_raw_result(response, 2 * 1024 * 1024, False):
                digest.update(chunk)
                file.write(chunk)
        return digest.hexdigest()

    def load(self, tar: Path) -> list[str]:
        """`docker load`; returns what the engine reports it loaded."""
        loaded: list[str] = []
        with tar.open("rb") as file:
            for message in self.client.api.load_image(file, quiet=True):
                if "error" in message:
                    raise EngineError(f"loading {tar} failed: {message['error']}")
                stream = str(message.get("stream", "")).strip()
                if stream:
                    loaded.append(stream)
        return loaded

    def fieldgate_images(self) -> list[LocalImage]:
        """Every image carrying the fieldgate component label (what retention may consider)."""
        from gateway.retention import COMPONENT_LABEL, LocalImage

        try:
            found = self.client.images.list(filters={"label": COMPONENT_LABEL})
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot list images: {exc}") from exc
        return [LocalImage(str(i.id), tuple(i.tags), (i.labels or {}).get(COMPONENT_LABEL),
                           str(i.attrs.get("Created", "")), int(i.attrs.get("Size") or 0),
                           f"{i.attrs.get('Os', '')}/{i.attrs.get('Architecture', '')}") for i in found]

    def image_ids_in_use(self) -> set[str]:
        """The image id of every container on the engine, running or not."""
        try:
            return {str(c.attrs["Image"]) for c in self.client.containers.list(all=True)}
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot list containers: {exc}") from exc

    def remove_image(self, reference: str) -> None:
        """Untag (and remove, with the last tag) without force: the Engine refuses an image in use."""
        try:
            self.client.images.remove(reference)
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot remove {reference}: {getattr(exc, 'explanation', None) or exc}") from exc


# What a call to the Engine may raise: our own refusals and docker-py's (the API refused, the
# socket is gone). Callers outside this module catch these without importing docker.
ENGINE_ERRORS: tuple[type[Exception], ...] = (EngineError, docker.errors.DockerException)
