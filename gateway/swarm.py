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
import json
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
from gateway.compose import _dump
from gateway.fleet import LABEL, Fleet, load_fleet, report, swarm_name
from gateway.runtime.metrics import READINGS_COUNTERS, parse_metrics
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


TERMINAL = {"completed", "paused", "rollback_completed", "rollback_paused"}


def _stack_deploy(out: Path, file: str, stack: str) -> str:
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        raise SwarmError("the docker CLI is not installed: `docker stack deploy` is what deploys a stack")
    result = subprocess.run([docker_cli, "stack", "deploy", "-c", file, stack],
                            cwd=out, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise SwarmError(f"docker stack deploy failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout + result.stderr


def _service(client: Any, name: str) -> Any:
    import docker

    try:
        return client.services.get(name)
    except docker.errors.NotFound:
        return None


def _template(service: Any) -> str:
    """What a rollout replaces tasks for (`docker stack deploy` updates every service it names, so the
    spec's version moves even when nothing changed)."""
    return json.dumps(service.attrs["Spec"]["TaskTemplate"], sort_keys=True)


def _wait(client: Any, names: dict[str, tuple[str | None, str | None]], timeout: float) -> dict[str, str]:
    """Each changed service -> how its rollout ended: `updated`, `rolled back: why`, `running` (new), or
    `timed out`. `names` holds each one's spec version and update start before the deploy."""
    deadline = time.monotonic() + timeout
    ended: dict[str, str] = {}
    while len(ended) < len(names) and time.monotonic() < deadline:
        for name, (_, started_before) in names.items():
            if name in ended or (service := _service(client, name)) is None:
                continue
            update = service.attrs.get("UpdateStatus") or {}
            if names[name][0] is None:  # a new service: done when its task runs
                if any(t["Status"]["State"] == "running" for t in service.tasks(filters={"desired-state": "running"})):
                    ended[name] = "running"
            elif update.get("StartedAt") != started_before and update.get("State") in TERMINAL:
                state = update["State"]
                ended[name] = "updated" if state == "completed" else \
                    f"{UPDATE_STATES[state]}: {update.get('Message', '')}".rstrip(": ")
        if len(ended) < len(names):
            time.sleep(1)
    return {name: ended.get(name, "timed out") for name in names}


def deploy(fleet: Fleet, out: Path, client: Any, only: set[str] | None = None, timeout: float = 600.0,
           say: Any = print) -> tuple[StackBuilder, bool]:
    """Render into OUT and deploy gateway by gateway: each gateway's changed services are handed to
    `docker stack deploy` (a partial stack: the other gateways are left alone) and waited for until
    Swarm calls their rollout done; a rollback stops the rollout there, leaving the gateways after it
    unchanged. Without `only`, a last deploy of the whole stack with --prune removes services no
    longer rendered. Returns the builder and whether every rollout ended well."""
    builder = render_fleet(fleet, out)
    write_files(builder.files, out)
    stack = fleet.settings.stack
    nodes = placement(client)
    ids = [g.id for g in fleet.gateways if only is None or g.id in only]
    for index, gateway_id in enumerate(ids):
        services = [f"{stack}_{name}" for name in builder.services_of(gateway_id)]
        if not services:
            continue
        before: dict[str, tuple[str | None, str | None]] = {}
        for name in services:
            service = _service(client, name)
            before[name] = (None, None) if service is None else (
                _template(service), (service.attrs.get("UpdateStatus") or {}).get("StartedAt"))
        partial = f".stack-{swarm_name(gateway_id)}.yml"
        (out / partial).write_text(_dump(builder.model({gateway_id})), encoding="utf-8")
        try:
            output = _stack_deploy(out, partial, stack)
        finally:
            (out / partial).unlink()
        for line in output.splitlines():
            if line.startswith("Creating service"):  # `docker stack deploy` says Updating for every other one
                say(f"{gateway_id}: {line}")
        changed = {}
        for name, (version, started) in before.items():
            service = _service(client, name)
            if service is not None and (version is None or _template(service) != version):
                changed[name] = (version, started)
        if not changed:
            say(f"{gateway_id}: unchanged")
            continue
        if gateway_id not in nodes:
            say(f"{gateway_id}: unplaced: no node carries the label {LABEL}={gateway_id} "
                f"(docker node update --label-add {LABEL}={gateway_id} NODE); its services wait for one")
            continue
        results = _wait(client, changed, timeout)
        for name, result in results.items():
            say(f"{gateway_id}: {name.removeprefix(f'{stack}_{swarm_name(gateway_id)}-')}: {result}")
        if any(r not in ("updated", "running") for r in results.values()):
            rest = ids[index + 1:]
            say(f"rollout stopped at {gateway_id}" + (f"; not updated: {', '.join(rest)}" if rest else ""))
            return builder, False
    if only is None:  # services no longer rendered (a gateway or protocol removed from the repository)
        # (not a last `docker stack deploy --prune`: updating every service again would clear the
        # update state `fleet status` shows)
        for service in client.services.list(filters={"label": f"{STACK_NAMESPACE}={stack}"}):
            if service.name.removeprefix(f"{stack}_") not in builder.services:
                say(f"Removing service {service.name}")
                service.remove()
    return builder, True


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
        builder, ok = deploy(fleet, out, client, set(args.gateway) if args.gateway else None, args.timeout)
        pruned = prune_configs(client, fleet.settings.stack, set(builder.configs) | set(builder.secrets))
    except ConfigErrors as exc:
        return report(exc, args.repo, "nothing deployed")
    except FieldgateError as exc:
        print(f"fieldgate fleet deploy: {exc}", file=sys.stderr)
        return 1
    for name in pruned:
        print(f"Removing unused {name}")
    print(f"stack {fleet.settings.stack}: {len(builder.services)} services from {out / STACK_FILE}"
          + ("" if ok else "; the rollout stopped: see above"))
    for gateway_id, devices in builder.local.items():
        print(f"{gateway_id}: serial devices {', '.join(devices)} are not on the swarm: on its node run "
              f"`fieldgate up {out / LOCAL_DIR / swarm_name(gateway_id)} --runtime docker`")
    return 0 if ok else 1


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
        return report(exc, args.repo, "no status")
    except FieldgateError as exc:
        print(f"fieldgate fleet status: {exc}", file=sys.stderr)
        return 1
    print(format_rows(rows))
    return 0
