"""The seam between the forwarder and a payload format (json, Sparkplug B).

The forwarder (app.py) owns the broker session (mqtt.py), the store-and-forward buffer
(buffer.py) and write routing; a format only turns readings and events into MQTT
messages and incoming messages into actions. It never touches paho, the disk or the
hand-off, so it is a pure, testable object. The forwarder calls it from one asyncio
task, never concurrently.

Life of a session, as the forwarder drives it::

    clean_session, will()       read before every CONNECT (will() may bump Sparkplug's bdSeq)
    CONNACK -> subscribe(subscriptions()), publish(connected())
    while connected:
        ready?  -> yes: take a batch (live or replayed) and publish(encode(batch, historical))
                   no : readings stay in the buffer (on disk in `outage` durability)
        device_state(state)         in order with the live readings around it
        handle_incoming(topic, payload) -> Incoming: publish its messages, route its writes,
                                           disconnect when it asks (Sparkplug primary host offline)
        write_result(result)        the collector's answer (or the forwarder's refusal)
    any time: reload(change)        a new catalog (SIGHUP): what to tell about the changed devices;
                                    published at once while connected (the session goes on)
    connection lost -> connection_lost(graceful=False); shutdown -> publish(disconnecting()),
                       then a clean DISCONNECT and connection_lost(graceful=True)

Optional, looked up with getattr: `observe(readings)` sees readings as they reach the
forwarder, before they are buffered for publishing; `tick() -> list[OutMessage]` is called
while connected after each hand-off batch and every 0.25 s, and what it returns is
published before the forwarder checks `ready` again (Sparkplug: births held until the first
values tell the datatypes); `register_metrics(metrics)` adds a format's own counters.

Delivery: a batch leaves the buffer once every message `encode` made for it is delivered:
PUBACK (QoS 1), PUBCOMP (QoS 2), or written to the socket (QoS 0). After a reconnect what
was not delivered is encoded again, in order. `historical` is True for readings that did
not go out live: taken while the session was down or not `ready`, restored after a
forwarder restart, or resent from the `resend_window`.

`resend_window` (seconds, 0 = none): after an ungraceful loss the forwarder re-queues, as
historical, every reading it published in that window before the loss was noticed. QoS 0
data (Sparkplug) written to a dead socket vanishes without an error for up to 1.5 x
keep-alive; json at QoS >= 1 does not need it. The resent readings go to the back of the
replay lane, so a host sees them after older replayed readings (they carry their own
timestamps, flagged historical). The window holds at most app.RESEND_MAX readings.

Errors: a format never raises for bad input from the broker; it answers with an error
message in `Incoming.messages` (json `/set/result`) or logs and ignores it. A command
payload (`/set`, NCMD, DCMD) over `MAX_COMMAND_BYTES` is refused before it is parsed, and
what a refusal or a log line echoes of the input is cut to a few dozen characters
(`quarantine.shorten`): a 7.9 MB `/set` once came back as a 7.9 MB `/set/result`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

from collectors.core.model import DeviceState, Reading, WriteRequest, WriteResult

# The largest `/set`, NCMD or DCMD payload taken: a write carries one value (a string tag at
# most a few hundred bytes), a DCMD a few hundred metrics.
MAX_COMMAND_BYTES = 64 * 1024
ERROR_ECHO = 300  # characters of a write's error text published or logged (it may quote the value)
ID_ECHO = 128  # characters of a write's id echoed back

if TYPE_CHECKING:
    from collectors.forwarder.config import CatalogDevice, ForwarderConfig


class OutMessage(NamedTuple):
    """One MQTT message to publish (a NamedTuple: layout tag makes one per reading)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(slots=True)
class Incoming:
    """What the forwarder does about one incoming message."""

    messages: list[OutMessage] = field(default_factory=list)
    """Publish these now (error answers, rebirths, NDEATH before a disconnect)."""
    writes: list[WriteRequest] = field(default_factory=list)
    """Route these to the collector owning the device. The forwarder checks the catalog
    (known device and tag, tag writable, collector connected, answer within the write
    timeout) and calls `write_result` with its own refusal when one fails."""
    reconnect: bool = False
    """Publish `messages`, disconnect cleanly and connect again (Sparkplug: the primary host
    went offline; data is held in the buffer until the format is `ready` again)."""


class PayloadFormat(Protocol):
    """A payload format. Build one with `create_format(config)`."""

    clean_session: bool
    """json: False is allowed; Sparkplug B 3.0 requires True."""
    resend_window: float
    """Seconds of published readings to resend as historical after an ungraceful loss."""

    @property
    def ready(self) -> bool:
        """True while data may be published (json: connected; Sparkplug: births are out)."""
        ...

    def subscriptions(self) -> list[tuple[str, int]]:
        """(topic filter, qos) to subscribe to after every CONNACK."""
        ...

    def will(self) -> OutMessage | None:
        """The last will for the next CONNECT; called before every connection attempt."""
        ...

    def connected(self) -> list[OutMessage]:
        """The session is up: status `online`, or NBIRTH + DBIRTHs (none while a primary host is awaited)."""
        ...

    def connection_lost(self, graceful: bool) -> None:
        """The session ended (graceful: we disconnected on purpose)."""
        ...

    def disconnecting(self) -> list[OutMessage]:
        """Messages to publish before a clean shutdown (status `offline`, NDEATH)."""
        ...

    def encode(self, readings: list[Reading], historical: bool) -> list[OutMessage]:
        """Messages carrying these readings, in their order (per tag order must be kept)."""
        ...

    def device_state(self, state: DeviceState) -> list[OutMessage]:
        """A device went offline/online (Sparkplug DDEATH/DBIRTH); [] when not ready."""
        ...

    def handle_incoming(self, topic: str, payload: bytes) -> Incoming:
        """A message on one of `subscriptions()`; never raises."""
        ...

    def write_result(self, result: WriteResult) -> list[OutMessage]:
        """The answer to a write that `handle_incoming` asked for."""
        ...

    def reload(self, change: CatalogChange) -> list[OutMessage]:
        """A new catalog, taken in place (the forwarder's reload on SIGHUP): what to publish now
        about the changed devices only (Sparkplug: their DBIRTH or DDEATH; json: the retained
        messages of removed tags cleared). The session goes on."""
        ...


@dataclass(frozen=True, slots=True)
class CatalogChange:
    """What a reload changed in the catalog, device by device (app.py computes it)."""

    devices: list[CatalogDevice]  # the new catalog, in its order
    changed: frozenset[str]  # devices added, or whose tags (names, types, units, writable) changed
    removed: frozenset[str]  # devices no longer in the catalog
    removed_tags: frozenset[tuple[str, str]]  # (device, tag) no longer in it, removed devices' included

    @classmethod
    def between(cls, old: list[CatalogDevice], new: list[CatalogDevice]) -> CatalogChange:
        before = {device.name: device for device in old}
        after = {device.name: device for device in new}
        gone = {(device.name, tag.name) for device in old for tag in device.tags}
        gone -= {(device.name, tag.name) for device in new for tag in device.tags}
        return cls(
            list(new),
            frozenset(name for name, device in after.items() if before.get(name) != device),
            frozenset(before.keys() - after.keys()),
            frozenset(gone),
        )


def create_format(config: ForwarderConfig) -> PayloadFormat:
    """The format `mqtt.format` names. Sparkplug keeps its bdSeq under `buffer.dir`."""
    if config.mqtt.format == "sparkplug":
        from collectors.forwarder.sparkplug import SparkplugFormat

        return SparkplugFormat(config)
    from collectors.forwarder.json_format import JsonFormat

    return JsonFormat(config)
