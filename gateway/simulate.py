"""`fieldgate simulate FILE...`: serve the devices that device files describe, for tests and demos.

Modbus devices are served by collectors.modbus.simulator (TCP, or RTU on a serial port or a
pty pair it creates), OPC UA devices by collectors.opcua.simulator. Each listens where its file
says, or on --host with the file's port. Files load as in a config directory (gateway.config:
${VAR}, errors as file:line:column), without the cross-file checks.
One line per device says where it listens; Ctrl-C (or SIGTERM) stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from collectors.core.errors import FieldgateError
from collectors.core.service import run_service, setup_logging
from collectors.core.simulate import bind_problem
from gateway.config import ConfigErrors, load_device_files

log = logging.getLogger(__name__)


async def simulate(devices: Sequence[Any], host: str | None) -> None:
    """Serve `devices` until cancelled, printing where each one listens."""
    modbus = [d for d in devices if d.protocol == "modbus"]
    opcua = [d for d in devices if d.protocol == "opcua"]
    async with contextlib.AsyncExitStack() as stack:
        if modbus:
            from collectors.modbus.simulator import ModbusSimulator

            sim = await stack.enter_async_context(ModbusSimulator(modbus, host=host))
            for device in modbus:
                print(sim.describe(device.name), flush=True)
        if opcua:
            await _serve_opcua(stack, opcua, host)
        print(f"simulating {len(devices)} device(s); Ctrl-C stops", flush=True)
        await asyncio.Event().wait()


async def _serve_opcua(stack: contextlib.AsyncExitStack, devices: Sequence[Any], host: str | None) -> None:
    """One OpcuaSimulator per listening address: --host, else each endpoint's own host."""
    try:
        from collectors.opcua.simulator import OpcuaSimulator
    except ImportError as exc:  # a Modbus-only install (no asyncua): serve what we can, say so
        for device in devices:
            print(f"{device.name}: not served: the opcua simulator needs fieldgate[opcua] ({exc})",
                  flush=True)
        return
    logging.getLogger("asyncua").setLevel(logging.WARNING)  # it logs every session at INFO
    by_host: dict[str, list[Any]] = {}
    for device in devices:
        by_host.setdefault(host or urlparse(device.endpoint).hostname or "127.0.0.1", []).append(device)
    for address, group in by_host.items():
        for device in group:
            port = urlparse(device.endpoint).port or 4840
            if problem := bind_problem(address, port):
                raise FieldgateError(f"{device.name}: cannot listen on {address}:{port}: {problem}")
        sim = await stack.enter_async_context(OpcuaSimulator(group, host=address))
        for device in group:
            print(f"{device.name}: opcua {sim.endpoints[device.name]}", flush=True)


def main_simulate(args: argparse.Namespace) -> int:
    setup_logging("INFO" if getattr(args, "verbose", False) else "WARNING", name="simulate")
    try:
        devices = [entry.device for entry in load_device_files(args.files)]
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        run_service(simulate(devices, args.host))
    except FieldgateError as exc:
        print(f"fieldgate simulate: {exc}", file=sys.stderr)
        return 1
    print("simulator stopped", flush=True)
    return 0
