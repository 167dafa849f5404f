"""`fieldgate opcua browse ENDPOINT`: the variables of a server as device-file tag entries, ready to paste.

Walks hierarchical references from `--node` (default: the Objects folder) `--depth` levels
down and prints one `tags:` entry per variable outside namespace 0: the NodeId in its `nsu=`
form (it survives a server that renumbers its namespaces), `writable: true` where the
user's access level allows writes, and the DataType and description as comments. Names come
from the BrowseName, made topic-safe, and from the browse path where two would clash.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

from pydantic import ValidationError

from collectors.core.errors import FieldgateError
from collectors.opcua.config import OpcuaDevice
from collectors.opcua.session import BrowsedVariable, Session, describe_error

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]+")


def tag_name(text: str) -> str:
    """A BrowseName or path as a tag name (one MQTT topic level)."""
    name = _UNSAFE.sub("_", text).strip("_.:-")
    return (name or "tag")[:64]


def render(variables: list[BrowsedVariable], endpoint: str, start: str, depth: int) -> str:
    """The `tags:` block for `variables` (pure, so it is tested without a server)."""
    short = [tag_name(v.path.rsplit(".", 1)[-1]) for v in variables]
    clashes = {n for n in short if short.count(n) > 1}
    lines = [f"# {endpoint}: {len(variables)} variables below {start} (depth {depth})", "tags:"]
    used: set[str] = set()
    for variable, name in zip(variables, short, strict=True):
        if name in clashes:
            name = tag_name(variable.path)
        base, n = name, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        lines.append(f"  - name: {name}")
        lines.append(f"    node: {_quote(variable.node)}")
        if variable.writable:
            lines.append("    writable: true")
        described = variable.description and variable.description != variable.path.rsplit(".", 1)[-1]
        comment = variable.datatype + (f": {variable.description}" if described else "")
        lines.append(f"    # {variable.path} ({comment})")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fieldgate" / "browse"


def _device(args: argparse.Namespace) -> OpcuaDevice:
    policy, mode = "None", "None"
    if args.security:
        policy, _, mode = str(args.security).partition(",")
    security: dict[str, object] = {"policy": policy, "mode": mode or "SignAndEncrypt"}
    if args.username:
        security["username"] = args.username
    if args.password_file:  # without --username the model says "a password needs a username"
        security["password_file"] = args.password_file
    # A session needs a device; a tag on the server's clock makes it a valid one.
    where = urlparse(args.endpoint)
    return OpcuaDevice.model_validate(
        {
            "name": tag_name(where.netloc or "server"),
            "protocol": "opcua",
            "endpoint": args.endpoint,
            "security": security,
            "tags": [{"name": "server_time", "node": "i=2258"}],
        }
    )


async def browse(args: argparse.Namespace) -> str:
    device = _device(args)
    password = args.password_file.read_text().strip() if args.password_file else None
    async with Session(device, _state_dir(), password) as session:
        found = [v async for v in session.browse_variables(args.node, args.depth)]
    return render(found, args.endpoint, args.node, args.depth)


def main_browse(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    try:
        text = asyncio.run(browse(args))
    except ValidationError as exc:
        for err in exc.errors():
            print(f"fieldgate opcua browse: {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr)
        return 2
    except FieldgateError as exc:
        print(f"fieldgate opcua browse: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # unreachable, timed out, or any of asyncua's errors: one line, no traceback
        print(f"fieldgate opcua browse: {args.endpoint}: {describe_error(exc)}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
