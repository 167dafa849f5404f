"""`python -m collectors.modbus --config FILE`: the Modbus collector (container and process entrypoint).

FILE is the collector's rendered config (ModbusCollectorConfig) as YAML or JSON. An invalid
file is refused whole, one `file:line:column: message` per problem (as `fieldgate validate`
words them), exit code 2, and nothing starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from collectors.core.errors import ConfigError
from collectors.core.service import run_service, setup_logging
from collectors.core.validation import ConfigErrors, load_slice
from collectors.modbus.collector import serve
from collectors.modbus.config import ModbusCollectorConfig
from collectors.modbus.planner import plan_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collectors.modbus", description=__doc__)
    parser.add_argument("--config", type=Path, required=True,
                        help="the collector's rendered config (YAML or JSON)")
    args = parser.parse_args(argv)
    try:
        config = load_slice(args.config, ModbusCollectorConfig)
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        for device in config.devices:
            plan_device(device)  # a tag no request can read is a config error: say so now
    except ConfigError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, "modbus")
    # pymodbus logs every timeout at ERROR and every refused connect at WARNING; our
    # ErrorLatch already reports each episode once, so its own lines only help when debugging.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    return run_service(serve(config))


if __name__ == "__main__":
    sys.exit(main())
