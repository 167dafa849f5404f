"""A plant's fleet of gateways from one repository (docs/fleet.md).

    REPO/fleet.yaml                   optional: stack name, update and health timings
    REPO/models/*.yaml                shared device models (`model:` in a device file, gateway/include.py)
    REPO/gateways/<id>/gateway.yaml   one config directory per gateway, as for `fieldgate up`
    REPO/gateways/<id>/devices/*.yaml

`load_fleet(REPO)` loads every gateway with the gateway's own loader and adds the fleet's
checks (the directory is the gateway id; passwords come from `password_file`, which become
Swarm secrets; host networking); every problem is `file:line:column: message`.
`fieldgate fleet render` turns it into one Swarm stack file (gateway/stack.py).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from collectors.core.config import Duration, StrictModel
from collectors.core.validation import ConfigErrors, in_order, report_validation
from collectors.core.yamlnodes import Problem, Source, load_yaml
from collectors.modbus.config import ModbusDevice
from gateway.config import GATEWAY_FILE, GatewayConfig, device_files, load_config
from gateway.include import resolve_model

FLEET_FILE = "fleet.yaml"
GATEWAYS_DIR = "gateways"
MODELS_DIR = "models"
LABEL = "fieldgate.gateway"  # node label: `docker node update --label-add fieldgate.gateway=line3 NODE`


class FleetUpdate(StrictModel):
    monitor: Duration = Field(30.0, gt=0, description="how long Swarm watches a new task before it calls "
                              "the update done (a task failing within it rolls the update back)")
    delay: Duration = Field(0.0, ge=0, description="pause between two services of the rollout")


class FleetHealth(StrictModel):
    interval: Duration = Field(10.0, gt=0, description="time between two health checks of a task")
    timeout: Duration = Field(5.0, gt=0, description="time one check may take")
    retries: int = Field(3, ge=1, description="failed checks in a row before a task is unhealthy")
    start_period: Duration = Field(30.0, ge=0, description="failures in this time after a start do not count")


class FleetFile(StrictModel):
    """fleet.yaml: what is common to the whole plant's stack."""

    stack: str = Field("fieldgate", pattern=r"^[a-z0-9][a-z0-9_-]*$",
                       description="the Swarm stack name (`docker stack deploy ... STACK`)")
    update: FleetUpdate = Field(default_factory=FleetUpdate, description="rolling updates and rollbacks")
    health: FleetHealth = Field(default_factory=FleetHealth, description="the health check of every service")


@dataclass(frozen=True)
class Gateway:
    id: str
    dir: Path
    config: GatewayConfig


@dataclass(frozen=True)
class Fleet:
    repo: Path
    settings: FleetFile
    gateways: tuple[Gateway, ...]
    warnings: tuple[str, ...] = ()


def is_serial(device: Any) -> bool:
    """A device on a serial port (Modbus RTU): its collector cannot run on the swarm (no devices)."""
    return isinstance(device, ModbusDevice) and device.connection.rtu is not None


def gateway_dirs(repo: Path) -> list[Path]:
    folder = repo / GATEWAYS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _load_settings(repo: Path, env: Mapping[str, str], problems: list[Problem]) -> FleetFile:
    path = repo / FLEET_FILE
    if not path.is_file():
        return FleetFile()
    source = load_yaml(path, env)
    if not source.broken and source.data is not None:
        if not isinstance(source.data, dict):
            source.problem((), "fleet.yaml is a mapping of keys (stack:, update:, health:)")
        else:
            try:
                return FleetFile.model_validate(source.data)
            except ValidationError as exc:
                report_validation(source, exc, FleetFile)
    problems.extend(in_order(source.problems))
    return FleetFile()


