"""`python -m collectors.forwarder --config FILE`: the forwarder's process entry point.

FILE is the forwarder's rendered slice (ForwarderConfig), YAML or JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from collectors.core.service import run_service, setup_logging
from collectors.forwarder.config import ForwarderConfig


def load(path: Path) -> ForwarderConfig:
    """Read and validate the slice; errors name the file and the key."""
    try:
        data = yaml.safe_load(path.read_text())  # JSON is YAML too
    except OSError as exc:
        raise SystemExit(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise SystemExit(f"{where}: not valid YAML/JSON: {getattr(exc, 'problem', exc)}") from exc
    try:
        return ForwarderConfig.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"{path}: {'.'.join(str(p) for p in error['loc']) or '(top)'}: {error['msg']}"
            for error in exc.errors()
        ]
        raise SystemExit("\n".join(lines)) from exc


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
