"""The desired services of a config directory, for the process runtime computed in a child.

Loading DIR needs the config models of every collector (pydantic, the Modbus and OPC UA device
models, YAML with positions): about 10 MiB that a supervisor would keep for as long as it runs,
although it uses them only for the moment a config changes. So the process runtime loads DIR in
a short-lived child, `python -m gateway.runtime.desired`, which checks it exactly as
`fieldgate validate` does, builds the process specs and prints them as JSON on its stdout; the
supervisor keeps only those plain `ServiceSpec`s and the passwords its children get in their
environment (docs/runtime.md, "Memory"). The child reads its request (DIR, the run directory and
the key the config hashes of secrets are made with) on its stdin, so no secret is on a command line.

The docker runtime's child (`python -m gateway.runtime.docker`) loads DIR with `in_process` and
also renders and writes the compose project, which it hands back without the config models.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collectors.core.errors import FieldgateError
from gateway.plan import FORWARDER, ServiceSpec, config_hash
from gateway.runtime.common import RunDir, secrets_digest

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

CHILD = (sys.executable, "-m", "gateway.runtime.desired")
# The readers' limits (docs/config.md, "Limits") keep a check to seconds; past this the child is
# stopped and the change refused, and the supervisor goes on.
CHILD_TIMEOUT = 120.0

_VARIABLE = re.compile(r"(?<!\$)\$\{(\w+)")


@dataclass(frozen=True)
class Desired:
    """What loading DIR gave: the services (None when refused, with `errors` as the user reads
    them: `file:line:column: message`), the runtime gateway.yaml names, and for the process
    runtime the passwords and the `${VAR}` names its children's environment is built from."""

    specs: dict[str, ServiceSpec] | None
    errors: str = ""
    runtime: str | None = None
    passwords: Mapping[str, str] = field(default_factory=dict, repr=False)
    named: frozenset[str] = frozenset()
    warnings: tuple[str, ...] = ()  # said once when the config is applied, never refused for


def load(config_dir: Path) -> tuple[GatewayConfig | None, str]:
    """The validated config, or None and every error (file:line:column: message) as text.

    Never raises (but for cancellation): whatever a file in DIR holds, a running supervisor
    refuses the change and keeps what runs. An exception the loader does not expect is a
    fieldgate bug; it is refused all the same, named by its type (its text could quote the file)."""
    from gateway.config import load_config

    try:
        return load_config(config_dir), ""
    except (FieldgateError, ValueError, OSError) as exc:  # reported whole; nothing runs on it
        return None, str(exc)
    except Exception as exc:  # RecursionError, MemoryError, ...: see above
        return None, (f"{config_dir}: the config could not be read ({type(exc).__name__}, a fieldgate "
                      "bug: please report it with the file that caused it)")


def in_process(build: Callable[[GatewayConfig], Desired], config_dir: Path) -> Desired:
    """Load DIR here and build its services with `build`; every refusal as text, never raised."""
    config, errors = load(config_dir)
    if config is None:
        return Desired(None, errors)
    try:
        return build(config)
    except (FieldgateError, ValueError, OSError) as exc:  # e.g. a slice the runtime cannot render
        return Desired(None, str(exc))
    except Exception as exc:  # a fieldgate bug; what runs stays as it is all the same
        return Desired(None, f"{config_dir}: the services could not be planned ({type(exc).__name__}, "
                             "a fieldgate bug: please report it with the config that caused it)")


# ------------------------------------------------------------------ the process runtime's services


def config_variables(config: GatewayConfig) -> set[str]:
    """Every `${VAR}` the files of the config directory name (their values are in the slices)."""
    from gateway.layout import GATEWAY_FILE

    names: set[str] = set()
    for path in (config.dir / GATEWAY_FILE, *(entry.source for entry in config.devices)):
        with contextlib.suppress(OSError):
            names.update(_VARIABLE.findall(path.read_text(encoding="utf-8", errors="replace")))
    return names


def process_specs(
    config: GatewayConfig, run_dir: RunDir,
    secrets_digest: Callable[[tuple[str, ...]], str] = lambda names: "",
) -> dict[str, ServiceSpec]:
    """The forwarder and one collector per protocol in use, as process specs
    (`gateway.services.desired_services`, run as `python -m collectors.<name> --config FILE`).

    `secrets_digest(names)` stands for the passwords a child gets in its environment (see
    `ProcessRuntime.desired`), so a changed password recreates the service using it.
    """
    from gateway.services import Placement, Run, desired_services, service_slices

    socket = run_dir.handoff_socket

    def run(spec: ServiceSpec) -> Run:
        file = run_dir.slice_file(spec.name)
        command = (sys.executable, "-m", f"collectors.{spec.name}", "--config", str(file))
        return Run(
            command=command,
            config_hash=config_hash(spec.config_text, command, secrets_digest(spec.secrets)),
            config_file=str(file),
            ready_path=str(socket) if spec.name == FORWARDER else None,
            reload_key=config_hash(command, secrets_digest(spec.secrets)),
        )

    slices = service_slices(config, Placement(socket, run_dir.state, run_dir.buffer))
    return desired_services(slices, run, metrics_host=config.metrics.host, host_network=True)


