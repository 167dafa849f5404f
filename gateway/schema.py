"""JSON Schema (draft 2020-12) of gateway.yaml and the device files, from the same pydantic models
that validate them, for editors (yaml-language-server) and for docs/config.md.

`fieldgate schema` prints one document whose root accepts either file; `fieldgate schema
--write DIR` also writes gateway.schema.json and device.schema.json, which an editor picks
up from a first-line comment:

    # yaml-language-server: $schema=../schema/device.schema.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

DRAFT = "https://json-schema.org/draft/2020-12/schema"
REF = "#/$defs/{model}"


def _defs() -> dict[str, Any]:
    from gateway.config import GatewayFile, ModbusDevice, OpcuaDevice

    _, top = models_json_schema(
        [(GatewayFile, "validation"), (ModbusDevice, "validation"), (OpcuaDevice, "validation")],
        ref_template=REF,
    )
    defs: dict[str, Any] = dict(top["$defs"])
    defs["device"] = {
        "title": "fieldgate device file",
        "description": "One device per file in devices/, chosen by its protocol key.",
        "oneOf": [{"$ref": REF.format(model="ModbusDevice")}, {"$ref": REF.format(model="OpcuaDevice")}],
    }
    return defs


def combined() -> dict[str, Any]:
    """One document: $defs for every model, and a root that accepts gateway.yaml or a device file."""
    return {
        "$schema": DRAFT,
        "$id": "https://fieldgate.invalid/schema/fieldgate.schema.json",
        "title": "fieldgate config (gateway.yaml or a device file)",
        "$defs": _defs(),
        "anyOf": [{"$ref": REF.format(model="GatewayFile")}, {"$ref": "#/$defs/device"}],
    }


def gateway_schema() -> dict[str, Any]:
    return {"$schema": DRAFT, "title": "fieldgate gateway.yaml", "$defs": _defs(),
            "$ref": REF.format(model="GatewayFile")}


def device_schema() -> dict[str, Any]:
    return {"$schema": DRAFT, "title": "fieldgate device file", "$defs": _defs(), "$ref": "#/$defs/device"}


def write(out: Path) -> list[Path]:
    """Write the three schema files into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in (
        ("fieldgate.schema.json", combined()),
        ("gateway.schema.json", gateway_schema()),
        ("device.schema.json", device_schema()),
    ):
        path = out / name
        path.write_text(json.dumps(document, indent=2) + "\n")
        written.append(path)
    return written
