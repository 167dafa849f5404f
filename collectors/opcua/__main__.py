"""`python -m collectors.opcua --config FILE`: the OPC UA collector (container and process entrypoint)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from collectors.core.service import run_service, setup_logging
from collectors.opcua.collector import serve
from collectors.opcua.config import load_collector_config

log = logging.getLogger("collectors.opcua")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collectors.opcua", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="the collector's rendered config (YAML)")
    args = parser.parse_args(argv)
    try:
        config = load_collector_config(args.config)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(top)"
            print(f"{args.config}: {where}: {error['msg']}", file=sys.stderr)
        return 2
    except (OSError, yaml.YAMLError) as exc:  # unreadable, or not YAML
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, "opcua")
    # asyncua logs every publish and reconnect attempt at INFO: keep it to warnings.
    logging.getLogger("asyncua").setLevel(max(logging.WARNING, logging.getLogger().level))
    return run_service(serve(config))


if __name__ == "__main__":
    sys.exit(main())
