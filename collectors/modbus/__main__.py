"""`python -m collectors.modbus --config FILE`: the Modbus collector (container and process entrypoint).

FILE is the collector's rendered config (ModbusCollectorConfig) as YAML or JSON. An invalid
file is refused whole, one `file:line:column: message` per problem (as `fieldgate validate`
words them), exit code 2, and nothing starts. A slice the gateway rendered is built without
pydantic (`collectors.core.entry`): this module imports no config module before `main`.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from collectors.core.entry import choose_models_for

if TYPE_CHECKING:
    from collectors.modbus.config import ModbusCollectorConfig


def check(config: ModbusCollectorConfig) -> None:
    from collectors.modbus.planner import plan_device

    for device in config.devices:
        plan_device(device)  # a tag no request can read is a config error: say so now


def quiet() -> None:
    # pymodbus logs every timeout at ERROR and every refused connect at WARNING; our
    # ErrorLatch already reports each episode once, so its own lines only help when debugging.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    from collectors.core.shell import collector_main
    from collectors.modbus.collector import ModbusCollector
    from collectors.modbus.config import ModbusCollectorConfig

    return collector_main(argv, prog="python -m collectors.modbus", doc=__doc__, model=ModbusCollectorConfig,
                          log_name="modbus", make=ModbusCollector, check=check, quiet=quiet)


if __name__ == "__main__":
    choose_models_for(sys.argv[1:])
    sys.exit(main())
