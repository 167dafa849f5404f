"""`python -m collectors.forwarder --config FILE`: the forwarder's process entry point.

FILE is the forwarder's rendered slice (ForwarderConfig), JSON (as rendered) or YAML. It is read
fast (`load_slice`: orjson, no positions kept, so a big catalog leaves little RSS behind); an
invalid file is read again with positions and refused whole, one `file:line:column: message`
per problem (as `fieldgate validate` words them), exit code 2, and nothing starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from collectors.core.service import run_service, setup_logging
from collectors.core.validation import ConfigErrors, load_slice
from collectors.forwarder.config import ForwarderConfig


def load(path: Path) -> ForwarderConfig:
    """Read and validate the slice; SystemExit(2), like the collectors, after listing every
    problem with its position."""
    try:
        return load_slice(path, ForwarderConfig)
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collectors.forwarder", description=__doc__)
    parser.add_argument("--config", required=True, type=Path, help="the forwarder's config (YAML or JSON)")
    args = parser.parse_args(argv)
    config = load(args.config)
    setup_logging(config.log_level, "forwarder")

    from collectors.forwarder.app import Forwarder  # after logging: importing paho is not free

    return run_service(Forwarder(config).run())


if __name__ == "__main__":
    sys.exit(main())
