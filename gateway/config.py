"""The gateway's config: loading a config directory, errors a plant engineer can act on, and
the slice of it each component runs on (docs/config.md, docs/runtime.md).

    plant/gateway.yaml        GatewayFile
    plant/devices/*.yaml      ModbusDevice | OpcuaDevice, by their `protocol` key

`load_config(DIR)` reads every file, replaces `${VAR}` / `${VAR:-default}`, validates each
file with the models the collectors own, runs the cross-file checks, and raises ConfigErrors
listing every problem as `file:line:column: message` (nothing half-loaded). On success the
GatewayConfig holds gateway.yaml's model plus every device with the file it came from.

Secrets (`password`) are SecretStr: never in an error, a repr or a log line. Rendered
slices never hold them in clear: see `collector_slices`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError

from collectors.core.config import ByteSize, HandoffConfig, StrictModel
from collectors.core.errors import ConfigError
from collectors.core.validation import (
    ConfigErrors,
    context,
    did_you_mean,
    in_order,
    report_validation,
    scrub,
    show,
)
from collectors.core.yamlnodes import Loc, Problem, Source, load_yaml
from collectors.forwarder.config import (
    BufferConfig,
    CatalogDevice,
    CatalogTag,
    ForwarderConfig,
    ForwarderHandoff,
    Identity,
    MetricsConfig,
    MqttConfig,
)
from collectors.modbus.config import ModbusCollectorConfig, ModbusDevice, ModbusTag
from collectors.opcua.config import OpcuaCollectorConfig, OpcuaDevice
from gateway.include import resolve_model
from gateway.layout import DEVICES_DIR, GATEWAY_FILE, device_files

PROTOCOLS = ("modbus", "opcua")
# Each collector's metrics port is the forwarder's plus this, whichever protocols are in use,
# so adding an OPC UA device never moves the Modbus collector's port.
METRICS_OFFSET = {"modbus": 1, "opcua": 2}

Device = Annotated[ModbusDevice | OpcuaDevice, Field(discriminator="protocol")]
DEVICE_MODELS: dict[str, type[ModbusDevice] | type[OpcuaDevice]] = {
    "modbus": ModbusDevice,
    "opcua": OpcuaDevice,
}


# ------------------------------------------------------------------ gateway.yaml


class ForwarderResources(StrictModel):
    """How the forwarder runs: its image and limits (docker runtime)."""

    image: str | None = Field(None, description="image to run; default fieldgate/forwarder:{version}")
    # Docker refuses less than 0.01 CPU and less than 6MiB of memory when it creates the container.
    cpus: float | None = Field(None, ge=0.01, allow_inf_nan=False,
                               description="CPU limit in cores, e.g. 0.5, at least 0.01 (docker runtime)")
    memory: ByteSize | None = Field(
        None, ge=6 * 1024**2, description="memory limit, e.g. 128MiB, at least 6MiB (docker runtime)"
    )
    sandbox: Literal["none", "gvisor"] = Field(
        "none",
        description="docker runtime: none (runc, the Engine's default) | gvisor: run the container under "
        "gVisor's user-space kernel (the Engine runtime named by gvisor_runtime); not with serial "
        "ports (gVisor passes no ttys); the process runtime ignores it, with a warning",
    )


class CollectorResources(ForwarderResources):
    """How one protocol's collector runs, and how `fieldgate update` replaces it."""

    image: str | None = Field(
        None, description="image to run; default fieldgate/collector-{protocol}:{version}"
    )
    update: Literal["stop-first", "start-first"] = Field(
        "start-first",
        description="start-first: start the new collector as a standby, switch when it is healthy (no "
        "missed poll) | stop-first: stop the old one, then start the new one. A collector with a serial "
        "port is always updated stop-first (a port has one owner), and so is a process-runtime child",
    )


class CollectorsResources(StrictModel):
    modbus: CollectorResources = Field(default_factory=CollectorResources, description="the Modbus collector")
    opcua: CollectorResources = Field(default_factory=CollectorResources, description="the OPC UA collector")


