"""`fieldgate update DIR SERVICE --image IMAGE`: a health-gated image update, rolled back
unless the service turns healthy on the new image.

The config directory stays the one truth: the update edits `image:` in gateway.yaml (and puts
the old text back on a rollback). A running supervisor applies that edit like any other;
without one, this command drives the same planner for the one service itself.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from collectors.core.errors import FieldgateError
from gateway.plan import BackoffState, Wait, plan
from gateway.runtime.common import RunDir
from gateway.supervisor import load, read_status, supervisor_alive

# gateway.runtime.docker and .engine are imported where an update to an image runs: docker-py is
# an extra, and the process runtime's answer to `fieldgate update` needs none of it.


if TYPE_CHECKING:
    from gateway.retention import LocalImage


class UpdateError(FieldgateError):
    """The update cannot be made: no such service, no gateway.yaml, an image not on the engine."""

UPDATE_TIMEOUT = 120.0


def set_image(text: str, service: str, image: str) -> str:
    """gateway.yaml with `image:` of one service replaced (or added), everything else byte for byte.

    The config directory stays the one truth: the running supervisor applies the edit like any
    other, and a rollback puts the old text back.
    """
    root = yaml.compose(text)
    if not isinstance(root, yaml.MappingNode):
        raise UpdateError("gateway.yaml is not a mapping")
    path = ["forwarder"] if service == "forwarder" else ["collectors", service]
    node: yaml.MappingNode = root
    for key in path:
        found = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)
        if not isinstance(found, yaml.MappingNode):
            where = ".".join(path)
            raise UpdateError(f"gateway.yaml has no `{where}:` mapping; add `{where}: {{image: {image}}}`")
        node = found
    value = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == "image"), None)
    if value is not None:
        return text[: value.start_mark.index] + image + text[value.end_mark.index :]
    if node.flow_style:
        at = node.start_mark.index + 1
        return text[:at] + f"image: {image}, " + text[at:]
    first_key = node.value[0][0]
    line_start = text.rfind("\n", 0, first_key.start_mark.index) + 1
    return text[:line_start] + " " * first_key.start_mark.column + f"image: {image}\n" + text[line_start:]


def _gateway_file(config_dir: Path) -> Path:
    for name in ("gateway.yaml", "gateway.yml"):
        if (config_dir / name).is_file():
            return config_dir / name
    raise UpdateError(f"{config_dir} has no gateway.yaml")


def _service_status(run_dir: RunDir, service: str) -> dict[str, Any] | None:
    status = read_status(run_dir) or {}
    return next((s for s in status.get("services", []) if s.get("name") == service), None)


def _healthy_on(entry: dict[str, Any] | None, image: str) -> bool:
    return bool(entry and entry.get("image") == image and entry.get("state") == "running"
                and entry.get("health") in ("healthy", None))


def _wait_status(run_dir: RunDir, service: str, image: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _healthy_on(_service_status(run_dir, service), image):
            return True
        time.sleep(1.0)
    return False


async def _update_directly(config_dir: Path, run_dir: RunDir, service: str, within: float) -> bool:
    """No supervisor runs: recreate the one service here and wait for it to turn healthy."""
    from gateway.runtime.docker import DockerRuntime


    config, errors = load(config_dir)
    if config is None:
        raise UpdateError(errors)
    async with DockerRuntime(config_dir, run_dir) as runtime:
        want = {service: runtime.desired(config, config_dir)[service]}
        spec = want[service]
        backoff = BackoffState()
        deadline = time.monotonic() + within
        # The supervisor's loop for this one service: the planner decides (recreate, hand over,
        # roll back), the runtime executes.
        while time.monotonic() < deadline:
            observed = {name: obs for name, obs in (await runtime.observe()).items() if name == service}
            obs = observed.get(service)
            if (obs is not None and obs.candidate is None and obs.image == spec.image
                    and obs.config_hash == spec.config_hash and obs.state == "running"
                    and obs.health in ("healthy", None)):
                return True
            now = time.monotonic()
            backoff = backoff.settle(observed, now, want)
            outcomes = []
            for step in plan(want, observed, now, backoff):
                if not isinstance(step, Wait):
                    print(f"{service}: {step}")
                    outcomes.append(outcome := await runtime.execute(step))
                    if not outcome.ok:
                        print(f"{service}: {outcome.reason}", file=sys.stderr)
            backoff = backoff.record(outcomes, time.monotonic())
            await asyncio.sleep(1.0)
    return False


def _refuse_untrusted(status: dict[str, Any] | None, supervised: bool, image: str, image_id: str) -> None:
    """A supervisor started with `--trusted-images` would refuse to start an image no trusted
    bundle loaded: say so now, before gateway.yaml is touched, instead of waiting out the
    health deadline and rolling back. A supervisor that is not running counts too: the next
    `up` (the boot unit) runs with the same flag."""
    store = ((status or {}).get("supervisor") or {}).get("trusted_images")
    if not store:
        return
    from gateway.signing import SigningError, trusted_ids  # lazily: cryptography costs memory

    try:
        if image_id in trusted_ids(Path(store)):
            return
    except SigningError as exc:
        raise UpdateError(str(exc)) from exc
    who = f"the supervisor (pid {status['supervisor'].get('pid')})" if supervised and status else \
        "the supervisor (last run)"
    raise UpdateError(
        f"image {image} ({image_id[:19]}) came from no trusted bundle, and {who} runs only trusted images "
        f"(`fieldgate up --trusted-images`, trust store {store}): it would not start it. Load it from a "
        "signed bundle first (`fieldgate images load BUNDLE --trust KEY.pub`); gateway.yaml is unchanged")


def update_image(args: Any) -> int:
    """`fieldgate update DIR SERVICE --image IMAGE` on the docker runtime: health-gated, rolled
    back unless it turns healthy."""
    from gateway.runtime.docker import render_config
    from gateway.runtime.engine import ENGINE_ERRORS, Engine

    refusals: tuple[type[Exception], ...] = (UpdateError, *ENGINE_ERRORS)

    config_dir: Path = args.dir
    service: str = args.collector
    image: str = args.image
    timeout = float(getattr(args, "timeout", None) or UPDATE_TIMEOUT)
    run_dir = RunDir.for_config(config_dir, getattr(args, "state", None))
    try:
        config, errors = load(config_dir)
        if config is None:
            raise UpdateError(errors)
        project = render_config(config, config_dir)
        if service not in project.services:
            names = ", ".join(project.services)
            raise UpdateError(f"no service {service!r} in {config_dir}; there are {names}")
        old_image = project.services[service].limits.image
        status = read_status(run_dir)
        supervised = status is not None and supervisor_alive(status)
        with Engine() as engine:
            new_info = engine.image(image)
            if new_info is None:
                raise UpdateError(f"image {image} is not on this engine: build it or `fieldgate images load`")
            old_info = engine.image(old_image) if old_image else None  # by id: its tag may move
        _refuse_untrusted(status, supervised, image, new_info.id)
        gateway_file = _gateway_file(config_dir)
        original = gateway_file.read_text()
        gateway_file.write_text(set_image(original, service, image))
        how = "via the running supervisor" if supervised else "directly"
        print(f"{service}: {old_image} -> {image} ({how})")
        if supervised:
            ok = _wait_status(run_dir, service, image, timeout)
        else:
            ok = asyncio.run(_update_directly(config_dir, run_dir, service, timeout))
        if ok:
            print(f"{service}: healthy on {image}")
            if not getattr(args, "keep_images", False):
                clean_after_update(image, old_info.id if old_info else None, lambda line: print(f"{service}: {line}"))
            return 0
        print(f"{service}: not healthy on {image} within {timeout:.0f}s; rolling back to {old_image}",
              file=sys.stderr)
        gateway_file.write_text(original)
        if supervised:
            back = _wait_status(run_dir, service, old_image, timeout)
        else:
            back = asyncio.run(_update_directly(config_dir, run_dir, service, timeout))
        print(f"{service}: {'rolled back to' if back else 'rollback did not turn healthy on'} {old_image}",
              file=sys.stderr)
        return 1
    except refusals as exc:
        print(f"fieldgate update: {exc}", file=sys.stderr)
        return 1


def main_update(args: argparse.Namespace) -> int:
    """Image updates apply to the docker runtime; the process runtime runs the installed package."""
    config, errors = load(args.dir)
    if config is None:
        print(errors, file=sys.stderr)
        return 1
    kind = getattr(config, "runtime", "process")
    if kind == "docker":
        return update_image(args)
    print(
        f"fieldgate: {args.dir} uses the process runtime, which runs the installed fieldgate package; "
        "image updates apply to the docker runtime. To update it, upgrade the package "
        "(pip install -U fieldgate) and restart `fieldgate up`.",
        file=sys.stderr,
    )
    return 2


def clean_after_update(image: str, previous_id: str | None, say: Callable[[str], None]) -> list[LocalImage]:
    """Remove the stale images of `image`'s repository from the local engine; returns them.

    A failure is said and ends the cleanup; the update has succeeded anyway."""
    from gateway.retention import stale_images
    from gateway.runtime.engine import Engine

    removed: list[LocalImage] = []
    try:
        with Engine() as engine:
            local = engine.fieldgate_images()
            running = next((i for i in local if image in i.tags), None)
            if running is None:
                return []
            keep = engine.image_ids_in_use() | ({previous_id} if previous_id else set())
            for stale in stale_images(local, running, keep):
                for tag in stale.tags:  # by tag: removing the last one removes the image
                    engine.remove_image(tag)
                removed.append(stale)
                say(f"removed old image {', '.join(stale.tags)} ({stale.id[:19]}, {stale.size / 1e6:.1f} MB)")
    except FieldgateError as exc:
        say(f"old images were not removed: {exc}")
    return removed