def process_desired(config: GatewayConfig, run_dir: RunDir, key: bytes) -> Desired:
    """The process runtime's services of a loaded config, with the passwords its children need."""
    from gateway.config import slice_environment

    passwords = slice_environment(config)

    def digest(names: tuple[str, ...]) -> str:
        # Keyed with a key that lives as long as the runtime (and its children): the hash
        # shows in status.json.
        return secrets_digest(key, passwords, names)

    from gateway.checks import sandboxed

    # Warned, not refused: one config directory serves both runtimes (a laptop runs it as
    # processes, the plant PC in containers), and a sandbox is a container's property.
    warnings = tuple(f"{'.'.join(key)}: gvisor applies to the docker runtime only; this service runs as "
                     "an ordinary child process, not sandboxed" for key in sandboxed(config))
    return Desired(process_specs(config, run_dir, digest), runtime=config.runtime, passwords=passwords,
                   named=frozenset(config_variables(config)), warnings=warnings)


# ------------------------------------------------------------------ the child and its answer


def to_json(desired: Desired) -> dict[str, Any]:
    return {
        "specs": None if desired.specs is None else [asdict(spec) for spec in desired.specs.values()],
        "errors": desired.errors, "runtime": desired.runtime,
        "passwords": dict(desired.passwords), "named": sorted(desired.named),
        "warnings": list(desired.warnings),
    }


def from_json(data: Mapping[str, Any]) -> Desired:
    specs = None
    if data["specs"] is not None:
        specs = {item["name"]: _spec(item) for item in data["specs"]}
    return Desired(specs, data["errors"], data["runtime"], dict(data["passwords"]), frozenset(data["named"]),
                   tuple(data.get("warnings", ())))


def _spec(item: Mapping[str, Any]) -> ServiceSpec:
    # Every list of a ServiceSpec is a tuple (command, devices, mounts, secrets).
    fields: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value for key, value in item.items()}
    return ServiceSpec(**fields)


def ask_child(command: tuple[str, ...], request: Mapping[str, Any], config_dir: Path,
              env: Mapping[str, str]) -> bytes | Desired:
    """Run a checking child with `request` (JSON) on its stdin: its stdout, or the refusal that
    says why there is none. Never raises: whatever happens to the child, the supervisor goes on.
    The child's stderr is the caller's: a crash of it shows there. Blocks until the child
    exits: call it in a thread from the event loop."""
    name = _name(command)
    try:
        # Its own session: a Ctrl-C meant for the supervisor does not interrupt the check.
        done = subprocess.run(command, input=json.dumps(request).encode(), stdout=subprocess.PIPE, env=dict(env),
                              start_new_session=True, check=False, timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return Desired(None, f"{config_dir}: the config could not be checked within {CHILD_TIMEOUT:.0f} s "
                             f"(`{name}` was stopped)")
    except OSError as exc:
        return _failed(config_dir, name, str(exc))
    if done.returncode != 0:
        return _failed(config_dir, name, f"exited with code {done.returncode}")
    return done.stdout


def _name(command: tuple[str, ...]) -> str:
    return f"python -m {command[2]}" if command[1:2] == ("-m",) else command[0]


def _failed(config_dir: Path, name: str, why: str) -> Desired:
    return Desired(None, f"{config_dir}: the config could not be checked (`{name}` failed: {why}; "
                         "a fieldgate bug: please report it with the config that caused it)")


def in_child(config_dir: Path, run_dir: RunDir, key: bytes, env: Mapping[str, str]) -> Desired:
    """Load DIR and build the process runtime's services in a child (see the module docstring).
    `env` is the environment DIR's `${VAR}`s are read from (the supervisor's own)."""
    request = {"config_dir": str(config_dir), "run_dir": str(run_dir.root), "key": key.hex()}
    answer = ask_child(CHILD, request, config_dir, env)
    if isinstance(answer, Desired):
        return answer
    try:
        return from_json(json.loads(answer))
    except (ValueError, KeyError, TypeError) as exc:
        return _failed(config_dir, _name(CHILD), str(exc))


def main() -> int:
    request = json.loads(sys.stdin.read())
    run_dir, key = RunDir(Path(request["run_dir"])), bytes.fromhex(request["key"])
    desired = in_process(lambda config: process_desired(config, run_dir, key), Path(request["config_dir"]))
    sys.stdout.write(json.dumps(to_json(desired)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