class GatewayFile(StrictModel):
    """gateway.yaml: identity, broker, buffer, runtime and the components' resources."""

    gateway: Identity = Field(description="who this gateway is: {id, group}")
    mqtt: MqttConfig = Field(
        default_factory=MqttConfig, description="the plant broker and the payload format"
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig,
        description="Prometheus metrics and health: the forwarder on port, the Modbus collector on "
        "port+1, the OPC UA collector on port+2; port null: no service serves /metrics or /healthz "
        "(no health checks, with either runtime)",
    )
    buffer: BufferConfig = Field(default_factory=BufferConfig, description="the store-and-forward buffer")
    runtime: Literal["docker", "process"] = Field(
        "docker",
        description="docker: one container per component | process: child processes of `fieldgate up`",
    )
    network: Literal["host", "bridge"] = Field(
        "host",
        description="docker runtime: host (containers share the gateway's network; simplest for field "
        "networks) | bridge (own network; 127.0.0.1 in configs means the gateway PC)",
    )
    gvisor_runtime: str = Field(
        "runsc", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="the Engine runtime (a name under `runtimes` in /etc/docker/daemon.json) that "
        "`sandbox: gvisor` services run with",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="log level of the forwarder and the collectors"
    )
    forwarder: ForwarderResources = Field(
        default_factory=ForwarderResources, description="the forwarder's image and limits"
    )
    collectors: CollectorsResources = Field(
        default_factory=CollectorsResources,
        description="each protocol's collector: image, limits, update order",
    )


class DeviceFile(StrictModel):
    """One device and the file it came from (relative to the config directory's parent as given)."""

    source: Path = Field(description="the device file")
    device: Device = Field(description="the device model")


class GatewayConfig(GatewayFile):
    """A loaded, valid config directory: gateway.yaml's keys plus every device file."""

    dir: Path = Field(description="the config directory")
    devices: list[DeviceFile] = Field(default_factory=list, description="every device, in file name order")
    warnings: list[str] = Field(
        default_factory=list, description="file:line:column: things that run but look wrong"
    )
    # secret owner ("mqtt" or "device:NAME") -> the environment variable its password came from
    secret_env: dict[str, str] = Field(default_factory=dict, exclude=True)

    def devices_of(self, protocol: str) -> list[ModbusDevice | OpcuaDevice]:
        return [entry.device for entry in self.devices if entry.device.protocol == protocol]

    @property
    def protocols(self) -> list[str]:
        """The protocols in use, in a stable order."""
        used = {entry.device.protocol for entry in self.devices}
        return [p for p in PROTOCOLS if p in used]

    @property
    def tag_count(self) -> int:
        return sum(len(entry.device.tags) for entry in self.devices)


# ------------------------------------------------------------------ loading


