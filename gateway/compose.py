"""`fieldgate render DIR -o OUT`: the compose project a plant engineer can read and run by hand.

OUT gets `docker-compose.yml` (compose-spec) and `config/<service>.yaml`, the slice each
container runs on. The docker runtime renders the same `Project` and keeps the containers
equal to it, so `docker compose up` on a machine with the compose plugin and `fieldgate up
--runtime docker` run the same stack.

Every service is locked down the same way: read-only root with a small tmpfs, all
capabilities dropped, no-new-privileges, a non-root user, CPU/memory/pid limits, bounded
logs, a health check on the component's /healthz, and only the serial ports its devices
name. A serial port is passed as a device (preferring its stable /dev/serial/by-id name);
a pty (simulators, socat) cannot be, so it becomes a bind mount plus a device cgroup rule.
Same input, same bytes: nothing time- or machine-dependent beyond the devices is written.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import stat
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from collectors.core.errors import FieldgateError
from collectors.core.metrics import reach
from gateway.services import Placement, metrics_port, secret_names, service_slices, slice_text

if TYPE_CHECKING:
    # Only for rendering: the docker runtime imports this module for `Project`, and its
    # supervisor keeps no pydantic nor PyYAML (the config is rendered in a child).
    from pydantic import BaseModel

COMPOSE_FILE = "docker-compose.yml"
CONFIG_IN_CONTAINER = "/etc/fieldgate/config.yaml"
# The directory of the slice is bind-mounted, not the file: a slice replaced by rename (never
# half written) is seen by the running container, which reads it again on SIGHUP (a reload in
# place); a bind mount of the file itself would keep showing the old inode.
CONFIG_DIR_IN_CONTAINER = "/etc/fieldgate"
HANDOFF_DIR = "/run/fieldgate"
HANDOFF_SOCKET = f"{HANDOFF_DIR}/handoff.sock"
STATE_DIR = "/var/lib/fieldgate/state"
BUFFER_DIR = "/var/lib/fieldgate/buffer"
USER = "10001:10001"  # the `fieldgate` user of every image (compose/*.Dockerfile)
HASH_LABEL = "io.fieldgate.config-hash"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
BY_ID = Path("/dev/serial/by-id")
# Unix98 pty slaves (/dev/pts/N) have majors 136-143 (Linux devices.txt).
PTY_MAJORS = range(136, 144)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
HOST_GATEWAY = "host.docker.internal"
# Where the containers find the hand-off, their state and the buffer (volumes; docs/docker.md).
CONTAINER_PLACEMENT = Placement(Path(HANDOFF_SOCKET), Path(STATE_DIR), Path(BUFFER_DIR))

Network = Literal["host", "bridge"]


class RenderError(FieldgateError):
    """The config cannot be turned into a compose project."""


@dataclass(frozen=True)
class Passthrough:
    """How one serial port reaches its container."""

    port: str  # the path the device file names, and the path inside the container
    kind: Literal["device", "pty", "absent"]
    host: str  # what the host side names: by-id link, device path, or resolved /dev/pts/N
    rule: str | None = None  # device cgroup rule for a pty
    gid: int | None = None  # group owning the device node, so the non-root user can open it


def classify_port(port: str, by_id: Path = BY_ID) -> Passthrough:
    """Decide how `port` is passed into a container, from what the host has right now."""
    path = Path(port)
    try:
        resolved = path.resolve(strict=True)
        st = os.stat(resolved)
    except OSError:
        return Passthrough(port, "absent", port)
    if not stat.S_ISCHR(st.st_mode):
        raise RenderError(f"serial port {port} is not a character device")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    gid = st.st_gid or None
    if major in PTY_MAJORS:
        # `--device` on a pty fails with EIO on open; a bind mount of the node works once the
        # cgroup allows its major:minor.
        return Passthrough(port, "pty", str(resolved), f"c {major}:{minor} rwm", gid)
    host = port
    if not port.startswith(f"{by_id}/") and by_id.is_dir():
        # The same adapter may be ttyUSB0 today and ttyUSB1 after a reboot; by-id names stay.
        for link in sorted(by_id.iterdir()):
            if link.resolve() == resolved:
                host = str(link)
                break
    return Passthrough(port, "device", host, None, gid)


@dataclass(frozen=True)
class Limits:
    image: str
    cpus: float | None
    memory: int | None  # bytes
    update: Literal["stop-first", "start-first"] = "stop-first"
    runtime: str | None = None  # the Engine runtime (`sandbox: gvisor` -> gateway.yaml's gvisor_runtime)


@dataclass(frozen=True)
class Slice:
    """One service's inputs: its config model (already adjusted to container paths) and limits."""

    name: str  # forwarder | modbus | opcua
    module: str  # python -m <module>
    config: BaseModel
    limits: Limits
    metrics_port: int | None
    ports: tuple[Passthrough, ...] = ()
    stop_grace: str = "10s"
    metrics_host: str = "127.0.0.1"  # gateway.yaml metrics.host: where the host reaches /metrics


