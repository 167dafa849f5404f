"""`python -m collectors.forwarder --config FILE`: the forwarder's process entry point.

FILE is the forwarder's rendered slice (ForwarderConfig), JSON (as rendered) or YAML. It is read
fast (`load_slice`: orjson, no positions kept, so a big catalog leaves little RSS behind); an
invalid file is read again with positions and refused whole, one `file:line:column: message`
per problem (as `fieldgate validate` words them), exit code 2, and nothing starts.

On SIGHUP FILE is read again and its catalog (`devices:`) taken in place, as the collectors
take their slices (collectors.core.shell): the supervisor rewrites FILE and signals when only
the catalog changed (gateway/plan.py, Reload). A file that does not load, or that changes
other settings, is refused (ERROR) and the running config kept. A reload that fails half way
ends the process (exit code 3), so the supervisor starts a new one on the new file.

A slice the gateway rendered is built without pydantic (`collectors.core.entry`): this module
imports no config module before `main`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from collectors.core.entry import choose_models_for, load_slice
from collectors.core.errors import ConfigErrors
from collectors.core.service import run_service, setup_logging

if TYPE_CHECKING:
    from collectors.forwarder.app import Forwarder
    from collectors.forwarder.config import ForwarderConfig

log = logging.getLogger("collectors.forwarder")
RELOAD_FAILED = 3  # exit code after a reload that failed half way


def load(path: Path) -> ForwarderConfig:
    """Read and validate the slice; SystemExit(2), like the collectors, after listing every
    problem with its position."""
    from collectors.forwarder.config import ForwarderConfig

    try:
        return load_slice(path, ForwarderConfig)
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collectors.forwarder", description=__doc__)
    parser.add_argument("--config", required=True, type=Path, help="the forwarder's config (YAML or JSON)")
    args = parser.parse_args(argv)
    # A SIGHUP while starting (the supervisor reloads as soon as it sees the process run) must
    # neither end the process (the default action) nor be lost: noted here, taken once serving.
    early: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: early.append(signum))
    config = load(args.config)
    setup_logging(config.log_level, "forwarder")

    from collectors.forwarder.app import Forwarder  # after logging: importing paho is not free

    failed: list[BaseException] = []
    run_service(serve(Forwarder(config), args.config, failed, early))
    return RELOAD_FAILED if failed else 0


async def serve(
    forwarder: Forwarder, path: Path, failed: list[BaseException], early: list[int] | None = None
) -> None:
    """Run the forwarder until cancelled, taking a new catalog from `path` on each SIGHUP (and
    once at the start when `early` noted one); return (the forwarder stopped cleanly) after a
    reload that failed, with the error in `failed`."""
    loop = asyncio.get_running_loop()
    broken = asyncio.Event()

    def hangup() -> None:
        try:
            reload_from(forwarder, path)
        except Exception as exc:
            log.exception("taking the new catalog in place failed; stopping, to be started anew on it")
            failed.append(exc)
            broken.set()

    async with forwarder:
        loop.add_signal_handler(signal.SIGHUP, hangup)
        if early:
            early.clear()
            hangup()
        try:
            await broken.wait()
        finally:
            loop.remove_signal_handler(signal.SIGHUP)


def reload_from(forwarder: Forwarder, path: Path) -> bool:
    """Read the slice at `path` again and hand its catalog to `forwarder`; False (logged at
    ERROR, the running config kept) when the file does not load or changes more than the catalog."""
    from collectors.forwarder.app import ReloadRefused
    from collectors.forwarder.config import ForwarderConfig

    try:
        config = load_slice(path, ForwarderConfig, reload=True)
    except ConfigErrors as exc:
        log.error("new config refused, keeping the running one:\n%s", exc)
        return False
    log.info("forwarder: new config read from %s, applying its catalog in place", path)
    try:
        forwarder.reload(config)
    except ReloadRefused as exc:
        log.error("new config refused, keeping the running one: %s: %s", path, exc)
        return False
    return True


if __name__ == "__main__":
    choose_models_for(sys.argv[1:])
    sys.exit(main())