def load_config(dir: Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load and check a config directory; raises ConfigErrors listing every problem."""
    from gateway import checks

    env = os.environ if env is None else env
    problems: list[Problem] = []
    gateway_path = dir / GATEWAY_FILE
    if not os.path.lexists(gateway_path):
        problems.append(
            Problem(gateway_path, None, "not found: a config directory holds gateway.yaml and devices/")
        )
        gateway_model = None
        gateway_source = None
    else:
        gateway_source = load_yaml(gateway_path, env)
        gateway_model = _validate_gateway(gateway_source, env)
        problems.extend(in_order(gateway_source.problems))

    try:
        device_paths = device_files(dir)
    except OSError as exc:
        problems.append(Problem(dir / DEVICES_DIR, None, f"cannot read: {exc.strerror or type(exc).__name__}"))
        device_paths = None
    if device_paths == []:
        problems.append(
            Problem(dir / DEVICES_DIR, None, "no device files (devices/NAME.yaml, one device each)")
        )
    loaded: list[tuple[Source, ModbusDevice | OpcuaDevice]] = []
    size = gateway_source.size if gateway_source is not None else 0
    for path in device_paths or []:
        source = resolve_model(load_yaml(path, env), env)  # `model:` (gateway/include.py)
        size += source.size
        if size > MAX_VALUES_PER_DIR:
            problems.append(Problem(path, None, f"with this file the config directory holds more than "
                                    f"{MAX_VALUES_PER_DIR:,} values, the most one gateway reads; the files "
                                    "after it were not read"))
            device_paths = None  # no cross-file checks on a part
            break
        device = validate_device(source, env)
        problems.extend(in_order(source.problems))
        if device is not None:
            loaded.append((source, device))

    warnings: list[Problem] = []
    whole = device_paths is not None and len(loaded) == len(device_paths)
    if gateway_model is not None and gateway_source is not None and whole:
        problems.extend(in_order(checks.cross_file(gateway_source, gateway_model, loaded, warnings)))
    if problems:
        raise ConfigErrors(scrub(_capped(problems), [gateway_source, *(s for s, _ in loaded)]))
    assert gateway_model is not None and gateway_source is not None
    secret_env = {}
    if ("mqtt", "password") in gateway_source.env_refs:
        secret_env["mqtt"] = gateway_source.env_refs[("mqtt", "password")]
    for source, device in loaded:
        if ("security", "password") in source.env_refs:
            secret_env[f"device:{device.name}"] = source.env_refs[("security", "password")]
    return GatewayConfig(
        **{name: getattr(gateway_model, name) for name in GatewayFile.model_fields},
        dir=dir,
        devices=[DeviceFile(source=source.file, device=device) for source, device in loaded],
        warnings=[str(w) for w in in_order(warnings)],
        secret_env=secret_env,
    )


# Each file is bounded by yamlnodes.LIMITS; so is the directory, or a thousand files under each
# file's limit would take minutes and gigabytes (20,000 Modbus tags are about 220,000 values).
MAX_VALUES_PER_DIR = 400_000

# A file with thousands of errors (a generated file gone wrong, or a hostile one) is reported by
# its first ones: the rest would only bury them, in the terminal and in every refusal logged.
MAX_PROBLEMS_PER_FILE = 100


def _capped(problems: list[Problem]) -> list[Problem]:
    """The first MAX_PROBLEMS_PER_FILE problems of each file, and how many more there are."""
    kept: list[Problem] = []
    count: dict[Path, int] = {}
    for problem in problems:
        count[problem.file] = count.get(problem.file, 0) + 1
        if count[problem.file] <= MAX_PROBLEMS_PER_FILE:
            kept.append(problem)
    for file, n in count.items():
        if n > MAX_PROBLEMS_PER_FILE:
            more = n - MAX_PROBLEMS_PER_FILE
            kept.append(Problem(file, None, f"{more:,} more problems in this file not shown; fix these first"))
    return kept


def load_device_files(paths: Sequence[Path], env: Mapping[str, str] | None = None) -> list[DeviceFile]:
    """Device files on their own (`fieldgate simulate`): the same checks as in a config directory,
    except the cross-file ones; raises ConfigErrors."""
    env = os.environ if env is None else env
    problems: list[Problem] = []
    result: list[DeviceFile] = []
    sources: list[Source | None] = []
    for path in paths:
        source = resolve_model(load_yaml(path, env), env)  # `model:` (gateway/include.py)
        device = validate_device(source, env)
        problems.extend(in_order(source.problems))
        sources.append(source)
        if device is not None:
            result.append(DeviceFile(source=path, device=device))
    if problems:
        raise ConfigErrors(scrub(_capped(problems), sources))
    return result


def _validate_gateway(source: Source, env: Mapping[str, str]) -> GatewayFile | None:
    if source.broken:
        return None
    if not isinstance(source.data, dict):
        source.problem((), "gateway.yaml must be a mapping of keys (gateway:, mqtt:, ...)")
        return None
    try:
        model = GatewayFile.model_validate(source.data, context={"env": env})
    except ValidationError as exc:
        report_validation(source, exc, GatewayFile)
        return None
    model = absolute_paths(model, source.file.parent)
    _check_files(source, model, ())
    if "dir" in model.buffer.model_fields_set and (wrong := buffer_dir_problem(model.buffer.dir, source.file.parent)):
        source.problem(("buffer", "dir"), f"buffer.dir: {wrong}")
    return None if source.problems else model


# The buffer creates backlog/ and live/ in its directory and deletes its segments there; under the
# docker runtime the directory is bind-mounted into the forwarder's container at the same path.
# So never a system directory (nor anything under the ones the system owns), never the config
# directory or one that holds it.
SYSTEM_DIRS = frozenset(Path(d) for d in (
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/media", "/mnt", "/opt",
    "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib", "/var/log",
    "/var/run", "/var/tmp",
))
SYSTEM_TREES = tuple(Path(d) for d in ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sbin",
                                       "/sys", "/usr"))


def buffer_dir_problem(buffer_dir: Path, config_dir: Path) -> str | None:
    """Why `buffer_dir` cannot hold the buffer, or None."""
    path = Path(os.path.normpath(buffer_dir.absolute()))
    config = Path(os.path.normpath(config_dir.absolute()))
    if path in SYSTEM_DIRS or any(path.is_relative_to(tree) for tree in SYSTEM_TREES):
        return (f"{path} is a system directory: give the buffer a directory of its own, "
                "e.g. /var/lib/fieldgate/buffer")
    if config.is_relative_to(path):
        return (f"{path} is the config directory or holds it: give the buffer a directory of its own, "
                "e.g. /var/lib/fieldgate/buffer")
    return None


def validate_device(source: Source, env: Mapping[str, str]) -> ModbusDevice | OpcuaDevice | None:
    """The device model of one loaded device file, or None with the problems on `source`."""
    if source.broken:
        return None
    data = source.data
    if not isinstance(data, dict):
        source.problem((), "a device file is a mapping of keys (name:, protocol:, ...), one device per file")
        return None
    protocol = data.get("protocol")
    if "protocol" not in data:
        source.problem((), "missing key 'protocol': write protocol: modbus or protocol: opcua")
        return None
    if not isinstance(protocol, str) or protocol not in DEVICE_MODELS:
        source.problem(("protocol",), f"protocol: {show(protocol)} is not one of modbus, opcua"
                       + did_you_mean(protocol, DEVICE_MODELS))
        return None
    model_class = DEVICE_MODELS[protocol]
    _duplicate_tags(source)
    try:
        device = model_class.model_validate(data, context={"env": env})
    except ValidationError as exc:
        report_validation(source, exc, model_class)
        return None
    device = absolute_paths(device, source.file.parent)
    _check_files(source, device, ())
    if isinstance(device, ModbusDevice):
        from collectors.modbus.planner import plan_device

        try:
            plan_device(device)
        except ConfigError as exc:
            message = str(exc).removeprefix(f"{device.name}: ")
            index = next((i for i, t in enumerate(device.tags) if t.name == exc.tag), None)
            loc: Loc = ("tags",) if index is None else ("tags", index)
            source.problem(loc, f"device {device.name}: {message}")
    return None if source.problems else device


def _duplicate_tags(source: Source) -> None:
    tags = source.data.get("tags")
    if not isinstance(tags, list):
        return
    first: dict[str, int] = {}
    for i, tag in enumerate(tags):
        name = tag.get("name") if isinstance(tag, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            line = source.where(("tags", first[name]))
            source.problem(
                ("tags", i, "name"),
                f"device {source.data.get('name')}, tag {name}: the name is already used by the tag at line "
                f"{line.line if line else '?'}; tag names must be unique in a device (they are topic levels)",
            )
        else:
            first[name] = i


# ------------------------------------------------------------------ file paths
# (pydantic errors -> positions: collectors/core/validation.py, shared with the components' entry points)

# Files that must exist when the config names them; found relative to the file naming them.
MUST_EXIST = ("password_file", "ca_file", "cert_file", "key_file", "user_certificate", "user_private_key")


def absolute_paths(model: Any, base: Path) -> Any:
    """The model with every relative Path made relative to `base` (the file that names it)."""
    if not isinstance(model, BaseModel):
        return model
    update: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, PurePath) and not value.is_absolute():
            update[name] = base / value
        elif isinstance(value, BaseModel):
            new = absolute_paths(value, base)
            if new is not value:
                update[name] = new
        elif isinstance(value, list) and any(isinstance(v, BaseModel) for v in value):
            items = [absolute_paths(v, base) for v in value]
            if any(a is not b for a, b in zip(items, value, strict=True)):
                update[name] = items
    return model.model_copy(update=update) if update else model


def _check_files(source: Source, model: BaseModel, loc: Loc) -> None:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if name in MUST_EXIST and isinstance(value, PurePath) and not Path(value).is_file():
            source.problem((*loc, name), f"{context(source, (*loc, name))}file {value} does not exist")
        elif isinstance(value, BaseModel):
            _check_files(source, value, (*loc, name))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    _check_files(source, item, (*loc, name, i))


# ------------------------------------------------------------------ slices


def _env_name(owner: str) -> str:
    return "FIELDGATE_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", owner).upper()


def _password_env(config: GatewayConfig, owner: str) -> str:
    """The variable a component reads the password from: the user's own `${VAR}` name when the
    password was written that way, else one named after its owner."""
    return config.secret_env.get(owner) or _env_name(owner)


def _without_secret(model: Any, env_name: str) -> Any:
    if getattr(model, "password", None) is None:
        return model
    return model.model_copy(update={"password": None, "password_env": env_name})


def _without_simulate(device: ModbusDevice | OpcuaDevice) -> Any:
    if all(tag.simulate is None for tag in device.tags):
        return device
    return device.model_copy(update={"tags": [tag.model_copy(update={"simulate": None}) for tag in device.tags]})


def collector_slices(
    config: GatewayConfig, handoff_socket: Path, state_dir: Path, metrics_base_port: int | None
) -> dict[str, BaseModel]:
    """Each protocol in use -> the config its collector runs on (`python -m collectors.PROTOCOL`).

    Secrets: a password never goes into a slice. Where a device has one, its slice carries
    `password_env: NAME` instead and the collector reads the variable at start; NAME is the
    user's own variable when the password was written `${NAME}`, else FIELDGATE_PASSWORD_<OWNER>.
    Runtimes add `slice_environment(config)` to the component's environment (the process
    runtime's children inherit the supervisor's environment, so `${VAR}` passwords work as is).
    Environment, not a file: a secret file would need a host directory the container can read
    and that outlives the process; the environment dies with it and is never on disk.

    Tags go without their `simulate:` key: only `fieldgate simulate` reads it (from the device
    files), and a collector would only parse and hold it (a 2,000-tag slice: 3 MB of its peak
    RSS); a change to it recreates no collector.
    """
    slices: dict[str, BaseModel] = {}
    handoff = HandoffConfig(socket=handoff_socket)
    for protocol in config.protocols:
        port = None if metrics_base_port is None else metrics_base_port + METRICS_OFFSET[protocol]
        common: dict[str, Any] = {
            "name": protocol, "handoff": handoff, "metrics_port": port, "metrics_host": config.metrics.host,
            "state_dir": state_dir, "log_level": config.log_level,
        }
        if protocol == "modbus":
            slices[protocol] = ModbusCollectorConfig(
                **common, devices=[_without_simulate(d) for d in config.devices_of("modbus")
                                   if isinstance(d, ModbusDevice)]
            )
        else:
            devices = []
            for device in config.devices_of("opcua"):
                assert isinstance(device, OpcuaDevice)
                security = _without_secret(device.security, _password_env(config, f"device:{device.name}"))
                devices.append(_without_simulate(device).model_copy(update={"security": security}))
            slices[protocol] = OpcuaCollectorConfig(**common, devices=devices)
    return slices


def forwarder_slice(
    config: GatewayConfig, handoff_socket: Path, buffer_dir: Path | None = None
) -> ForwarderConfig:
    """The forwarder's config: identity, broker, buffer, and the catalog of every device and tag.

    The broker password is handled as in `collector_slices` (`mqtt.password_env`).
    """
    buffer = config.buffer if buffer_dir is None else config.buffer.model_copy(update={"dir": buffer_dir})
    return ForwarderConfig(
        gateway=config.gateway,
        mqtt=_without_secret(config.mqtt, _password_env(config, "mqtt")),
        buffer=buffer,
        metrics=config.metrics,
        # A collector under gVisor reaches the socket through runsc's gofer, which runs as root.
        handoff=ForwarderHandoff(socket=handoff_socket, root_peers=_sandboxes_a_collector(config)),
        devices=catalog(config),
        log_level=config.log_level,
    )


def _sandboxes_a_collector(config: GatewayConfig) -> bool | None:
    """True when a collector runs under gVisor, else None (the key stays out of the slice)."""
    from gateway.checks import sandboxed

    return True if any(key[0] == "collectors" for key in sandboxed(config)) else None


def slice_environment(config: GatewayConfig) -> dict[str, str]:
    """Environment variables the components need (the passwords named by `password_env`).

    Pass them to the child process or container; never write them into a file.
    """
    env: dict[str, str] = {}
    if config.mqtt.password is not None:
        env[_password_env(config, "mqtt")] = config.mqtt.password.get_secret_value()
    for device in config.devices_of("opcua"):
        assert isinstance(device, OpcuaDevice)
        if device.security.password is not None:
            owner = f"device:{device.name}"
            env[_password_env(config, owner)] = device.security.password.get_secret_value()
    return env


def catalog(config: GatewayConfig) -> list[CatalogDevice]:
    """Every device and tag, and which collector owns it (the forwarder routes writes with it).

    A Modbus tag's type is that of the values its collector hands off (`modbus_value_type`),
    so a Sparkplug host is told the right datatype at the first birth; an OPC UA tag's type
    is known only from its first value (None here).
    """
    devices = []
    for entry in config.devices:
        device = entry.device
        tags = []
        for tag in device.tags:
            type_name = modbus_value_type(tag) if isinstance(tag, ModbusTag) else None
            tags.append(CatalogTag(name=tag.name, type=type_name, unit=tag.unit, writable=tag.writable))
        devices.append(CatalogDevice(name=device.name, collector=device.protocol, tags=tags))
    return devices


# Integer types an integer-scaled value may need, in order of preference after the tag's own.
_INT_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}


def modbus_value_type(tag: ModbusTag) -> str:
    """The type of the engineering values the Modbus collector hands off for `tag`.

    It follows collectors/modbus/codec.py (`_converter`) exactly: a bit or bool is a bool, a
    string a string; without scale and offset a number keeps its register type. With them,
    `raw * scale + offset` is a float (float64) unless both are whole numbers, where it stays an
    int: then the register type when every raw value still fits it, else the smallest of
    int32, int64, uint64 that holds the whole range (uint16 * 10 reaches 655350), float64 past
    those. A scaled float32 is computed in double precision: float64.
    """
    if tag.is_bool:
        return "bool"
    kind = tag.type.value
    if kind == "string":
        return kind
    scale, offset = tag.scale, tag.offset
    if scale == 1.0 and offset == 0.0:
        return kind
    if kind in ("float32", "float64") or not (scale.is_integer() and offset.is_integer()):
        return "float64"
    low, high = _INT_RANGES[kind]
    ends = (low * int(scale) + int(offset), high * int(scale) + int(offset))
    lo, hi = min(ends), max(ends)
    for name in (kind, "int32", "int64", "uint64"):
        first, last = _INT_RANGES[name]
        if first <= lo and hi <= last:
            return name
    return "float64"


# ------------------------------------------------------------------ CLI verbs


def summary(config: GatewayConfig) -> str:
    """`plant: 3 devices (press-1, meter-7, oven-2), 17 tags, protocols modbus, opcua`"""
    names = ", ".join(entry.device.name for entry in config.devices)
    count = len(config.devices)
    return (
        f"{config.dir}: valid: {count} device{'s' if count != 1 else ''} ({names}), "
        f"{config.tag_count} tags, protocols {', '.join(config.protocols)}"
    )


def main_validate(args: argparse.Namespace) -> int:
    """`fieldgate validate DIR`: every error as file:line:column: message, exit 1; else a summary."""
    try:
        config = load_config(args.dir)
    except ConfigErrors as exc:
        for problem in exc.problems:
            print(problem)
        count = len(exc.problems)
        print(f"{args.dir}: {count} error{'s' if count != 1 else ''}; nothing was changed", file=sys.stderr)
        return 1
    for warning in config.warnings:
        print(warning)
    print(summary(config))
    return 0


__all__ = [
    "DEVICES_DIR",
    "GATEWAY_FILE",
    "ConfigErrors",
    "DeviceFile",
    "GatewayConfig",
    "GatewayFile",
    "SecretStr",
    "collector_slices",
    "device_files",
    "forwarder_slice",
    "load_config",
    "load_device_files",
    "slice_environment",
]