@dataclass(frozen=True)
class RenderedService:
    name: str
    compose: dict[str, Any]  # the service mapping as written in docker-compose.yml
    config_text: str  # config/<name>.yaml
    config_hash: str
    limits: Limits
    metrics_port: int | None
    ports: tuple[Passthrough, ...]
    metrics_host: str = "127.0.0.1"  # the address the supervisor scrapes under host networking
    config: BaseModel | None = field(default=None, repr=False, compare=False)  # the slice, as rendered
    reload_digest: str = ""  # like config_hash, without the slice: what a reload in place cannot change
    # Where the health check asks, inside the container (the slice's metrics.host, reachable):
    # kept apart from `config`, which the supervisor drops (gateway.runtime.docker, the check child).
    health_host: str = "127.0.0.1"

    @property
    def config_path(self) -> str:
        return f"config/{self.name}/config.yaml"


@dataclass(frozen=True)
class Project:
    name: str  # compose project name
    network: Network
    services: dict[str, RenderedService]
    volumes: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())
    # Secrets the components read from their environment (`password_env`): never written to a
    # file; the compose file names them as ${VAR}, the docker runtime passes the values.
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    metrics_host: str = "127.0.0.1"  # gateway.yaml metrics.host: where the host reaches /metrics

    def compose_model(self) -> dict[str, Any]:
        model: dict[str, Any] = {"name": self.name}
        model["services"] = {name: svc.compose for name, svc in self.services.items()}
        model["volumes"] = {v: {} for v in self.volumes}
        model["x-fieldgate"] = {"network": self.network, "generated-by": _generator()}
        return model

    def compose_text(self) -> str:
        header = (
            "# Generated by `fieldgate render`; do not edit: change the config directory and render again.\n"
            "# Run it by hand with `docker compose -f docker-compose.yml up -d` (compose plugin v2),\n"
            "# or let `fieldgate up DIR --runtime docker` keep the containers equal to it.\n"
        )
        return header + _dump(self.compose_model())

    def files(self) -> dict[str, str]:
        out = {COMPOSE_FILE: self.compose_text()}
        for svc in self.services.values():
            out[svc.config_path] = svc.config_text
        return out


def _generator() -> str:
    from gateway.images import package_version

    return f"fieldgate {package_version()}"


def _dump(data: Any) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        """Block style, and lists indented under their key, as people write compose files."""

        def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
            return super().increase_indent(flow, False)

    return yaml.dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=1000,
                     allow_unicode=True)


def _host_paths(value: Any, skip: frozenset[str]) -> Iterator[Path]:
    """Every absolute path in a config model that names something on this host (certs, secrets)."""
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _host_paths(getattr(value, name), skip)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _host_paths(item, skip)
    elif (isinstance(value, PurePosixPath) and value.is_absolute() and str(value) not in skip
          and Path(value).exists() and not str(value).startswith("/dev/")):
        yield Path(value)


def mounted_files(config: BaseModel) -> list[Path]:
    """The host files and directories a component's slice names (besides its own volumes), which its
    container gets bind-mounted read-only at the same path."""
    buffer = getattr(getattr(config, "buffer", None), "dir", None)
    skip = frozenset({HANDOFF_SOCKET, STATE_DIR, BUFFER_DIR, HANDOFF_DIR, str(buffer)})
    return sorted(set(_host_paths(config, skip)))


