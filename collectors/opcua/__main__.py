"""`python -m collectors.opcua --config FILE`: the OPC UA collector (container and process entrypoint).

FILE is the collector's rendered config (OpcuaCollectorConfig) as YAML or JSON. An invalid file
is refused whole, one `file:line:column: message` per problem (as `fieldgate validate` words
them), exit code 2, and nothing starts. A slice the gateway rendered is built without pydantic
(`collectors.core.entry`): this module imports no config module before `main`.
"""

from __future__ import annotations

import logging
import sys

from collectors.core.entry import choose_models_for

log = logging.getLogger("collectors.opcua")


def quiet() -> None:
    # asyncua logs every publish and reconnect attempt at INFO: keep it to warnings.
    logging.getLogger("asyncua").setLevel(max(logging.WARNING, logging.getLogger().level))


def main(argv: list[str] | None = None) -> int:
    from collectors.core.shell import collector_main
    from collectors.opcua.collector import OpcuaCollector
    from collectors.opcua.config import OpcuaCollectorConfig

    return collector_main(argv, prog="python -m collectors.opcua", doc=__doc__, model=OpcuaCollectorConfig,
                          log_name="opcua", make=OpcuaCollector, quiet=quiet)


if __name__ == "__main__":
    choose_models_for(sys.argv[1:])
    sys.exit(main())
