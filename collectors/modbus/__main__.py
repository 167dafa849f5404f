"""`python -m collectors.modbus --config FILE`: the Modbus collector (container and process entrypoint).

FILE is the collector's rendered config (ModbusCollectorConfig) as YAML or JSON.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from collectors.core.errors import ConfigError
from collectors.core.service import run_service, setup_logging
from collectors.modbus.collector import serve
from collectors.modbus.config import load_collector_config
from collectors.modbus.planner import plan_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collectors.modbus", description=__doc__)
    parser.add_argument("--config", type=Path, required=True,
                        help="the collector's rendered config (YAML or JSON)")
    args = parser.parse_args(argv)
    try:
        config = load_collector_config(args.config)
        for device in config.devices:
            plan_device(device)  # a tag no request can read is a config error: say so now
    except (OSError, ValidationError, ValueError, yaml.YAMLError, ConfigError) as exc:
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