def _file_digest(path: Path) -> str:
    if path.is_dir():
        parts = sorted((p.relative_to(path).as_posix(), _file_digest(p)) for p in path.iterdir())
        return hashlib.sha256(repr(parts).encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _memory(size: int) -> str:
    """Bytes as the compose short form (`128m`); exact, since MiB limits are whole megabytes."""
    for unit, factor in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _health_test(host: str, port: int) -> list[str]:
    address = f"[{host}]" if ":" in host else host
    code = f"import urllib.request; urllib.request.urlopen('http://{address}:{port}/healthz', timeout=4)"
    return ["CMD", "python3", "-c", code]


def health_test_on(service: RenderedService, port: int) -> list[str]:
    """The health check of `service` asking on another port (a start-first standby's own)."""
    return _health_test(service.health_host, port)


def build_service(project: str, network: Network, item: Slice) -> RenderedService:
    """The compose mapping of one service and its config hash."""
    config_text = slice_text(item.config)
    host_paths = mounted_files(item.config)
    svc: dict[str, Any] = {"image": item.limits.image, "command": ["--config", CONFIG_IN_CONTAINER]}
    if item.limits.runtime is not None:
        svc["runtime"] = item.limits.runtime  # gVisor (`sandbox: gvisor`); absent: the Engine's default, runc
    svc["restart"] = "unless-stopped"
    svc["init"] = True
    svc["user"] = USER
    gids = sorted({str(p.gid) for p in item.ports if p.gid is not None} | (
        {"dialout"} if any(p.kind == "absent" for p in item.ports) else set()))
    if gids:
        svc["group_add"] = gids
    if network == "host":
        svc["network_mode"] = "host"
    else:
        svc["extra_hosts"] = [f"{HOST_GATEWAY}:host-gateway"]
        if item.metrics_port is not None:
            # The component listens on all of its own container's addresses (see _for_network);
            # the host publishes the port on metrics.host only.
            svc["ports"] = [f"{_publish_address(item.metrics_host)}:{item.metrics_port}:{item.metrics_port}"]
    volumes: list[dict[str, Any]] = [
        {"type": "bind", "source": f"./config/{item.name}", "target": CONFIG_DIR_IN_CONTAINER,
         "read_only": True},
        {"type": "volume", "source": "handoff", "target": HANDOFF_DIR},
    ]
    if item.name == "forwarder":
        buffer_dir = str(getattr(getattr(item.config, "buffer", None), "dir", BUFFER_DIR))
        if buffer_dir == BUFFER_DIR:
            volumes.append({"type": "volume", "source": "buffer", "target": BUFFER_DIR})
        else:
            volumes.append({"type": "bind", "source": buffer_dir, "target": buffer_dir})
    else:
        volumes.append({"type": "volume", "source": f"state-{item.name}", "target": STATE_DIR})
    for path in host_paths:  # certificates, keys, password files, a trust dir: read, never written
        volumes.append({"type": "bind", "source": str(path), "target": str(path), "read_only": True})
    for port in item.ports:
        if port.kind == "pty":
            volumes.append({"type": "bind", "source": port.host, "target": port.port})
    svc["volumes"] = volumes
    svc["tmpfs"] = ["/tmp:size=16m,mode=1777"]
    svc["read_only"] = True
    svc["cap_drop"] = ["ALL"]
    svc["security_opt"] = ["no-new-privileges:true"]
    devices = [f"{p.host}:{p.port}:rwm" for p in item.ports if p.kind in ("device", "absent")]
    if devices:
        svc["devices"] = devices
    rules = sorted({p.rule for p in item.ports if p.rule})
    if rules:
        svc["device_cgroup_rules"] = rules
    if item.limits.cpus is not None:
        svc["cpus"] = item.limits.cpus
    if item.limits.memory is not None:
        svc["mem_limit"] = _memory(item.limits.memory)
        svc["memswap_limit"] = _memory(item.limits.memory)  # no swap: a leak ends in a restart, not in thrash
    svc["pids_limit"] = 128
    env = {"FIELDGATE_METRICS_PORT": str(item.metrics_port) if item.metrics_port is not None else ""}
    for name in sorted(set(secret_names(item.config))):
        env[name] = "${" + name + "}"  # compose takes it from the shell; never the value itself
    svc["environment"] = env
    health_host = reach(_listen_host(item.config))
    if item.metrics_port is not None:
        svc["healthcheck"] = {
            "test": _health_test(health_host, item.metrics_port),
            "interval": "10s", "timeout": "5s", "retries": 3, "start_period": "30s",
        }
    else:
        svc["healthcheck"] = {"disable": True}
    svc["stop_grace_period"] = item.stop_grace
    svc["logging"] = {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}}
    if item.name != "forwarder":
        svc["depends_on"] = {"forwarder": {"condition": "service_started"}}
    hashed = {
        "service": svc,
        "config": config_text,
        "files": [(str(p), _file_digest(p)) for p in host_paths],
    }
    digest = hashlib.sha256(_dump(hashed).encode()).hexdigest()[:16]
    reload_digest = hashlib.sha256(_dump({**hashed, "config": None}).encode()).hexdigest()[:16]
    svc["labels"] = {PROJECT_LABEL: project, SERVICE_LABEL: item.name, HASH_LABEL: digest}
    return RenderedService(item.name, svc, config_text, digest, item.limits, item.metrics_port, item.ports,
                           reach(item.metrics_host), item.config, reload_digest, health_host)


