"""`fieldgate fleet deploy REPO` and `fieldgate fleet status REPO` (docs/fleet.md).

deploy renders the stack (gateway/stack.py) and hands it to `docker stack deploy`, the
engine's own tool: Swarm then owns the rollout (parallelism 1, health-gated, rolled back when
a new task does not turn healthy). status reads the swarm through the Engine API: per gateway,
per service: node, replicas running/desired, image, health, update state and readings/s
(where the task runs on this engine, whose loopback its metrics listen on).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collectors.core.errors import FieldgateError
from collectors.core.validation import ConfigErrors
from gateway.fleet import LABEL, Fleet, load_fleet, swarm_name
from gateway.runtime.process import READINGS_COUNTERS, parse_metrics
from gateway.stack import LOCAL_DIR, STACK_FILE, StackBuilder, render_fleet, write_files

STACK_NAMESPACE = "com.docker.stack.namespace"
# Swarm's UpdateStatus.State, as a plant engineer reads it
UPDATE_STATES = {
    "updating": "updating", "paused": "update paused", "completed": "updated",
    "rollback_started": "rolling back", "rollback_paused": "rollback paused",
    "rollback_completed": "rolled back",
}


class SwarmError(FieldgateError):
    """The engine is not a swarm manager, or the stack could not be deployed."""


def _client() -> Any:
    import docker

    try:
        client = docker.from_env(timeout=30)
        info = client.info()
    except docker.errors.DockerException as exc:
        raise SwarmError(f"no Docker engine answers ({exc})") from exc
    swarm = info.get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
        raise SwarmError("this engine is not a swarm manager: run `docker swarm init` on the plant's manager "
                         "(docs/fleet.md), or run this there")
    return client


def default_out(repo: Path) -> Path:
    return repo / ".fieldgate" / "stack"


def placement(client: Any) -> dict[str, list[str]]:
    """Gateway id -> the hostnames of the nodes that carry its label."""
    nodes: dict[str, list[str]] = {}
    for node in client.nodes.list():
        label = (node.attrs["Spec"].get("Labels") or {}).get(LABEL)
        if label:
            nodes.setdefault(label, []).append(node.attrs["Description"]["Hostname"])
    return nodes


def deploy(fleet: Fleet, out: Path) -> tuple[StackBuilder, str]:
    """Render into OUT and run `docker stack deploy --prune`; returns the builder and the tool's output."""
    builder = render_fleet(fleet, out)
    write_files(builder.files, out)
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        raise SwarmError("the docker CLI is not installed: `docker stack deploy` is what deploys a stack")
    result = subprocess.run(
        [docker_cli, "stack", "deploy", "--prune", "-c", STACK_FILE, fleet.settings.stack],
        cwd=out, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise SwarmError(f"docker stack deploy failed: {result.stderr.strip() or result.stdout.strip()}")
    return builder, result.stdout + result.stderr


def prune_configs(client: Any, stack: str, keep: set[str]) -> list[str]:
    """Remove this stack's configs and secrets no service names any more (older hashes). One still
    held by a task of a rollout in progress is refused by the engine and left for the next deploy."""
    import docker

    removed = []
    for collection in (client.configs, client.secrets):
        for item in collection.list(filters={"label": f"{STACK_NAMESPACE}={stack}"}):
            name = item.name
            if name not in keep:
                with contextlib.suppress(docker.errors.APIError):
                    item.remove()
                    removed.append(name)
    return removed


def main_deploy(args: argparse.Namespace) -> int:
    out = args.out or default_out(args.repo)
    try:
        fleet = load_fleet(args.repo)
        client = _client()
        builder, output = deploy(fleet, out)
        pruned = prune_configs(client, fleet.settings.stack, set(builder.configs) | set(builder.secrets))
        nodes = placement(client)
    except ConfigErrors as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{args.repo}: {len(exc.problems)} errors; nothing deployed", file=sys.stderr)
        return 1
    except FieldgateError as exc:
        print(f"fieldgate fleet deploy: {exc}", file=sys.stderr)
        return 1
    for line in output.splitlines():
        if line.startswith(("Creating", "Updating", "Removing")):
            print(line)
    for name in pruned:
        print(f"Removing unused {name}")
    print(f"deployed stack {fleet.settings.stack}: {len(builder.services)} services from {out / STACK_FILE}; "
          "Swarm rolls out what changed, one service at a time (`fieldgate fleet status` shows it)")
    for gateway in fleet.gateways:
        if gateway.id not in nodes:
            print(f"{gateway.id}: unplaced: no node carries the label {LABEL}={gateway.id} "
                  f"(docker node update --label-add {LABEL}={gateway.id} NODE)")
    for gateway_id, devices in builder.local.items():
        print(f"{gateway_id}: serial devices {', '.join(devices)} are not on the swarm: on its node run "
              f"`fieldgate up {out / LOCAL_DIR / swarm_name(gateway_id)} --runtime docker`")
    return 0


@dataclass
class Row:
    gateway: str
    service: str
    node: str = "-"
    replicas: str = "-"
    image: str = "-"
    health: str = "-"
    update: str = "-"
    readings: str = "-"
    port: int | None = None
    container: Any = None

    def cells(self) -> list[str]:
        return [self.gateway, self.service, self.node, self.replicas, self.image, self.health, self.update,
                self.readings]


HEADER = ["GATEWAY", "SERVICE", "NODE", "REPLICAS", "IMAGE", "HEALTH", "UPDATE", "READINGS/S"]


def _readings(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            totals = parse_metrics(answer.read().decode("utf-8", "replace"))
    except OSError:
        return None
    return next((totals[name] for name in READINGS_COUNTERS if name in totals), None)


def status_rows(fleet: Fleet, client: Any) -> list[Row]:
    builder = render_fleet(fleet, default_out(fleet.repo))
    stack = fleet.settings.stack
    nodes = placement(client)
    hostnames = {n.id: n.attrs["Description"]["Hostname"] for n in client.nodes.list()}
    found = {s.name: s for s in client.services.list(filters={"label": f"{STACK_NAMESPACE}={stack}"})}
    rows: list[Row] = []
    for gateway in fleet.gateways:
        names = [n for n, s in builder.services.items() if s["labels"]["io.fieldgate.gateway"] == gateway.id]
        if gateway.id not in nodes:
            rows.append(Row(gateway.id, "*", node=f"unplaced (no node labelled {LABEL}={gateway.id})"))
        for name in names:
            row = Row(gateway.id, name.removeprefix(f"{swarm_name(gateway.id)}-"))
            rows.append(row)
            service = found.get(f"{stack}_{name}")
            if service is None:
                row.update = "not deployed"
                continue
            spec = service.attrs["Spec"]
            row.image = spec["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]
            desired = spec.get("Mode", {}).get("Replicated", {}).get("Replicas", 1)
            tasks = service.tasks(filters={"desired-state": "running"})
            running = [t for t in tasks if t["Status"]["State"] == "running"]
            row.replicas = f"{len(running)}/{desired}"
            live = running or tasks
            if live:
                row.node = hostnames.get(live[0].get("NodeID", ""), "-")
                if not running:
                    row.health = live[0]["Status"]["State"]  # pending, starting, preparing, ...
            elif gateway.id not in nodes:
                row.node = "unplaced"
            state = (service.attrs.get("UpdateStatus") or {}).get("State")
            row.update = UPDATE_STATES.get(state, state) if state else "-"
            for task in running:
                container_id = task["Status"].get("ContainerStatus", {}).get("ContainerID")
                with contextlib.suppress(Exception):
                    container = client.containers.get(container_id)
                    health = container.attrs["State"].get("Health", {}).get("Status")
                    row.health = health or "running"
                    row.container = container
                    env = dict(e.split("=", 1) for e in spec["TaskTemplate"]["ContainerSpec"].get("Env", []))
                    row.port = int(env["FIELDGATE_METRICS_PORT"])
        for device in builder.local.get(gateway.id, []):
            rows.append(Row(gateway.id, f"{device} (serial)", node="local supervisor",
                            update=f"fieldgate up {LOCAL_DIR}/{swarm_name(gateway.id)}"))
    first = {id(r): _readings(r.port) for r in rows if r.port is not None}
    if first:
        time.sleep(1.0)
        for row in rows:
            if row.port is not None and (before := first.get(id(row))) is not None:
                after = _readings(row.port)
                if after is not None and after >= before:
                    row.readings = f"{after - before:.1f}"
    return rows


def format_rows(rows: list[Row]) -> str:
    table = [HEADER, *(r.cells() for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in table)


def main_status(args: argparse.Namespace) -> int:
    try:
        fleet = load_fleet(args.repo)
        client = _client()
        rows = status_rows(fleet, client)
    except ConfigErrors as exc:
        for problem in exc.problems:
            print(problem)
        return 1
    except FieldgateError as exc:
        print(f"fieldgate fleet status: {exc}", file=sys.stderr)
        return 1
    print(format_rows(rows))
    return 0
