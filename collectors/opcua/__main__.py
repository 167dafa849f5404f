"""`python -m collectors.opcua --config FILE`: the OPC UA collector (container and process entrypoint).

FILE is the collector's rendered config (OpcuaCollectorConfig) as YAML or JSON. An invalid file
is refused whole, one `file:line:column: message` per problem (as `fieldgate validate` words
them), exit code 2, and nothing starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from collectors.core.service import run_service, setup_logging
from collectors.core.validation import ConfigErrors, load_slice
from collectors.opcua.collector import serve
from collectors.opcua.config import OpcuaCollectorConfig

log = logging.getLogger("collectors.opcua")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collectors.opcua", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="the collector's rendered config (YAML)")
    args = parser.parse_args(argv)
    try:
        config = load_slice(args.config, OpcuaCollectorConfig)
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging(config.log_level, "opcua")
    # asyncua logs every publish and reconnect attempt at INFO: keep it to warnings.
    logging.getLogger("asyncua").setLevel(max(logging.WARNING, logging.getLogger().level))
    return run_service(serve(config))


if __name__ == "__main__":
    sys.exit(main())