def project_name(gateway_id: str) -> str:
    """Compose project names are lowercase letters, digits, dashes and underscores."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in gateway_id.lower())
    return f"fieldgate-{cleaned}"


def write(project: Project, out: Path) -> list[Path]:
    """Write the project's files; returns those whose bytes changed (the others are left alone)."""
    return write_files(project.files(), out)


def write_files(files: Mapping[str, str], out: Path) -> list[Path]:
    """Write each OUT-relative file whose bytes differ; returns those written.

    A changed file is replaced by rename, so no reader ever sees half a file. A container mounts
    its slice's directory (CONFIG_DIR_IN_CONTAINER), so it sees the new slice at once and reads
    it on SIGHUP (a reload in place) or when it is recreated.
    """
    changed: list[Path] = []
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        part = path.with_name(path.name + ".part")
        part.write_text(text, encoding="utf-8")
        part.chmod(0o644)  # the container user (10001) reads its slice
        os.replace(part, path)
        changed.append(path)
    return changed


def main_render(args: argparse.Namespace) -> int:
    from gateway.acl import acl_text

    acl = getattr(args, "acl", None)
    try:
        config = _load(args.dir)
        project = render_loaded(config, args.dir)
        if acl is not None:
            writers = getattr(args, "writer", None) or [f"{config.gateway.id}-writer"]
            readers = getattr(args, "reader", None) or [f"{config.gateway.id}-reader"]
            acl_file = acl_text(config, writers, readers)
    except FieldgateError as exc:
        print(f"fieldgate render: {exc}", file=sys.stderr)
        return 1
    for warning in project.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    write(project, args.out)
    print(f"wrote {args.out / COMPOSE_FILE} ({', '.join(project.services)})")
    if acl is not None:
        acl.parent.mkdir(parents=True, exist_ok=True)
        acl.write_text(acl_file, encoding="utf-8")
        print(f"wrote {acl} (Mosquitto ACL: {config.mqtt.username}, writers {', '.join(writers)}, "
              f"readers {', '.join(readers)})")
    return 0


def _load(config_dir: Path) -> Any:
    from gateway.config import load_config

    try:
        return load_config(config_dir)
    except ValueError as exc:  # pydantic's ValidationError is one; the loader names file:line:column
        raise RenderError(str(exc)) from exc


def render(config_dir: Path) -> Project:
    """Load DIR with the gateway's config loader (every error named, nothing written) and render it."""
    return render_loaded(_load(config_dir), config_dir)


def _limits(entry: Any, default_image: str, gvisor_runtime: str, default_update: str = "stop-first") -> Limits:
    return Limits(
        image=getattr(entry, "image", None) or default_image,
        cpus=getattr(entry, "cpus", None),
        memory=getattr(entry, "memory", None),
        update=getattr(entry, "update", None) or default_update,  # type: ignore[arg-type]
        runtime=gvisor_runtime if getattr(entry, "sandbox", "none") == "gvisor" else None,
    )


def _loopback_to_host(host: str, network: Network) -> str:
    """Under bridge networking 127.0.0.1 is the container itself; the gateway PC is the host gateway."""
    return HOST_GATEWAY if network == "bridge" and host in LOOPBACK else host


def _listen_host(model: BaseModel) -> str:
    """The address a component's slice says its /metrics listens on."""
    metrics = getattr(model, "metrics", None)
    return str(metrics.host if metrics is not None else getattr(model, "metrics_host", "127.0.0.1"))