def _fleet_checks(gateway_dir: Path, env: Mapping[str, str]) -> list[Problem]:
    """What a gateway directory must also satisfy to run on the swarm (read from the files as
    written, so these are listed even where the gateway's own checks failed)."""
    source = load_yaml(gateway_dir / GATEWAY_FILE, env)
    data = source.data if isinstance(source.data, dict) else {}
    identity = data.get("gateway")
    gateway_id = identity.get("id") if isinstance(identity, dict) else None
    if isinstance(gateway_id, str) and gateway_id != gateway_dir.name:
        source.problem(("gateway", "id"), f"gateway.id: {gateway_id} is not the name of its directory "
                       f"({gateway_dir.name}): in a fleet the directory is the gateway id, and the id is the "
                       f"node label ({LABEL}={gateway_dir.name})")
    mqtt = data.get("mqtt")
    if isinstance(mqtt, dict) and "password" in mqtt:
        source.problem(("mqtt", "password"), "mqtt.password: in a fleet a password is given as "
                       "password_file: PATH (it becomes a Swarm secret), never in a file or the environment",
                       key=True)
    if data.get("network", "host") != "host":
        source.problem(("network",), f"network: {data.get('network')}: fleet services run on the host network "
                       "(Swarm has no bridge with host-gateway; devices are reached directly); write network: host")
    problems = list(source.problems)
    for path in device_files(gateway_dir):
        device_source: Source = resolve_model(load_yaml(path, env), env)
        security = device_source.data.get("security") if isinstance(device_source.data, dict) else None
        if isinstance(security, dict) and "password" in security:
            device_source.problem(("security", "password"), "security.password: in a fleet a password is "
                                  "given as password_file: PATH (a Swarm secret)", key=True)
            problems.extend(p for p in device_source.problems if "in a fleet" in p.message)
    return problems


def load_fleet(repo: Path, env: Mapping[str, str] | None = None) -> Fleet:
    """Load and check a fleet repository; raises ConfigErrors listing every problem of every file."""
    env = os.environ if env is None else env
    problems: list[Problem] = []
    settings = _load_settings(repo, env, problems)
    dirs = gateway_dirs(repo)
    if not dirs:
        problems.append(Problem(repo / GATEWAYS_DIR, None, "no gateways: a fleet repository holds "
                                "gateways/<gateway id>/ (a config directory each)"))
    gateways: list[Gateway] = []
    warnings: list[str] = []
    for gateway_dir in dirs:
        found = _fleet_checks(gateway_dir, env) if (gateway_dir / GATEWAY_FILE).is_file() else []
        try:
            config = load_config(gateway_dir, env)
        except ConfigErrors as exc:
            problems.extend(p for p in exc.problems if str(p) not in {str(f) for f in found})
            problems.extend(found)
            continue
        problems.extend(found)
        warnings.extend(config.warnings)
        if not found:
            gateways.append(Gateway(gateway_dir.name, gateway_dir, config))
    if problems:
        raise ConfigErrors(problems)
    return Fleet(repo, settings, tuple(gateways), tuple(warnings))


def models_used(fleet: Fleet) -> dict[Path, list[str]]:
    """Each model file -> the devices (`gateway/device`) that include it."""
    from gateway.include import model_of

    used: dict[Path, list[str]] = {}
    for gateway in fleet.gateways:
        for entry in gateway.config.devices:
            model = model_of(entry.source)
            if model is not None:
                used.setdefault(Path(os.path.normpath(model)), []).append(f"{gateway.id}/{entry.device.name}")
    return used


def main_fleet(args: argparse.Namespace) -> int:
    verb = args.fleet_verb
    if verb == "validate":
        return main_validate(args)
    module, function = {"render": ("gateway.stack", "main_render"), "deploy": ("gateway.swarm", "main_deploy"),
                        "status": ("gateway.swarm", "main_status")}[verb]
    return int(getattr(importlib.import_module(module), function)(args))


def report(exc: ConfigErrors, repo: Path, outcome: str) -> int:
    """Every problem as file:line:column on stdout, a count and `outcome` on stderr; exit code 1."""
    for problem in exc.problems:
        print(problem)
    count = len(exc.problems)
    print(f"{repo}: {count} error{'s' if count != 1 else ''}; {outcome}", file=sys.stderr)
    return 1


def main_validate(args: argparse.Namespace) -> int:
    """`fieldgate fleet validate REPO`: every error as file:line:column, exit 1; else a summary."""
    try:
        fleet = load_fleet(args.repo)
    except ConfigErrors as exc:
        return report(exc, args.repo, "nothing was changed")
    for warning in fleet.warnings:
        print(warning)
    for gateway in fleet.gateways:
        devices = gateway.config.devices
        serial = [e.device.name for e in devices if is_serial(e.device)]
        note = f"; on serial ports, run by the node's own supervisor: {', '.join(serial)}" if serial else ""
        print(f"{gateway.id}: {len(devices)} devices ({', '.join(e.device.name for e in devices)}), "
              f"{gateway.config.tag_count} tags{note}")
    for model, users in sorted(models_used(fleet).items()):
        print(f"model {model}: {', '.join(users)}")
    print(f"{args.repo}: valid: {len(fleet.gateways)} gateways, stack {fleet.settings.stack}")
    return 0


def swarm_name(text: str) -> str:
    """A gateway id as a Swarm object name part (letters, digits, dashes)."""
    return re.sub(r"[^a-z0-9-]", "-", text.lower())
