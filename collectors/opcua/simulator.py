"""An OPC UA server that serves opcua device files: for `fieldgate simulate`, the demo and tests.

API (gateway/simulate.py uses it)::

    async with OpcuaSimulator(devices, host="127.0.0.1", state_dir=None, tick=0.1) as sim:
        sim.endpoints["oven-2"]            # "opc.tcp://127.0.0.1:4840"
        ...                                # serving until the block ends
    await serve_opcua(devices, host)       # the same, until cancelled

One asyncua Server per device, listening on `host` and the port (and path) of the device's
`endpoint`. Every tag's node is created with the NodeId written in the file: namespaces are
registered until the `ns=` index exists (`nsu=` URIs are registered as written), string and
numeric identifiers as given. Values move per the tag's `simulate:` key with the signals of
collectors.core.simulate (every `tick` seconds); writable tags accept writes and then keep the
written value. A deadband a client asks for (absolute DataChangeFilter) is applied as Part 4,
7.22.2 says: against the last value sent to that client, so a value creeping in steps smaller
than the deadband is still reported once it has moved more (asyncua's own server compares each
sample with the previous sample and never reports such a value; see `_PartFourMonitoredItems`).
Endpoints: security None, and Basic256Sha256 SignAndEncrypt. When the device
file names a `username`, only that user with its password (`password` / `password_file`) may
connect; otherwise anonymous sessions are allowed. The server certificate is generated on
first start into `state_dir` (default: a directory in the system temp dir) and reused, so a
restarted simulator keeps the identity a `trust: tofu` collector pinned.

`python -m collectors.opcua.simulator FILE... [--host H] [--state-dir D] [--tick S]` runs it
as a process (tests use this to kill and restart a server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.monitored_item_service import MonitoredItemService
from cryptography.x509.oid import ExtendedKeyUsageOID

from collectors.core.config import read_secret
from collectors.core.simulate import Signal, signal_for
from collectors.opcua.config import OpcuaDevice, OpcuaTag

log = logging.getLogger(__name__)

PRODUCT_URI = "urn:fieldgate:simulator"  # not asyncua's: this server applies deadbands as Part 4 says

_NS = re.compile(r"^ns=(\d+);(.+)$")
_NSU = re.compile(r"^nsu=([^;]+);(.+)$")


class _Users:
    """Anonymous when the device names no user; else exactly its username and password."""

    def __init__(self, username: str | None, password: str | None) -> None:
        self._username = username
        self._password = password

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if self._username is None:
            return User(role=UserRole.User)
        if username == self._username and password == self._password:
            return User(role=UserRole.User, name=username)
        return None


class _PartFourMonitoredItems(MonitoredItemService):
    """asyncua's monitored items, with the data change filter of Part 4, 7.22.2.

    asyncua (2.1) decides "changed" and "deadband exceeded" by comparing each new sample with
    the previous sample. Part 4 compares it with the last value queued for the client, which is
    what makes a deadband report a slow ramp: 0.0, 0.05, 0.10, 0.15 with deadband 0.1 reports
    0.0 and 0.15 there, and only 0.0 with asyncua. Here the item's "current" DataValue is the
    last one reported, and a sample that does not pass leaves it as it was.
    """

    async def datachange_callback(
        self, handle: int, value: ua.DataValue, error: ua.StatusCode | None = None
    ) -> None:
        if error:
            await super().datachange_callback(handle, value, error)
            return
        mid = self._monitored_datachange[handle]
        mdata = self._monitored_items[mid]
        if mdata.mode == ua.MonitoringMode.Disabled:
            return
        values = mdata.mvalue
        values.set_current_datavalue(value)  # the last reported one becomes "old"
        flt = mdata.filter
        if flt:
            passed = self._is_data_changed(values, flt.Trigger) and self._is_deadband_exceeded(values, flt)
        else:
            passed = self._is_data_changed(values, ua.DataChangeTrigger.StatusValue)
        if not passed:
            values.current_dvalue = values.old_dvalue  # still the last value the client was sent
            return
        event = ua.MonitoredItemNotification()
        event.ClientHandle = mdata.client_handle
        event.Value = value
        await self.isub.enqueue_datachange_event(mid, event, mdata.queue_size)


def _apply_deadbands_as_part_four(server: Server) -> None:
    """Every subscription created on `server` gets `_PartFourMonitoredItems` (this server only)."""
    service = server.iserver.subscription_service
    create = service.create_subscription

    async def create_subscription(*args: Any, **kwargs: Any) -> ua.CreateSubscriptionResult:
        result = await create(*args, **kwargs)
        subscription = service.subscriptions.get(result.SubscriptionId)
        if subscription is not None:  # no monitored item exists yet: swap the class before any does
            subscription.monitored_item_srv.__class__ = _PartFourMonitoredItems
        return result

    service.create_subscription = create_subscription  # type: ignore[method-assign]


class _Variable:
    __slots__ = ("kind", "moves", "node", "signal")

    def __init__(self, node: Any, signal: Signal, kind: Kind, moves: bool) -> None:
        self.node = node
        self.signal = signal
        self.kind = kind  # number | bool | text
        self.moves = moves


Kind = Literal["number", "bool", "text"]


def _kind_of(tag: OpcuaTag) -> Kind:
    value = tag.simulate.value if tag.simulate is not None else None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "text"
    return "number"


_VARIANT = {"number": ua.VariantType.Double, "bool": ua.VariantType.Boolean, "text": ua.VariantType.String}


def _value(var: _Variable, t: float) -> Any:
    if var.kind == "bool":
        return var.signal.bool_at(t)
    if var.kind == "text":
        return str(var.signal.at(t))
    return var.signal.number_at(t)


class OpcuaSimulator:
    """Serves `devices` (see the module docstring); an async context manager."""

    def __init__(
        self,
        devices: Sequence[OpcuaDevice],
        host: str | None = "127.0.0.1",
        state_dir: Path | None = None,
        tick: float = 0.1,
    ) -> None:
        self.devices = list(devices)
        self.host = host or "127.0.0.1"
        self.state_dir = state_dir or Path(tempfile.gettempdir()) / "fieldgate-opcua-simulator"
        self.tick = tick
        self.endpoints: dict[str, str] = {}
        self.servers: dict[str, Server] = {}
        self.variables: dict[str, dict[str, _Variable]] = {}
        self._mover: asyncio.Task[None] | None = None
        self._started = time.monotonic()

    async def __aenter__(self) -> OpcuaSimulator:
        try:
            for device in self.devices:
                await self._start(device)
        except BaseException:
            await self._stop_servers()
            raise
        self._mover = asyncio.create_task(self._move(), name="opcua-simulator-mover")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._mover is not None:
            self._mover.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mover
        await self._stop_servers()

    async def _stop_servers(self) -> None:
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                await server.stop()
        self.servers.clear()

    async def _start(self, device: OpcuaDevice) -> None:
        url = urlparse(device.endpoint)
        port = url.port or 4840
        endpoint = f"opc.tcp://{self.host}:{port}{url.path}"
        server = Server(
            user_manager=_Users(  # type: ignore[arg-type]
                device.security.username, read_secret(device.security.password, device.security.password_file)
            )
        )
        server.product_uri = PRODUCT_URI
        server.manufacturer_name = "fieldgate"
        await server.init()
        _apply_deadbands_as_part_four(server)
        server.set_endpoint(endpoint)
        server.set_server_name(f"fieldgate simulator {device.name}")
        await server.set_application_uri(f"urn:fieldgate:simulator:{device.name}")
        server.set_security_policy(
            [
                ua.SecurityPolicyType.NoSecurity,
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ]
        )
        tokens: list[type] = [ua.UserNameIdentityToken]
        if device.security.username is None:
            tokens.insert(0, ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        certs = self.state_dir / device.name
        certs.mkdir(parents=True, exist_ok=True)
        key_file, cert_file = certs / "server-key.pem", certs / "server-cert.der"
        await setup_self_signed_certificate(
            key_file,
            cert_file,
            f"urn:fieldgate:simulator:{device.name}",
            socket.gethostname(),
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            {},
        )
        await server.load_certificate(str(cert_file))
        await server.load_private_key(str(key_file))
        folder = await server.nodes.objects.add_folder(
            ua.NodeId.from_string(f"ns=1;s=fieldgate.{device.name}"), device.name
        )
        variables: dict[str, _Variable] = {}
        for tag in device.tags:
            nodeid = await self._nodeid(server, tag.node)
            kind = _kind_of(tag)
            signal = signal_for(
                tag.simulate, device=device.name, tag=tag.name, shape=kind, writable=tag.writable
            )
            var = _Variable(None, signal, kind, moves=not tag.writable and signal.spec.kind != "constant")
            node = await folder.add_variable(
                nodeid, ua.QualifiedName(tag.name, nodeid.NamespaceIndex), _value(var, 0.0), _VARIANT[kind]
            )
            if tag.description:
                await node.write_attribute(
                    ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(tag.description)))
                )
            if tag.writable:
                await node.set_writable()
            var.node = node
            variables[tag.name] = var
        await server.start()
        self.servers[device.name] = server
        self.variables[device.name] = variables
        self.endpoints[device.name] = endpoint
        log.info("%s: serving %d tags on %s", device.name, len(device.tags), endpoint)

    @staticmethod
    async def _nodeid(server: Server, text: str) -> ua.NodeId:
        match = _NSU.match(text)
        if match is not None:
            uri, rest = match.groups()
            index = await server.register_namespace(uri)
        else:
            match = _NS.match(text)
            index, rest = (int(match.group(1)), match.group(2)) if match else (0, text)
            while len(await server.get_namespace_array()) <= index:
                count = len(await server.get_namespace_array())
                await server.register_namespace(f"urn:fieldgate:simulator:ns{count}")
        parsed = ua.NodeId.from_string(rest)
        return ua.NodeId(parsed.Identifier, ua.Int16(index), parsed.NodeIdType)

    async def _move(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            t = time.monotonic() - self._started
            now = ua.DateTime.now(UTC)
            for device, variables in self.variables.items():
                server = self.servers.get(device)
                if server is None:
                    continue
                for var in variables.values():
                    if not var.moves:
                        continue
                    value = ua.DataValue(
                        ua.Variant(_value(var, t), _VARIANT[var.kind]),
                        SourceTimestamp=now,
                        ServerTimestamp=now,
                    )
                    await server.write_attribute_value(var.node.nodeid, value)
            next_at += self.tick
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if next_at < loop.time() - self.tick:
                next_at = loop.time()


async def serve_opcua(
    devices: Sequence[OpcuaDevice], host: str | None = "127.0.0.1", state_dir: Path | None = None
) -> None:
    """Serve `devices` until cancelled."""
    async with OpcuaSimulator(devices, host, state_dir) as sim:
        for name, endpoint in sim.endpoints.items():
            print(f"{name}: opcua {endpoint}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    import yaml

    from collectors.core.service import run_service, setup_logging

    parser = argparse.ArgumentParser(
        prog="python -m collectors.opcua.simulator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--tick", type=float, default=0.1, help="seconds between value updates")
    args = parser.parse_args(argv)
    setup_logging("INFO", "opcua-simulator")
    logging.getLogger("asyncua").setLevel(logging.WARNING)
    devices = [OpcuaDevice.model_validate(yaml.safe_load(path.read_text())) for path in args.files]

    async def run() -> None:
        async with OpcuaSimulator(devices, args.host, args.state_dir, args.tick) as sim:
            for name, endpoint in sim.endpoints.items():
                print(f"{name}: opcua {endpoint}", flush=True)
            await asyncio.Event().wait()

    return run_service(run())


if __name__ == "__main__":
    sys.exit(main())
