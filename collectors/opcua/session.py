"""One OPC UA session to one device's server: the only module that uses asyncua's client.

A `Session` is an async context manager: entering it opens the secure channel (checking the
server certificate against the device's trust policy first), activates the session with the
configured user, and arms asyncua's keep-alive watchdog (it reads ServerStatus/State every
`watchdog` seconds and notices a closed socket at once). `lost` is set when the session is
gone; the owner then leaves the context and builds a new Session: asyncua's own reconnect is
not used because after a server restart the namespace array, and with it every `nsu=`
NodeId, may have changed, so everything is re-resolved on a fresh connect.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.common.subscription import DataChangeEvent, OverflowPolicy, StatusChangeEvent, Subscription
from asyncua.common.ua_utils import data_type_to_variant_type
from asyncua.crypto import security_policies

from collectors.core.errors import DeviceError
from collectors.core.model import Reading
from collectors.opcua import codec
from collectors.opcua.config import OpcuaDevice
from collectors.opcua.security import (
    APPLICATION_URI,
    SecurityError,
    application_certificate,
    check_server_certificate,
)

log = logging.getLogger(__name__)

_NSU = re.compile(r"^nsu=([^;]+);(.+)$")
_POLICY_URI = {
    "None": security_policies.SecurityPolicyNone.URI,
    "Basic128Rsa15": security_policies.SecurityPolicyBasic128Rsa15.URI,
    "Basic256": security_policies.SecurityPolicyBasic256.URI,
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256.URI,
}
_POLICY_CLASS: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic128Rsa15": security_policies.SecurityPolicyBasic128Rsa15,
    "Basic256": security_policies.SecurityPolicyBasic256,
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
}
# StatusCodes that say "these credentials or this certificate are refused", not "try again later"
_AUTH_CODES = {
    ua.StatusCodes.BadUserAccessDenied,
    ua.StatusCodes.BadIdentityTokenRejected,
    ua.StatusCodes.BadIdentityTokenInvalid,
    ua.StatusCodes.BadCertificateUntrusted,
    ua.StatusCodes.BadCertificateInvalid,
    ua.StatusCodes.BadSecurityChecksFailed,
    ua.StatusCodes.BadSecurityPolicyRejected,
    ua.StatusCodes.BadCertificateUriInvalid,
    ua.StatusCodes.BadUserSignatureInvalid,
}

# StatusCodes that mean the session or channel is gone, not that one request was refused
SESSION_LOST_CODES = {
    ua.StatusCodes.BadSessionIdInvalid,
    ua.StatusCodes.BadSessionClosed,
    ua.StatusCodes.BadSessionNotActivated,
    ua.StatusCodes.BadSecureChannelIdInvalid,
    ua.StatusCodes.BadSecureChannelClosed,
    ua.StatusCodes.BadConnectionClosed,
    ua.StatusCodes.BadNotConnected,
    ua.StatusCodes.BadServerHalted,
    ua.StatusCodes.BadShutdown,
    ua.StatusCodes.BadCommunicationError,
    ua.StatusCodes.BadTooManySessions,
}

# Server products (BuildInfo.ProductUri) whose deadband compares each sample with the previous
# sample: asyncua and python-opcua (FreeOpcUa) servers, asyncua 2.1 checked.
SAMPLE_DEADBAND_PRODUCTS = frozenset({"urn:freeopcua.github.io:python:server"})


@dataclass(frozen=True, slots=True)
class MonitorSpec:
    """One monitored item: what subscriptions.py asks the session to monitor."""

    node: ua.NodeId
    sampling_interval: float  # seconds
    queue_size: int
    deadband: float = 0.0
    deadband_type: str = "absolute"  # absolute | percent


@dataclass(frozen=True, slots=True)
class BrowsedVariable:
    node: str  # NodeId as written in a device file (nsu= form for non-zero namespaces)
    path: str  # browse path from the start node, BrowseNames joined by "."
    datatype: str
    writable: bool
    description: str | None


def describe_error(exc: BaseException) -> str:
    """A short, stable reason for a failure: the StatusCode name when there is one."""
    if isinstance(exc, ua.UaStatusCodeError):
        return codec.status_name(exc.code)
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


class Session:
    """A connected, activated session to one device (see the module docstring)."""

    def __init__(
        self, device: OpcuaDevice, state_dir: Path, password: str | None = None, watchdog: float | None = None
    ) -> None:
        self.device = device
        self._state_dir = state_dir
        self._password = password
        self._watchdog = watchdog if watchdog is not None else max(1.0, min(device.timeout, 5.0))
        self._client: Client | None = None
        self.lost = asyncio.Event()
        self._connected = False
        self.lost_reason = "session lost"
        self._namespaces: list[str] = []
        self._datatypes: dict[ua.NodeId, tuple[ua.VariantType, bool]] = {}
        self.max_nodes_per_read = 0  # the server's OperationLimits; 0: none
        self.max_items_per_call = 0
        self.product_uri = ""  # the server's BuildInfo.ProductUri

    # ------------------------------------------------------------------ connect / close

    async def __aenter__(self) -> Session:
        try:
            await self._connect()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    @property
    def client(self) -> Client:
        if self._client is None:
            raise DeviceError(self.device.name, "not connected")
        return self._client

    async def _connect(self) -> None:
        device = self.device
        security = device.security
        client = Client(device.endpoint, timeout=device.timeout, watchdog_intervall=self._watchdog)
        self._client = client
        client.application_uri = APPLICATION_URI
        client.name = client.description = f"fieldgate {device.name}"
        client.product_uri = "urn:fieldgate"
        # A session outlives short network cuts on the server side; ours is rebuilt anyway.
        client.session_timeout = 60_000
        if security.policy == "None" and self._password is not None:
            # validate refuses this without the opt-in; here too, in case a config got past it
            if not security.allow_password_without_encryption:
                raise SecurityError(
                    f"{device.name}: refusing to send the password of user {security.username!r} over "
                    "security policy None (readable, or encrypted to a certificate nobody checked); "
                    "choose a policy such as Basic256Sha256",
                    "BadSecurityModeInsufficient",
                )
            log.warning(
                "%s: sending the password of user %r over security policy None "
                "(allow_password_without_encryption: true)", device.name, security.username
            )
        if security.policy != "None":
            await self._set_security(client)
        if security.username is not None:
            client.set_user(security.username)
            if self._password is not None:
                client.set_password(self._password)
        if security.user_certificate is not None and security.user_private_key is not None:
            await client.load_client_certificate(str(security.user_certificate))
            await client.load_private_key(security.user_private_key)
        client.connection_lost_callback = self._on_lost
        try:
            await asyncio.wait_for(client.connect(auto_reconnect=False), device.timeout * 2)
            self._connected = True
        except ua.UaStatusCodeError as exc:
            if exc.code in _AUTH_CODES:
                who = f"user {security.username!r}" if security.username else "this client"
                name = codec.status_name(exc.code)
                raise SecurityError(f"{device.name}: the server refused {who}: {name}", name) from exc
            raise
        self._namespaces = await client.get_namespace_array()
        await self._read_limits()

    async def _read_limits(self) -> None:
        """The server's OperationLimits (Part 5, 6.3.11): reads and item creation are split to fit them;
        and its ProductUri (see `deadband_filter_usable`)."""
        limits = [
            ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
            ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
        ]
        params = ua.ReadParameters()
        params.NodesToRead = [
            ua.ReadValueId(NodeId=ua.NodeId(ua.Int32(i)), AttributeId=ua.AttributeIds.Value) for i in limits
        ]
        params.NodesToRead.append(
            ua.ReadValueId(
                NodeId=ua.NodeId(ua.Int32(ua.ObjectIds.Server_ServerStatus_BuildInfo_ProductUri)),
                AttributeId=ua.AttributeIds.Value,
            )
        )
        *values, product = await self.client.uaclient.read(params)
        found = []
        for dv in values:
            ok = dv.StatusCode is None or dv.StatusCode.is_good()
            number = dv.Value.Value if ok and dv.Value is not None else None
            found.append(int(number) if isinstance(number, int) and number > 0 else 0)  # 0: no limit
        self.max_nodes_per_read, self.max_items_per_call = found
        uri = product.Value.Value if product.Value is not None else None
        self.product_uri = uri if isinstance(uri, str) else ""

    @property
    def deadband_filter_usable(self) -> bool:
        """False for servers known to apply a DataChangeFilter's deadband against the previous
        sample instead of the last value reported (Part 4, 7.22.2): there a value creeping in
        steps smaller than the deadband would never be reported, so the collector asks for every
        change and applies the deadband itself."""
        return self.product_uri not in SAMPLE_DEADBAND_PRODUCTS

    async def _set_security(self, client: Client) -> None:
        device, security = self.device, self.device.security
        own = application_certificate(self._state_dir)
        endpoints = await asyncio.wait_for(client.connect_and_get_server_endpoints(), device.timeout)
        mode = getattr(ua.MessageSecurityMode, security.mode)
        uri = _POLICY_URI[security.policy]
        chosen = next((e for e in endpoints if e.SecurityMode == mode and e.SecurityPolicyUri == uri), None)
        if chosen is None:
            offered = sorted(
                {f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]},{e.SecurityMode.name}" for e in endpoints}
            )
            raise SecurityError(
                f"{device.name}: the server offers no endpoint with {security.policy},{security.mode}; "
                f"it offers: {', '.join(offered)}",
                "BadSecurityPolicyRejected",
            )
        der = _first_certificate(chosen.ServerCertificate)
        check_server_certificate(device.name, der, security.trust, self._state_dir, security.trust_dir)
        await client.set_security(
            _POLICY_CLASS[security.policy], str(own.cert), str(own.key), server_certificate=der, mode=mode
        )

    async def _on_lost(self, exc: Exception) -> None:
        self.lost_reason = describe_error(exc) if not isinstance(exc, ConnectionError) else "connection lost"
        self.lost.set()

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.connection_lost_callback = None
        if not self._connected:  # asyncua unwinds a failed connect itself; a cancelled one leaves the socket
            client.disconnect_socket()
            return
        if self.lost.is_set():
            # The transport is gone: tear down locally without waiting on a dead server.
            with suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 1.0)
            return
        try:
            await asyncio.wait_for(client.disconnect(), self.device.timeout)
        except (OSError, TimeoutError, ua.UaError, ConnectionError) as exc:
            log.debug("%s: disconnect: %s", self.device.name, exc)

    # ------------------------------------------------------------------ node ids

    def resolve(self, text: str) -> ua.NodeId:
        """A NodeId as written in a device file, with `nsu=` resolved against this server's namespaces."""
        match = _NSU.match(text)
        if match is None:
            return ua.NodeId.from_string(text)
        uri, rest = match.groups()
        try:
            index = self._namespaces.index(uri)
        except ValueError:
            raise DeviceError(
                self.device.name, "BadNodeIdUnknown", f"namespace {uri} is not on the server"
            ) from None
        node = ua.NodeId.from_string(rest)
        return ua.NodeId(node.Identifier, ua.Int16(index), node.NodeIdType)

    # ------------------------------------------------------------------ services

    async def read(self, nodes: Sequence[ua.NodeId]) -> list[ua.DataValue]:
        """Current values of `nodes` in one Read service call (more where the server's MaxNodesPerRead
        demands), with source timestamps."""
        values: list[ua.DataValue] = []
        for chunk in _chunks(nodes, self.max_nodes_per_read):
            params = ua.ReadParameters()
            params.MaxAge = 0
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            params.NodesToRead = [
                ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.Value) for node in chunk
            ]
            values.extend(await self.client.uaclient.read(params))
        return values

    async def read_readings(self, device: str, tags: Sequence[tuple[str, ua.NodeId]]) -> list[Reading]:
        values = await self.read([node for _, node in tags])
        return [codec.reading_of(device, name, dv) for (name, _), dv in zip(tags, values, strict=True)]

    async def variant_type(self, node: ua.NodeId) -> tuple[ua.VariantType, bool]:
        """The built-in type a write to `node` carries (from its DataType attribute), and if an array."""
        known = self._datatypes.get(node)
        if known is not None:
            return known
        params = ua.ReadParameters()
        params.NodesToRead = [
            ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.DataType),
            ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.ValueRank),
        ]
        datatype, rank = await self.client.uaclient.read(params)
        if datatype.StatusCode is not None:
            datatype.StatusCode.check()
        if datatype.Value is None or not isinstance(datatype.Value.Value, ua.NodeId):
            raise ua.UaStatusCodeError(ua.StatusCodes.BadNotReadable)
        dt_node = datatype.Value.Value
        vt = codec.variant_type_of(dt_node)
        if vt is None:  # a vendor or derived DataType: walk up to its built-in supertype
            vt = await data_type_to_variant_type(self.client.get_node(dt_node))
        # ValueRank (Part 3, 5.6.2): -1 scalar, -2 any, -3 scalar or 1-D, 0 or more: an array
        value_rank = rank.Value.Value if rank.Value is not None else -1
        array = isinstance(value_rank, int) and value_rank >= 0
        self._datatypes[node] = (vt, array)
        return vt, array

    async def datatypes(self, nodes: Sequence[ua.NodeId]) -> list[tuple[ua.VariantType, int] | None]:
        """Per node its built-in type (from the DataType attribute, derived types walked up) and its
        ValueRank, in one Read (more where MaxNodesPerRead demands); None where the server did not say."""
        found: list[tuple[ua.VariantType, int] | None] = []
        supertypes: dict[ua.NodeId, ua.VariantType] = {}
        per_read = self.max_nodes_per_read // 2 if self.max_nodes_per_read > 1 else 0
        for chunk in _chunks(nodes, per_read):
            params = ua.ReadParameters()
            params.NodesToRead = [
                ua.ReadValueId(NodeId=node, AttributeId=attribute)
                for node in chunk
                for attribute in (ua.AttributeIds.DataType, ua.AttributeIds.ValueRank)
            ]
            values = await self.client.uaclient.read(params)
            for datatype, rank in zip(values[::2], values[1::2], strict=True):
                dt = datatype.Value.Value if datatype.Value is not None else None
                good = datatype.StatusCode is None or datatype.StatusCode.is_good()
                if not good or not isinstance(dt, ua.NodeId):
                    found.append(None)
                    continue
                vt = codec.variant_type_of(dt)
                if vt is None:  # a vendor or derived DataType: its built-in supertype, once per DataType
                    vt = supertypes.get(dt)
                    if vt is None:
                        try:
                            vt = await data_type_to_variant_type(self.client.get_node(dt))
                        except ua.UaError as exc:
                            if isinstance(exc, ua.UaStatusCodeError) and exc.code in SESSION_LOST_CODES:
                                raise
                            found.append(None)
                            continue
                        supertypes[dt] = vt
                value_rank = rank.Value.Value if rank.Value is not None else None
                found.append((vt, value_rank if isinstance(value_rank, int) else -2))
        return found

    async def write(self, node: ua.NodeId, variant: ua.Variant) -> ua.StatusCode:
        params = ua.WriteParameters()
        params.NodesToWrite = [
            ua.WriteValue(NodeId=node, AttributeId=ua.AttributeIds.Value, Value=ua.DataValue(variant))
        ]
        (status,) = await self.client.uaclient.write(params)
        return status

    async def eu_range(self, node: ua.NodeId) -> tuple[float, float] | None:
        """The EURange property of an analog item (Part 8), or None when it has none."""
        try:
            child = await self.client.get_node(node).get_child("0:EURange")
            rng = await child.read_value()
        except (ua.UaError, ValueError):
            return None
        return (float(rng.Low), float(rng.High)) if rng is not None else None

    # ------------------------------------------------------------------ subscriptions

    async def subscribe(
        self, publishing_interval: float, items: Sequence[MonitorSpec], queue_maxsize: int
    ) -> tuple[Subscription, list[int | ua.StatusCode]]:
        """One subscription with `items`; per item its client handle, or the StatusCode that refused it.

        Items whose deadband filter the server refuses (Part 4, 7.22.2: BadFilterNotAllowed,
        BadMonitoredItemFilterUnsupported, BadDeadbandFilterInvalid) are created again without
        the filter; their handle is returned negated so the caller filters on its side.
        """
        sub = await self.client.create_subscription(
            publishing_interval * 1000, None, queue_maxsize=queue_maxsize, overflow=OverflowPolicy.WARN
        )
        requests = [self._item_request(sub, spec, with_filter=True) for spec in items]
        results: list[int | ua.StatusCode] = []
        for chunk in _chunks(requests, self.max_items_per_call):
            results.extend(await sub.create_monitored_items(chunk))
        handles: list[int | ua.StatusCode] = []
        retry: list[int] = []
        refused_filter = {
            ua.StatusCodes.BadFilterNotAllowed,
            ua.StatusCodes.BadMonitoredItemFilterUnsupported,
            ua.StatusCodes.BadDeadbandFilterInvalid,
            ua.StatusCodes.BadMonitoredItemFilterInvalid,
        }
        for index, (request, result) in enumerate(zip(requests, results, strict=True)):
            if isinstance(result, ua.StatusCode):
                handles.append(result)
                if result.value in refused_filter and request.RequestedParameters.Filter is not None:
                    retry.append(index)
            else:
                handles.append(request.RequestedParameters.ClientHandle)
        if retry:
            again = [self._item_request(sub, items[i], with_filter=False) for i in retry]
            for index, request, result in zip(
                retry, again, await sub.create_monitored_items(again), strict=True
            ):
                handles[index] = (
                    result if isinstance(result, ua.StatusCode) else -request.RequestedParameters.ClientHandle
                )
        return sub, handles

    @staticmethod
    def _item_request(
        sub: Subscription, spec: MonitorSpec, with_filter: bool
    ) -> ua.MonitoredItemCreateRequest:
        params = ua.MonitoringParameters()
        sub._client_handle += 1  # asyncua keeps the handle counter on the subscription; share it
        params.ClientHandle = sub._client_handle
        params.SamplingInterval = spec.sampling_interval * 1000
        params.QueueSize = spec.queue_size
        params.DiscardOldest = True
        if with_filter and spec.deadband > 0:
            flt = ua.DataChangeFilter()
            flt.Trigger = ua.DataChangeTrigger.StatusValue
            flt.DeadbandType = (
                ua.DeadbandType.Percent if spec.deadband_type == "percent" else ua.DeadbandType.Absolute
            )
            flt.DeadbandValue = spec.deadband
            params.Filter = flt
        request = ua.MonitoredItemCreateRequest()
        request.ItemToMonitor = ua.ReadValueId(NodeId=spec.node, AttributeId=ua.AttributeIds.Value)
        request.MonitoringMode = ua.MonitoringMode.Reporting
        request.RequestedParameters = params
        return request

    async def consume(self, sub: Subscription, on_change: Callable[[int, ua.DataValue], None]) -> None:
        """Call `on_change(client handle, DataValue)` per data change until the subscription or the
        session ends. A plain callback, not another async iterator: it runs ~10^4 times a second."""
        async for event in sub:
            if type(event) is DataChangeEvent:
                item = event.data.monitored_item
                on_change(item.ClientHandle, item.Value)
            elif isinstance(event, StatusChangeEvent):
                status = event.notification.Status
                if not status.is_good():  # e.g. BadTimeout: the server dropped the subscription
                    self.lost_reason = codec.status_name(status)
                    self.lost.set()
                    return

    # ------------------------------------------------------------------ browse

    async def browse_variables(self, start: str, depth: int) -> AsyncIterator[BrowsedVariable]:
        """Variables below `start` (hierarchical references, `depth` levels), for `fieldgate opcua browse`."""
        client = self.client
        root = client.get_node(self.resolve(start))
        seen: set[ua.NodeId] = set()
        frontier: list[tuple[Any, str]] = [(root, "")]
        for _ in range(depth):
            next_frontier: list[tuple[Any, str]] = []
            for node, path in frontier:
                try:
                    children = await node.get_children(
                        nodeclassmask=ua.NodeClass.Object | ua.NodeClass.Variable
                    )
                except ua.UaError as exc:
                    log.debug("browse %s: %s", node, exc)
                    continue
                for child in children:
                    if child.nodeid in seen or child.nodeid.NamespaceIndex == 0:
                        continue
                    seen.add(child.nodeid)
                    name = (await child.read_browse_name()).Name
                    child_path = f"{path}.{name}" if path else name
                    if await child.read_node_class() == ua.NodeClass.Variable:
                        yield await self._describe(child, child_path)
                    next_frontier.append((child, child_path))
            frontier = next_frontier

    async def _describe(self, node: Any, path: str) -> BrowsedVariable:
        nodeid: ua.NodeId = node.nodeid
        uri = (
            self._namespaces[nodeid.NamespaceIndex] if nodeid.NamespaceIndex < len(self._namespaces) else None
        )
        text = str(nodeid.to_string())
        if uri is not None and nodeid.NamespaceIndex != 0:
            text = f"nsu={uri};" + text.split(";", 1)[1]
        dt_name: str
        try:
            dt = await node.read_data_type()
            dt_name = str((await self.client.get_node(dt).read_browse_name()).Name)
        except ua.UaError:
            dt_name = "?"
        try:
            access = await node.read_attribute(ua.AttributeIds.UserAccessLevel)
            writable = bool(access.Value.Value & ua.AccessLevel.CurrentWrite.mask)
        except (ua.UaError, AttributeError, TypeError):
            writable = False
        try:
            desc = (await node.read_description()).Text or None
        except ua.UaError:
            desc = None
        return BrowsedVariable(text, path, dt_name, writable, desc)

    @property
    def namespaces(self) -> list[str]:
        return list(self._namespaces)


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """`items` in pieces of at most `size` (0: one piece)."""
    if size <= 0 or len(items) <= size:
        return [items]
    return [items[i : i + size] for i in range(0, len(items), size)]


def _first_certificate(der: bytes) -> bytes:
    """The server's own certificate from a DER chain (a SEQUENCE with a 2-byte length comes first)."""
    if len(der) > 4 and der[0] == 0x30 and der[1] == 0x82:
        return der[: int.from_bytes(der[2:4], "big") + 4]
    return der
