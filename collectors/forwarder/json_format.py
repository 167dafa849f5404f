"""docs/mqtt.md, json format: readings as JSON, writes on `/set`, gateway status.

layout tag:    {prefix}/{device}/{tag}  {"value": 21.5, "ts": "...Z", "quality": "good", "unit": "degC"}
layout device: {prefix}/{device}        {"ts": "...Z", "readings": {"temperature": {...}, ...}}
writes:        {prefix}/{device}/{tag}/set  {"value": 1, "id": "abc"}
               -> {prefix}/{device}/{tag}/set/result
                  {"id": "abc", "ok": true} | {"id": "abc", "ok": false, "error": "..."}
status:        {prefix}/status  `online` retained on connect, `offline` retained as the last will
A reading that is not good also carries `"reason"` when the collector gave one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson

from collectors.core.model import DeviceState, Reading, WriteRequest, WriteResult, iso_ms
from collectors.forwarder.config import CatalogDevice, ForwarderConfig
from collectors.forwarder.formats import (
    ERROR_ECHO,
    ID_ECHO,
    MAX_COMMAND_BYTES,
    CatalogChange,
    Incoming,
    OutMessage,
)
from collectors.forwarder.quarantine import shorten

if TYPE_CHECKING:
    from collectors.core.metrics import Metrics

log = logging.getLogger(__name__)


class JsonFormat:
    """The json payload format (see the module docstring)."""

    clean_session = True  # our buffer, not the broker's session, carries what was not delivered
    resend_window = 0.0  # readings go at QoS >= 1 and leave the buffer on PUBACK/PUBCOMP

    def __init__(self, config: ForwarderConfig) -> None:
        self._prefix = config.topic_prefix
        self._qos = config.mqtt.qos
        self._retain = config.mqtt.retain
        self._layout = config.mqtt.layout
        self._status = f"{self._prefix}/status"
        self._units = self._units_of(config.devices)
        # Topic strings are built once per tag, not once per reading.
        self._topics: dict[tuple[str, str], str] = {}
        self._set_levels = self._prefix.count("/") + 1
        self._seconds: dict[int, str] = {}  # `2026-11-28T08:00:00.` per epoch second: strftime is costly
        self._last_ts, self._last_iso = -1, ""
        self.set_refused = 0  # /set payloads refused before routing (not JSON, not an object, no value)
        self._connected = False
        self._clears: list[OutMessage] = []  # retained messages to clear once connected (reload)

    @staticmethod
    def _units_of(devices: list[CatalogDevice]) -> dict[tuple[str, str], str | None]:
        return {(device.name, tag.name): tag.unit for device in devices for tag in device.tags}

    def _iso(self, ts_ms: int) -> str:
        if ts_ms == self._last_ts:  # the readings of one poll share their timestamp
            return self._last_iso
        seconds, ms = divmod(ts_ms, 1000)
        prefix = self._seconds.get(seconds)
        if prefix is None:
            if len(self._seconds) > 4096:
                self._seconds.clear()
            prefix = self._seconds[seconds] = iso_ms(seconds * 1000)[:-4]
        self._last_ts, self._last_iso = ts_ms, f"{prefix}{ms:03d}Z"
        return self._last_iso

    @property
    def ready(self) -> bool:
        return True

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(f"{self._prefix}/+/+/set", 1)]

    def will(self) -> OutMessage | None:
        return OutMessage(self._status, b"offline", 1, True)

    def connected(self) -> list[OutMessage]:
        self._connected = True
        clears, self._clears = self._clears, []
        return [OutMessage(self._status, b"online", 1, True), *clears]

    def connection_lost(self, graceful: bool) -> None:
        self._connected = False

    def reload(self, change: CatalogChange) -> list[OutMessage]:
        """Units from the new catalog for the readings from now on; with `retain`, the retained
        message of each removed tag (layout device: removed device) is cleared, so a subscriber
        does not find a tag the gateway no longer has. Other topics are left alone."""
        self._units = self._units_of(change.devices)
        for key in change.removed_tags:
            self._topics.pop(key, None)
        if not self._retain:
            return []
        if self._layout == "device":
            topics = sorted(f"{self._prefix}/{device}" for device in change.removed)
        else:
            topics = sorted(f"{self._prefix}/{device}/{tag}" for device, tag in change.removed_tags)
        # An empty retained message removes the retained one (MQTT 3.1.1, 3.3.1.3).
        clears = [OutMessage(topic, b"", 1, True) for topic in topics]
        if self._connected:
            return clears
        self._clears += clears
        return []

    def disconnecting(self) -> list[OutMessage]:
        return [OutMessage(self._status, b"offline", 1, True)]

    def device_state(self, state: DeviceState) -> list[OutMessage]:
        return []  # collectors send each tag's `bad` reading themselves (docs/config.md, docs/mqtt.md)

    # -- readings

    def _payload(self, reading: Reading) -> dict[str, Any]:
        body: dict[str, Any] = {
            "value": reading.value,
            "ts": self._iso(reading.ts_ms),
            "quality": str(reading.quality),
            "unit": self._units.get((reading.device, reading.tag)),
        }
        if reading.reason is not None and reading.quality != "good":
            body["reason"] = reading.reason
        return body

    def encode(self, readings: list[Reading], historical: bool) -> list[OutMessage]:
        if self._layout == "device":
            return self._encode_devices(readings)
        qos, retain, topics, payload = self._qos, self._retain, self._topics, self._payload
        dumps = orjson.dumps
        out = []
        for reading in readings:
            key = (reading.device, reading.tag)
            topic = topics.get(key)
            if topic is None:
                topic = topics[key] = f"{self._prefix}/{reading.device}/{reading.tag}"
            out.append(OutMessage(topic, dumps(payload(reading)), qos, retain))
        return out

    def _encode_devices(self, readings: list[Reading]) -> list[OutMessage]:
        """One message per run of one device's readings; a tag read twice in a batch splits it."""
        out: list[OutMessage] = []
        device: str | None = None
        group: dict[str, Any] = {}
        latest = 0

        def flush() -> None:
            if device is not None and group:
                body = orjson.dumps({"ts": self._iso(latest), "readings": group})
                out.append(OutMessage(f"{self._prefix}/{device}", body, self._qos, self._retain))

        for reading in readings:
            if reading.device != device or reading.tag in group:
                flush()
                device, group, latest = reading.device, {}, 0
            group[reading.tag] = self._payload(reading)
            if reading.ts_ms > latest:
                latest = reading.ts_ms
        flush()
        return out

    def register_metrics(self, metrics: Metrics) -> None:
        """The json format's own counter, next to the forwarder's (app.py calls this)."""
        metrics.counter(
            "forwarder_set_payloads_refused_total",
            "/set payloads answered with an error before routing (over 64 KiB, not JSON, not an object, "
            "no value)",
            lambda: self.set_refused,
        )

    # -- writes

    def handle_incoming(self, topic: str, payload: bytes) -> Incoming:
        levels = topic.split("/")
        if len(levels) != self._set_levels + 3 or levels[-1] != "set":
            log.debug("ignoring message on %s", topic)
            return Incoming()
        device, tag = levels[-3], levels[-2]
        if len(payload) > MAX_COMMAND_BYTES:
            return self._refuse(device, tag, "", f"payload of {len(payload)} bytes is over the limit of "
                                f"{MAX_COMMAND_BYTES} bytes for a write")
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return self._refuse(device, tag, "", 'payload is not JSON: send {"value": ..., "id": "..."}')
        if not isinstance(body, dict):
            return self._refuse(device, tag, "", 'payload must be an object: {"value": ..., "id": "..."}')
        write_id = body.get("id", "")
        write_id = write_id if isinstance(write_id, str) else str(write_id)
        if "value" not in body:
            return self._refuse(device, tag, write_id, 'no "value" in the payload')
        try:  # the hand-off carries it as JSON too, and orjson writes at most 254 levels of nesting
            orjson.dumps(body["value"])
        except orjson.JSONEncodeError:
            return self._refuse(device, tag, write_id, '"value" is nested too deep to be a tag value')
        return Incoming(writes=[WriteRequest(write_id, device, tag, body["value"])])

    def _refuse(self, device: str, tag: str, write_id: str, error: str) -> Incoming:
        self.set_refused += 1
        return Incoming(messages=self.write_result(WriteResult(write_id, device, tag, False, error)))

    def write_result(self, result: WriteResult) -> list[OutMessage]:
        body: dict[str, Any] = {"id": shorten(result.id, ID_ECHO), "ok": result.ok}
        if not result.ok:
            body["error"] = shorten(result.error or "write failed", ERROR_ECHO)
        topic = f"{self._prefix}/{result.device}/{result.tag}/set/result"
        return [OutMessage(topic, orjson.dumps(body), 1, False)]
