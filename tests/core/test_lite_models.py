"""The lite config models (collectors.core.lite) build what pydantic builds, from every slice
the gateway renders for the configs the project ships: values, types, enums, nested models,
defaults, secrets, and what the transforming validators make of the data (durations written as
text, `password_env`). The lite objects are built in a child process (a process builds its
config models one way only: collectors.core.modelbase), which must not import pydantic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from collectors.core.config import dump_slice, read_slice
from collectors.forwarder.config import ForwarderConfig
from collectors.modbus.config import ModbusCollectorConfig
from collectors.opcua.config import OpcuaCollectorConfig
from gateway.config import ConfigErrors, load_config
from gateway.services import SLICE_HEADER, Placement, service_slices, slice_text
from tests.support.model_values import ROOT, lite_values, model_values

pytestmark = pytest.mark.unit

MODELS: dict[str, type[Any]] = {
    "forwarder": ForwarderConfig, "modbus": ModbusCollectorConfig, "opcua": OpcuaCollectorConfig,
}
# The passwords the every-key plant reads from ${VAR}: its slices carry password_env, and both
# processes fill `password` from the environment.
ENV = {"MQTT_PASSWORD": "mqtt-s3cret", "OPC_PASSWORD": "opc-s3cret", "MQTT_HOST": "127.0.0.1"}
CASES = ROOT / "tests" / "gateway" / "cases"


def config_dirs() -> list[Path]:
    """The demo plant, the examples, the every-key plant, the fleet's gateways, and each golden
    case of tests/gateway/cases that loads (the others are refused before any slice exists)."""
    fleet = ROOT / "examples" / "fleet" / "gateways"
    return [ROOT / "gateway" / "demo_plant", ROOT / "examples" / "plant", Path(__file__).parent / "every_key_plant",
            *sorted(fleet.iterdir()), *sorted(p / "config" for p in CASES.iterdir() if (p / "config").is_dir())]


# Whole numbers where the models hold floats, durations and sizes as numbers, nulls: what an
# older gateway (or a careful hand) may have written, which both must read the same.
TERSE = {
    "modbus": {"name": "modbus", "metrics_port": None, "devices": [{
        "name": "p", "protocol": "modbus", "connection": {"tcp": {"host": "plc.local"}}, "poll": 2, "timeout": 0.5,
        "tags": [{"name": "t", "table": "holding", "address": 0, "type": "uint16", "scale": 2, "offset": 1,
                  "deadband": 0, "max_silence": 30, "simulate": {"min": 0, "max": 10, "value": 3, "period": 5}}]}]},
    "forwarder": {"gateway": {"id": "g"}, "buffer": {"max_bytes": "1MiB"}, "metrics": {"port": None},
                  "mqtt": {"keepalive": 20, "tls": {"ca_file": "/etc/ca.pem"}}},
    "opcua": {"name": "opcua", "handoff": {"linger": 0, "queue_max_bytes": 2097152}, "devices": [{
        "name": "o", "protocol": "opcua", "endpoint": "opc.tcp://h:4840", "security": {},
        "tags": [{"name": "t", "node": "ns=2;i=1", "deadband": 1, "write_min": 0, "writable": True}]}]},
}


def render(tmp_path: Path) -> list[Path]:
    """Every slice of every config, as the supervisor writes it (and as `fieldgate fleet render`
    writes it: only what differs from the defaults)."""
    files = []
    placement = Placement(Path("/run/fieldgate/handoff.sock"), Path("/var/lib/fieldgate/state"),
                          Path("/var/lib/fieldgate/buffer"))
    for number, config_dir in enumerate(config_dirs()):
        try:
            config = load_config(config_dir, env=ENV)
        except ConfigErrors:
            continue
        for name, model in service_slices(config, placement).items():
            rendered = tmp_path / f"{name}-{number}-{config_dir.parent.name}-{config_dir.name}.json"
            rendered.write_text(slice_text(model))
            sparse = rendered.with_suffix(".sparse.json")
            sparse.write_text(dump_slice(model.model_dump(mode="json", exclude_none=True, exclude_defaults=True),
                                         f"{SLICE_HEADER} (sparse)"))
            files += [rendered, sparse]
    for name, data in TERSE.items():
        terse = tmp_path / f"{name}-terse.json"
        terse.write_text(dump_slice(data, SLICE_HEADER))
        files.append(terse)
    return files


def model_of(path: Path) -> type[Any]:
    return MODELS[path.name.split("-")[0]]


def test_lite_models_build_what_pydantic_builds_from_every_rendered_slice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    files = render(tmp_path)
    kinds = {model_of(path) for path in files}
    assert kinds == set(MODELS.values()) and len(files) >= 30  # every component, many configs
    lite = lite_values(files, ENV)
    for path in files:
        full = model_values(model_of(path).model_validate(read_slice(path)))
        assert lite[str(path)] == full, path.name
    # the transforming validators ran: a password from the environment, durations from text
    every_key = next(p for p in files if p.name.startswith("forwarder-") and p.name.endswith("every_key_plant.json"))
    mqtt = lite[str(every_key)]["fields"]["mqtt"]["fields"]
    assert mqtt["password"] == {"secret": "mqtt-s3cret"} and mqtt["keepalive"] == {"float": 60.0}