def _publish_address(host: str) -> str:
    """metrics.host as the host side of a compose port mapping (an IP address)."""
    host = "127.0.0.1" if host == "localhost" else host
    return f"[{host}]" if ":" in host else host


def _for_network(name: str, model: BaseModel, network: Network) -> BaseModel:
    if network == "host":
        return model
    if name == "forwarder":
        mqtt = model.mqtt  # type: ignore[attr-defined]
        mqtt = mqtt.model_copy(update={"host": _loopback_to_host(mqtt.host, network)})
        # Inside its own network namespace the component listens on every address of the
        # container: the published port (on metrics.host) is what the host exposes.
        metrics = model.metrics.model_copy(update={"host": "0.0.0.0"})  # type: ignore[attr-defined]
        return model.model_copy(update={"mqtt": mqtt, "metrics": metrics})
    devices = []
    for device in model.devices:  # type: ignore[attr-defined]
        tcp = getattr(getattr(device, "connection", None), "tcp", None)
        if tcp is not None:
            tcp = tcp.model_copy(update={"host": _loopback_to_host(tcp.host, network)})
            connection = device.connection.model_copy(update={"tcp": tcp})
            device = device.model_copy(update={"connection": connection})
        endpoint = getattr(device, "endpoint", None)
        if endpoint is not None:
            for loop in LOOPBACK:
                endpoint = endpoint.replace(f"://{loop}:", f"://{HOST_GATEWAY}:")
            device = device.model_copy(update={"endpoint": endpoint})
        devices.append(device)
    return model.model_copy(update={"devices": devices, "metrics_host": "0.0.0.0"})


def render_loaded(config: Any, config_dir: Path, by_id: Path = BY_ID) -> Project:
    """The compose project of a loaded gateway config (`gateway.config.load_config`)."""
    from gateway.checks import container_cannot_read
    from gateway.config import absolute_paths, slice_environment
    from gateway.images import image_name

    network: Network = getattr(config, "network", "host") or "host"
    project = project_name(str(config.gateway.id))
    slices = service_slices(config, CONTAINER_PLACEMENT)
    collectors_cfg = getattr(config, "collectors", None)
    gvisor = str(getattr(config, "gvisor_runtime", "runsc"))
    warnings: list[str] = []
    services: dict[str, RenderedService] = {}
    for name, model in slices.items():
        # Paths relative to where `fieldgate render plant/` ran mean nothing in a container.
        absolute: BaseModel = absolute_paths(_for_network(name, model, network), Path.cwd())
        model = absolute
        for path in mounted_files(model):
            if (why := container_cannot_read(path)) is not None:
                warnings.append(f"{name}: {why}")
        if name == "forwarder":
            limits = _limits(getattr(config, "forwarder", None), image_name("forwarder"), gvisor)
            port = metrics_port(name, model)
            ports: tuple[Passthrough, ...] = ()
            grace = "30s"  # the forwarder spills its in-memory buffer to disk on SIGTERM
        else:
            entry = getattr(collectors_cfg, name, None) if collectors_cfg is not None else None
            if entry is None and isinstance(collectors_cfg, Mapping):
                entry = collectors_cfg.get(name)
            limits = _limits(entry, image_name(f"collector-{name}"), gvisor)
            port = metrics_port(name, model)
            serial = sorted({d.connection.rtu.port for d in getattr(model, "devices", [])
                             if getattr(getattr(d, "connection", None), "rtu", None) is not None})
            ports = tuple(classify_port(p, by_id) for p in serial)
            for p in ports:
                if p.kind == "absent":
                    warnings.append(f"{name}: serial port {p.port} is not on this machine now; "
                                    "the container cannot start until it is")
            grace = "10s"
        item = Slice(name, f"collectors.{name}", model, limits, port, ports, grace, config.metrics.host)
        services[name] = build_service(project, network, item)
    volumes = ["handoff"]
    if "buffer" in {v.get("source") for v in services["forwarder"].compose["volumes"]}:
        volumes.append("buffer")
    volumes += [f"state-{name}" for name in services if name != "forwarder"]
    return Project(project, network, services, tuple(volumes), tuple(warnings), slice_environment(config),
                   config.metrics.host)
