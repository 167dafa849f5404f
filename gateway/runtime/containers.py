"""Container creation: one service of the rendered compose model -> Engine API create arguments.

Containers carry the compose labels (project, service, container-number, oneoff) and the
rendered config hash, and are named `<project>-<service>-1` as `docker compose` names them,
so `docker compose ps` on the rendered file and `fieldgate status` see the same containers.
Pure: it builds arguments and calls no Engine (the runtime passes them to `engine_api`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from gateway.compose import Project, health_test_on
from gateway.runtime.engine_api import EngineError

CONTAINER_NUMBER = "1"
CANDIDATE_SUFFIX = "-next"  # a start-first replacement, renamed once it is healthy
# A start-first replacement starts as a standby (collectors.core.shell) with /metrics and
# /healthz on this port; the label says which port that is.
STANDBY_PORT_ENV = "FIELDGATE_STANDBY_PORT"
STANDBY_PORT_LABEL = "io.fieldgate.standby-port"


def parse_seconds(text: str) -> float:
    """Compose durations (`10s`, `1m30s`, `500ms`) -> seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text))


def _nanos(text: str) -> int:
    return int(parse_seconds(text) * 1e9)


def _mount(target: str, source: str, kind: str, read_only: bool) -> dict[str, Any]:
    """One entry of HostConfig.Mounts, as docker-py's `Mount` writes it (Engine API 1.30+)."""
    return {"Target": target, "Source": source, "Type": kind, "ReadOnly": read_only}


def container_name(project: str, service: str) -> str:
    return f"{project}-{service}-{CONTAINER_NUMBER}"


class ContainerFactory:
    """Turns one service of the rendered compose model into Engine API create arguments.

    It reads only the keys `gateway.compose` renders; a key it does not know is an error, so
    the compose file and the containers cannot drift apart silently.
    """

    KNOWN = frozenset({
        "image", "command", "restart", "init", "user", "group_add", "network_mode", "extra_hosts",
        "volumes", "tmpfs", "read_only", "cap_drop", "security_opt", "devices", "device_cgroup_rules",
        "cpus", "mem_limit", "memswap_limit", "pids_limit", "environment", "healthcheck",
        "stop_grace_period", "logging", "depends_on", "labels", "ports", "runtime",
    })

    def __init__(self, api: Any, project: Project, base_dir: Path) -> None:
        self.api = api
        self.project = project
        self.base_dir = base_dir  # where ./config/... bind sources are relative to

    def network_name(self) -> str:
        return f"{self.project.name}_default"

    def volume_name(self, volume: str) -> str:
        return f"{self.project.name}_{volume}"

    def _value(self, value: str) -> str:
        """`${NAME}` (a secret the compose file only names) -> its value from the config or environment."""
        match = re.fullmatch(r"\$\{(\w+)\}", value)
        if match is None:
            return value
        name = match.group(1)
        return self.project.secrets.get(name) or os.environ.get(name, "")

    def create_args(
        self, service: str, name: str, *, image: str | None = None, standby_port: int | None = None
    ) -> dict[str, Any]:
        """With `standby_port`, the container starts as a standby beside the running one: the
        collector serves /metrics and /healthz on that port (0: none), and its health check asks
        there, so its health is its own and not the running one's."""
        svc = self.project.services[service].compose
        unknown = set(svc) - self.KNOWN
        if unknown:
            raise EngineError(f"service {service}: the docker runtime does not know {sorted(unknown)}")
        mounts = []
        for vol in svc.get("volumes", []):
            if vol["type"] == "bind":
                source = Path(vol["source"])
                if not source.is_absolute():
                    source = (self.base_dir / source).resolve()
                mounts.append(_mount(vol["target"], str(source), "bind", bool(vol.get("read_only"))))
            else:
                mounts.append(_mount(vol["target"], self.volume_name(vol["source"]), "volume",
                                     bool(vol.get("read_only"))))
        tmpfs = dict(item.split(":", 1) if ":" in item else (item, "") for item in svc.get("tmpfs", []))
        extra_hosts = dict(item.split(":", 1) for item in svc.get("extra_hosts", []))
        logging = svc.get("logging") or {}
        host_config = self.api.create_host_config(
            restart_policy={"Name": svc.get("restart", "no")},
            init=svc.get("init"),
            group_add=svc.get("group_add"),
            network_mode=svc.get("network_mode") or self.network_name(),
            extra_hosts=extra_hosts or None,
            mounts=mounts,
            tmpfs=tmpfs or None,
            read_only=svc.get("read_only"),
            cap_drop=svc.get("cap_drop"),
            security_opt=svc.get("security_opt"),
            devices=svc.get("devices"),
            device_cgroup_rules=svc.get("device_cgroup_rules"),
            nano_cpus=int(float(svc["cpus"]) * 1e9) if "cpus" in svc else None,
            mem_limit=svc.get("mem_limit"),
            memswap_limit=svc.get("memswap_limit"),
            pids_limit=svc.get("pids_limit"),
            log_config={"type": logging.get("driver", "json-file"), "config": logging.get("options") or {}},
            runtime=svc.get("runtime"),  # None: the Engine's default runtime
        )
        health = svc.get("healthcheck") or {}
        if health.get("disable"):
            healthcheck: dict[str, Any] | None = {"test": ["NONE"]}
        elif health:
            healthcheck = {
                "test": health["test"], "interval": _nanos(health.get("interval", "30s")),
                "timeout": _nanos(health.get("timeout", "30s")), "retries": int(health.get("retries", 3)),
                "start_period": _nanos(health.get("start_period", "0s")),
            }
        else:
            healthcheck = None
        environment = {key: self._value(value) for key, value in (svc.get("environment") or {}).items()}
        labels = dict(svc.get("labels") or {})
        if standby_port is not None:
            environment[STANDBY_PORT_ENV] = str(standby_port)
            labels[STANDBY_PORT_LABEL] = str(standby_port)
            if healthcheck is not None and healthcheck["test"] != ["NONE"] and standby_port:
                healthcheck["test"] = health_test_on(self.project.services[service], standby_port)
        labels.update({
            "com.docker.compose.container-number": CONTAINER_NUMBER,
            "com.docker.compose.oneoff": "False",
            "com.docker.compose.project.working_dir": str(self.base_dir),
            "com.docker.compose.project.config_files": str(self.base_dir / "docker-compose.yml"),
        })
        return {
            "image": image or svc["image"],
            "command": svc.get("command"),
            "name": name,
            "user": svc.get("user"),
            "environment": environment,
            "labels": labels,
            "healthcheck": healthcheck,
            "stop_timeout": int(parse_seconds(svc.get("stop_grace_period", "10s"))),
            "host_config": host_config,
        }
