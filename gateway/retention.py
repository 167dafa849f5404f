"""Which fieldgate images to remove after a successful `fieldgate update`, so a small disk does
not fill up with every image a gateway ever ran.

Kept: the image now running and the one before it (what a rollback returns to), and every
image any container uses (running or stopped, any project). Removed: the other images of the
updated image's repository that are fieldgate images (they carry the `io.fieldgate.component`
label of the updated image) and are built for its platform (a build host keeps the arm64 images
it cross-built beside its own). An image that also carries a tag of another repository, or no
tag at all, is never touched: someone else named it, or `fieldgate images build` prunes it.
The choice is the pure `stale_images`; `clean_after_update` asks the Engine and removes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

COMPONENT_LABEL = "io.fieldgate.component"


@dataclass(frozen=True, slots=True)
class LocalImage:
    id: str
    tags: tuple[str, ...]  # repository:tag
    component: str | None  # the io.fieldgate.component label; None: not a fieldgate image
    created: str = ""  # RFC 3339, for the order removals are reported in
    size: int = 0
    platform: str = ""  # os/architecture: another platform's build is never an older version


def repository(reference: str) -> str:
    """`fieldgate/collector-modbus:0.1.1` -> `fieldgate/collector-modbus` (a registry port is no tag)."""
    name, _, tag = reference.rpartition(":")
    return name if name and "/" not in tag else reference


def stale_images(images: Iterable[LocalImage], running: LocalImage, keep: set[str]) -> list[LocalImage]:
    """The images to remove once `running` is healthy; `keep` holds the previous image's id and
    the id of every image a container uses."""
    repo = repository(running.tags[0]) if running.tags else None
    if repo is None or running.component is None:
        return []  # not a tagged fieldgate image: nothing is known to be its older version
    keep = keep | {running.id}
    return sorted(
        (image for image in images
         if image.id not in keep
         and image.component == running.component
         and image.platform == running.platform
         and image.tags
         and all(repository(tag) == repo for tag in image.tags)),
        key=lambda image: image.created,
    )
