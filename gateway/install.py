"""`fieldgate install DIR`: the systemd unit that runs `fieldgate up DIR --runtime docker` at boot.

The unit is a template shipped in the package (gateway/fieldgate@.service); its instance name
is DIR escaped as systemd escapes paths, so one machine can run several config directories.
What is particular to DIR goes into a drop-in beside it: the flags of `fieldgate up` and a
stop timeout that covers DIR's stop grace periods, since the supervisor stops its services one
after the other at shutdown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

from collectors.core.errors import FieldgateError

UNIT = "fieldgate@.service"
SHIPPED_EXEC = "/usr/local/bin/fieldgate"  # the path the shipped file names; install puts the real one
UNIT_DIR = Path("etc/systemd/system")
STOP_MARGIN = 30.0  # seconds for the Engine's own work: stop calls, removing, the last status write


class InstallError(FieldgateError):
    """The unit could not be written or enabled."""


def escape_path(path: str) -> str:
    """`systemd-escape --path`: /etc/fieldgate/plant -> etc-fieldgate-plant (systemd.unit(5), "String Escaping")."""
    trimmed = "/".join(part for part in path.split("/") if part)
    if not trimmed:
        return "-"
    out = []
    for i, char in enumerate(trimmed):
        if char == "/":
            out.append("-")
        elif (char.isascii() and (char.isalnum() or char in ":_")) or (char == "." and i > 0):
            out.append(char)
        else:
            out.append("".join(f"\\x{byte:02x}" for byte in char.encode()))
    return "".join(out)


def shipped_unit() -> str:
    return (files("gateway") / UNIT).read_text()


def executable() -> str:
    """The `fieldgate` this install runs: the script on PATH, else this interpreter with -m."""
    found = shutil.which("fieldgate")
    return str(Path(found).resolve()) if found else f"{sys.executable} -m gateway.cli"


def unit_text(exec_path: str) -> str:
    text = shipped_unit()
    if f"ExecStart={SHIPPED_EXEC} " not in text:
        raise InstallError(f"the shipped {UNIT} no longer starts {SHIPPED_EXEC}; fix install.py")
    return text.replace(f"ExecStart={SHIPPED_EXEC} ", f"ExecStart={exec_path} ")


def stop_timeout(graces: list[float]) -> int:
    """Seconds systemd waits after SIGTERM: the services stop one after the other, then a margin."""
    return int(sum(graces) + STOP_MARGIN)


def drop_in_text(config_dir: Path, flags: list[str], timeout: int) -> str:
    return (
        f"# Written by `fieldgate install {config_dir}`; run it again rather than editing this file.\n"
        "[Service]\n"
        f"Environment=FIELDGATE_FLAGS={' '.join(flags)}\n"
        f"TimeoutStopSec={timeout}s\n"
    )


def grace_periods(config_dir: Path) -> list[float]:
    """Each service's stop grace period in seconds, as `fieldgate up` would render DIR."""
    from gateway.compose import render_loaded
    from gateway.config import load_config
    from gateway.runtime.containers import parse_seconds

    project = render_loaded(load_config(config_dir), config_dir)
    return [parse_seconds(str(s.compose.get("stop_grace_period", "10s"))) for s in project.services.values()]


def install(config_dir: Path, flags: list[str], root: Path | None) -> list[str]:
    """Write the unit and DIR's drop-in, enable the instance; returns what was done, one line each."""
    config_dir = config_dir.resolve()
    try:
        graces = grace_periods(config_dir)
    except (FieldgateError, ValueError, OSError) as exc:
        raise InstallError(f"{config_dir} is not valid, nothing installed:\n{exc}") from exc
    instance = f"fieldgate@{escape_path(str(config_dir))}.service"
    unit_dir = (root or Path("/")) / UNIT_DIR
    done: list[str] = []
    unit_dir.mkdir(parents=True, exist_ok=True)
    exec_path = executable()
    (unit_dir / UNIT).write_text(unit_text(exec_path))
    done.append(f"wrote {unit_dir / UNIT} (ExecStart {exec_path} up %f --runtime docker)")
    drop_dir = unit_dir / f"{instance}.d"
    drop_dir.mkdir(exist_ok=True)
    timeout = stop_timeout(graces)
    (drop_dir / "fieldgate.conf").write_text(drop_in_text(config_dir, flags, timeout))
    done.append(f"wrote {drop_dir / 'fieldgate.conf'} (flags: {' '.join(flags) or 'none'}; "
                f"TimeoutStopSec={timeout}s for {len(graces)} services)")
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        done.append(f"no systemctl here: enable it on the target with `systemctl enable {instance}`")
        return done
    booted = root is None and os.path.isdir("/run/systemd/system")
    commands = [[systemctl, "daemon-reload"]] if booted else []
    commands.append([systemctl, *([f"--root={root}"] if root else []), "enable", instance])
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise InstallError(f"{' '.join(command)} failed: {(result.stderr or result.stdout).strip()}")
        done.append(f"ran {' '.join(command)}")
    if booted:
        done.append(f"starts at boot; start it now with `systemctl start {instance}`")
    else:
        done.append(f"enabled {instance}: it starts at the next boot (systemd is not running here)")
    return done


def main_install(args: argparse.Namespace) -> int:
    flags = ["--trusted-images"] if getattr(args, "trusted_images", False) else []
    try:
        for line in install(args.dir, flags, getattr(args, "root", None)):
            print(line)
    except (InstallError, OSError) as exc:
        print(f"fieldgate install: {exc}", file=sys.stderr)
        return 1
    return 0
