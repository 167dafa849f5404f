"""Sparkplug B 3.0: the gateway is one edge node, each device a Sparkplug device, each tag a metric.

Topics (Sparkplug 3.0, Topics and Messages)::

    spBv1.0/{group}/NBIRTH|NDEATH|NCMD/{node}           the edge node (node = gateway.id)
    spBv1.0/{group}/DBIRTH|DDATA|DDEATH|DCMD/{node}/{device}
    spBv1.0/STATE/{primary_host}                         the primary host's JSON {"online", "timestamp"}

`EdgeNode` is the pure state machine: seq, aliases, datatypes, current values, which devices
are born. `SparkplugFormat` is the forwarder's payload format (formats.PayloadFormat) around
it: bdSeq across connections and restarts, the primary host's STATE, NCMD rebirth, DCMD writes.
sparkplug_types.py holds the datatype tables and value conversions.

Choices where the specification leaves room, made the way Ignition reads them:
- Quality travels as the metric property `Quality` (Int32) in the codes Ignition's MQTT Engine
  documents: 192 good, 0 bad, 500 stale. An uncertain reading (OPC UA Uncertain, e.g. a last
  usable value) is sent as 500: the host shows the value, flagged as not current. Births always
  carry it; data carries it when not good, and on the way back to good.
- Births carry `engUnit` (the catalog's unit) and `readOnly` (not writable) properties.
- A metric's datatype is the catalog's (Modbus: the type of the engineering value the
  collector hands off, scale and offset included), or the one the collector read from the
  device (OPC UA: each node's DataType attribute, handed off as `types` before the readings:
  an Int16 node is born Int16), or else inferred from its first value. A value that does
  not fit anyway changes the datatype, announced by births before the value is sent, so a
  host never decodes a wrong type.
- The first NBIRTH of the process waits until every tag whose datatype is not known (not
  from the catalog, nor learned from values by a previous run: `BdSeqStore` keeps those) has
  handed off a reading, for at most `SETTLE` seconds (readings meanwhile wait in the buffer; the
  DBIRTHs carry the newest, the older ones follow as history). A birth must give each
  metric's datatype (Sparkplug 3.0, tck-id-payloads-metric-datatype-req) and carry every
  metric the data will use (tck-id-topics-dbirth-metric-reqs), so without the wait each
  OPC UA tag's first value would make the node born again: a storm of rebirths at start-up.
  A tag still without a value then (its server down) is left out of the births, not born
  with a guessed datatype the host would have to unlearn; its first value brings it in
  with one rebirth of the node. The OPC UA collector hands off its nodes' datatypes right
  before their first values, so the wait costs a few seconds once, with nothing lost; a
  declared datatype that differs from what the host was told makes the node born again,
  while datatypes declared only for metrics the host has not been told of (a server back,
  a tag added while running) make their device born again (one DBIRTH), no other.
- A catalog changed while running (`reload`: a device file edited) is told device by device:
  a DBIRTH of each added or changed device, a DDEATH of each removed one, in the same node
  session (no NDEATH/NBIRTH); metrics that stay keep their aliases.
- Every configured device is born right after the NBIRTH, as the spec requires all DBIRTHs
  before any data; one known to be offline then gets its DDEATH. A metric with a datatype
  but no value yet is born null (is_null) with Quality 500 (stale). A device or tag
  outside the catalog, a first value of an untyped tag, or a datatype change, makes the
  node born again (NBIRTH and every DBIRTH, same bdSeq), once per batch, for the same reason.
- A DCMD write publishes nothing itself: what the host then sees is the value the collector
  reports after the write, as the device holds it (Modbus reads it back in the same turn;
  a device may clamp or refuse), never the commanded value.
- Readings the forwarder replays (taken while disconnected or while the primary host was
  away, left from a previous run, or resent after an ungraceful loss) go as `is_historical`,
  in order, as does any reading older than the live value the host holds. A new session's
  DBIRTHs carry the newest readings handed off, so a host's live values are current at once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from collectors.core.metrics import Metrics
from collectors.core.model import DeviceState, DeviceTypes, Quality, Reading, WriteRequest, WriteResult
from collectors.core.writes import MAX_PENDING_PER_LINK
from collectors.forwarder import sparkplug_b_pb2 as pb
from collectors.forwarder.buffer import private_dir
from collectors.forwarder.config import CatalogDevice, CatalogTag, ForwarderConfig
from collectors.forwarder.formats import ERROR_ECHO, MAX_COMMAND_BYTES, CatalogChange, Incoming, OutMessage
from collectors.forwarder.quarantine import bad_name, shorten, unpublishable
from collectors.forwarder.sparkplug_types import (
    CATALOG_TYPES,
    TYPE_RULES,
    UNTYPED,
    DoesNotFit,
    convert_for_tag,
    infer_datatype,
    metric_value,
)

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
QUALITY_CODES: dict[str, int] = {Quality.GOOD: 192, Quality.UNCERTAIN: 500, Quality.BAD: 0}
MAX_METRICS = 2000  # per DDATA: a replayed backlog becomes several messages, none huge
STATE_FILE = "sparkplug.json"
# Metrics one DCMD may write; the rest of a longer one are refused (a DCMD of 10,000 metrics
# queued 10,000 writes ahead of every poll). As many as a link takes pending writes.
MAX_DCMD_METRICS = MAX_PENDING_PER_LINK
_BY_NAME: dict[str, int] = {pb.DataType.Name(datatype): datatype for datatype in TYPE_RULES}
# Most seconds (from the forwarder's start) the first NBIRTH waits for the first value of every
# tag whose datatype only a value tells (OPC UA): a collector connected to its servers hands
# them off within a second or two; one that cannot connect should not hold up the plant long.
SETTLE = 5.0


def _ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------- the edge node


class _Metric:
    """One tag as a metric, with what the host has been told about it."""

    __slots__ = (
        "alias", "datatype", "declared", "host_good", "host_ts", "name", "quality", "rule",
        "settled", "ts_ms", "unit", "value", "writable",
    )

    def __init__(self, name: str, alias: int, tag: CatalogTag | None) -> None:
        self.name = name
        self.alias = alias
        self.unit = tag.unit if tag else None
        self.writable = tag.writable if tag else False
        declared = CATALOG_TYPES.get((tag.type or "").lower()) if tag else None
        # Not settled: no datatype known yet (an OPC UA tag before its first value). Such a
        # metric is in no birth; its first value settles the datatype and births it.
        self.settled = self.declared = declared is not None
        self.datatype = declared if declared is not None else pb.Unknown
        self.rule = TYPE_RULES[declared] if declared is not None else UNTYPED
        self.value: Any = None
        self.ts_ms = 0
        self.quality: str = Quality.GOOD
        self.host_ts = -1  # timestamp of the live value the host holds (-1: none since the birth)
        self.host_good = True

    def retype(self, value: Any) -> bool:
        """Settle or change the datatype for a value that does not fit; True when it changed."""
        return self.set_datatype(infer_datatype(value))

    def set_datatype(self, datatype: int) -> bool:
        self.settled = True
        if datatype == self.datatype:
            return False
        self.datatype, self.rule = datatype, TYPE_RULES[datatype]
        return True


class _Device:
    __slots__ = ("born", "metrics", "name", "online", "topics")

    def __init__(self, name: str, base: str, node: str) -> None:
        self.name = name
        self.metrics: dict[str, _Metric] = {}
        self.born = False  # DBIRTH sent in the current node session
        self.online: bool | None = None
        self.topics = {kind: f"{base}/{kind}/{node}/{name}" for kind in ("DBIRTH", "DDATA", "DDEATH")}


class EdgeNode:
    """The edge node's state: seq, aliases, datatypes, current values, and born devices.

    Pure: every method returns the messages to publish, in order, and never does I/O.
    seq counts 0..255 over every message but NDEATH, and births restart it at 0
    (Sparkplug 3.0, Payloads: seq). Aliases follow the catalog order, so they are stable
    for a given configuration; tags outside the catalog get the next free ones.
    """

    def __init__(self, group: str, node: str, devices: Iterable[CatalogDevice]) -> None:
        self.group = group
        self.node = node
        self._base = f"{NAMESPACE}/{group}"
        self.nbirth_topic = f"{self._base}/NBIRTH/{node}"
        self.ndeath_topic = f"{self._base}/NDEATH/{node}"
        self._seq = 0
        self._next_alias = 1
        self.born = False
        self.devices: dict[str, _Device] = {}
        self.type_changes = 0
        self.types_version = 0  # moves on whenever a datatype settles or changes
        self.birth_count = 0
        self.bd_seq = 0  # of the current session, for births within it
        self._latest: dict[tuple[str, str], Reading] = {}  # newest reading handed off, per tag
        self.removed: frozenset[str] = frozenset()  # devices a reload removed: their late states are ignored
        for catalog in devices:
            device = self._add_device(catalog.name)
            for tag in catalog.tags:
                self._add_metric(device, tag.name, tag)

    # -- model

    def _add_device(self, name: str) -> _Device:
        device = self.devices[name] = _Device(name, self._base, self.node)
        return device

    def _add_metric(self, device: _Device, tag: str, catalog: CatalogTag | None) -> _Metric:
        metric = device.metrics[tag] = self._new_metric(tag, catalog)
        return metric

    def _new_metric(self, tag: str, catalog: CatalogTag | None) -> _Metric:
        metric = _Metric(tag, self._next_alias, catalog)
        self._next_alias += 1
        return metric

    def device(self, name: str) -> _Device | None:
        return self.devices.get(name)

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) & 0xFF
        return seq

    # -- node messages

    def death(self, bd_seq: int) -> OutMessage:
        """NDEATH: the last will (registered with every CONNECT) and the goodbye before a clean disconnect.

        No seq (Sparkplug 3.0: NDEATH is not part of the seq); QoS 1 as the spec requires of the will.
        """
        payload = pb.Payload(timestamp=_ms())
        payload.metrics.add(name=BDSEQ, datatype=pb.Int64, long_value=bd_seq, timestamp=payload.timestamp)
        return OutMessage(self.ndeath_topic, payload.SerializeToString(), 1, False)

    def births(self, bd_seq: int, new_session: bool = True) -> list[OutMessage]:
        """NBIRTH (seq 0, the bdSeq of the CONNECT's will, Node Control/Rebirth), then every DBIRTH.

        Sparkplug 3.0 (Payloads: DBIRTH, DDATA) wants every DBIRTH right after the NBIRTH and
        before any data, so every device is born here, null values and all; the ones known to
        be offline then get their DDEATH. A new session's DBIRTHs carry the newest readings
        handed off (see `observe`); a rebirth within a session carries the values published
        so far, in the stream's order.
        """
        if new_session:
            self._catch_up()
        self.bd_seq = bd_seq
        self.birth_count += 1
        self._seq = 0
        self.born = True
        now = _ms()
        payload = pb.Payload(timestamp=now, seq=self._next_seq())
        payload.metrics.add(name=BDSEQ, datatype=pb.Int64, long_value=bd_seq, timestamp=now)
        payload.metrics.add(name=REBIRTH, datatype=pb.Boolean, boolean_value=False, timestamp=now)
        out = [OutMessage(self.nbirth_topic, payload.SerializeToString())]
        devices = self.devices.values()
        out += [self._dbirth(device) for device in devices]
        out += [self._ddeath(device) for device in devices if device.online is False]
        log.info("Sparkplug NBIRTH of %s/%s (bdSeq %d, %d devices)", self.group, self.node, bd_seq,
                 len(devices))
        return out

    def reload(self, change: CatalogChange) -> list[OutMessage]:
        """Take a new catalog in place: the messages that tell the host, for the changed devices only.

        A removed device gets its DDEATH (when born) and is forgotten; an added one its DBIRTH;
        a changed one (tags added, removed, retyped, a unit or `writable` changed) a DBIRTH
        with its new metrics, which is how Sparkplug 3.0 lets an edge node change the metrics
        of one device without a new node session; the others get nothing. A metric that stays
        keeps its alias, value and learned datatype; a new one takes the next free alias (never
        one of a removed metric, which a host may still hold), so the unchanged devices'
        DBIRTHs stay true. seq goes on. While the node is not born, the model changes only:
        the next births carry it. A device known to be offline is not born until it answers.
        Tags without a datatype yet (OPC UA) are in no birth: a change that adds only such tags
        births nothing now, their collector's declaration does (`declare`: one DBIRTH), or, for
        a new device, its first values.
        """
        out: list[OutMessage] = []
        self.removed = (self.removed | change.removed) - {device.name for device in change.devices}
        for name in sorted(change.removed):
            device = self.devices.pop(name, None)
            if device is not None and self.born and device.born:
                log.info("Sparkplug DDEATH of %s: removed from the configuration", name)
                out.append(self._ddeath(device))
            self._latest = {key: r for key, r in self._latest.items() if key[0] != name}
        for catalog in change.devices:
            if catalog.name not in change.changed:
                continue
            device = self.devices.get(catalog.name)
            added = device is None
            if device is None:
                device = self._add_device(catalog.name)
            told = _birth_signature(device)
            self._retag(device, catalog.tags)
            if device.born and _birth_signature(device) == told:
                continue  # only tags without a datatype yet were added: their declaration births them
            if self.born and device.online is not False and any(m.settled for m in device.metrics.values()):
                log.info("Sparkplug DBIRTH of %s: %s by a new configuration", device.name,
                         "added" if added else "changed")
                out.append(self._dbirth(device))
        return out

    def rebirth_device(self, name: str) -> list[OutMessage]:
        """A DBIRTH of one born device, for metrics the host has not been told of yet."""
        device = self.devices.get(name)
        if device is None or not (self.born and device.born):
            return []  # not born: its next birth carries them
        log.info("Sparkplug DBIRTH of %s: datatypes of new metrics declared", name)
        return [self._dbirth(device)]

    def _retag(self, device: _Device, tags: list[CatalogTag]) -> None:
        """The device's metrics as the catalog now lists them, keeping what stays (see `reload`)."""
        metrics: dict[str, _Metric] = {}
        for tag in tags:
            old = device.metrics.get(tag.name)
            if old is None:
                metrics[tag.name] = self._new_metric(tag.name, tag)
                continue
            metric = _Metric(tag.name, old.alias, tag)
            if not metric.declared and old.settled:  # learned from values, or declared by the collector
                metric.set_datatype(old.datatype)
            if metric.datatype == old.datatype:
                metric.value, metric.ts_ms, metric.quality = old.value, old.ts_ms, old.quality
            metrics[tag.name] = metric
        for name in device.metrics.keys() - metrics.keys():
            self._latest.pop((device.name, name), None)
        device.metrics = metrics

    def session_ended(self) -> None:
        self.born = False
        for device in self.devices.values():
            device.born = False

    # -- device messages

    def _dbirth(self, device: _Device) -> OutMessage:
        """Every metric with a datatype: name, alias, datatype, current value (or is_null), properties."""
        now = _ms()
        payload = pb.Payload(timestamp=now, seq=self._next_seq())
        add = payload.metrics.add
        for metric in device.metrics.values():
            if not metric.settled:  # no datatype known: left out until its first value
                metric.host_ts = -1
                continue
            pm = add(name=metric.name, alias=metric.alias, datatype=metric.datatype,
                     timestamp=metric.ts_ms or now)
            carried = False
            if metric.value is not None:
                try:
                    setattr(pm, metric.rule.field, metric.rule.coerce(metric.value))
                    carried = True
                except DoesNotFit:  # a value from before a datatype change: the host gets none
                    pass
            if not carried:
                pm.is_null = True
            quality = metric.quality if carried else Quality.UNCERTAIN  # no value read yet
            props = pm.properties
            _property(props, "Quality", pb.Int32, "int_value", QUALITY_CODES.get(quality, 0))
            if metric.unit:
                _property(props, "engUnit", pb.String, "string_value", metric.unit)
            _property(props, "readOnly", pb.Boolean, "boolean_value", not metric.writable)
            metric.host_ts = metric.ts_ms if carried else -1
            metric.host_good = quality == Quality.GOOD
        device.born = True
        return OutMessage(device.topics["DBIRTH"], payload.SerializeToString())

    def _ddeath(self, device: _Device) -> OutMessage:
        device.born = False
        payload = pb.Payload(timestamp=_ms(), seq=self._next_seq())
        return OutMessage(device.topics["DDEATH"], payload.SerializeToString())

    def device_state(self, state: DeviceState) -> list[OutMessage]:
        """DDEATH when a born device goes offline, DBIRTH when it is back (only while the node is born)."""
        device = self.devices.get(state.device)
        if device is None and state.device in self.removed:
            return []  # a state buffered before the reload that removed it
        if device is None:
            why = bad_name("device", state.device)
            if why is not None:  # it would be in every birth's topics from now on
                log.warning("Sparkplug: ignoring the state of a device that cannot be born: %s", why)
                return []
            device = self._new_device(state.device)
        device.online = state.online
        if state.online:
            if self.born and not device.born:
                log.info("Sparkplug DBIRTH of %s: online again", device.name)
                return [self._dbirth(device)]
        elif device.born:
            log.info("Sparkplug DDEATH of %s: %s", device.name, state.reason or "offline")
            return [self._ddeath(device)]
        return []

    def data(self, readings: list[Reading], historical: bool) -> list[OutMessage]:
        """DDATA (aliases only) for these readings, each device's in their order, with births as needed.

        A reading is sent flagged `is_historical` when the forwarder says so (replayed from the
        buffer) or when the host already holds a newer live value of its tag; only the others
        update what the host shows live. A device, tag or datatype the births did not announce
        makes the node born again first, once for the whole batch.
        """
        if not self.born:
            raise RuntimeError("Sparkplug data before the NBIRTH: the forwarder must wait for `ready`")
        runs: dict[str, list[Reading]] = {}
        for reading in readings:
            run = runs.get(reading.device)
            if run is None:
                runs[reading.device] = [reading]
            else:
                run.append(reading)
        out: list[OutMessage] = []
        if not runs.keys() <= self.devices.keys():
            self._settle(readings)
            out += self.births(self.bd_seq, new_session=False)
        for name, run in runs.items():
            self._device_data(self.devices[name], run, historical, readings, out)
        return out

    def _settle(self, readings: list[Reading]) -> None:
        """Add the devices and tags outside the catalog and fit datatypes to these values."""
        devices = self.devices
        for device_name, tag, value, *_ in readings:
            device = devices.get(device_name) or self._new_device(device_name)
            metric = device.metrics.get(tag) or self._new_tag(device, tag)
            if value is not None:
                self._fit(metric, value)

    def _new_device(self, name: str) -> _Device:
        log.warning("Sparkplug: device %s is not in the catalog; adding it to the edge node", name)
        return self._add_device(name)

    def _new_tag(self, device: _Device, tag: str) -> _Metric:
        log.warning("Sparkplug: %s/%s is not in the catalog; adding it to the device", device.name, tag)
        return self._add_metric(device, tag, None)

    def _fit(self, metric: _Metric, value: Any) -> bool:
        """Make the metric's datatype carry `value`; True when the datatype changed."""
        was_settled = metric.settled
        if was_settled:
            try:
                metric.rule.coerce(value)
                return False
            except DoesNotFit:
                pass
        old = metric.datatype
        changed = metric.retype(value)
        if changed:
            self.types_version += 1
        if changed and was_settled:
            self.type_changes += 1
            log.warning("Sparkplug: %s carries %r, which %s cannot: now %s", metric.name, value,
                        pb.DataType.Name(old), pb.DataType.Name(metric.datatype))
        return changed

    def _device_data(
        self, device: _Device, run: list[Reading], historical: bool, batch: list[Reading],
        out: list[OutMessage],
    ) -> None:
        offline = device.online is False
        if not historical:
            device.online, offline = True, False  # a live reading: the device answers
        if not device.born:  # offline until now: its session starts again, with these values' datatypes
            self._settle(run)
            out.append(self._dbirth(device))
        metrics = device.metrics
        topic = device.topics["DDATA"]
        payload = pb.Payload()
        add = payload.metrics.add
        count = 0

        def flush() -> None:
            nonlocal payload, add, count
            if count:
                payload.timestamp = _ms()
                payload.seq = self._next_seq()
                out.append(OutMessage(topic, payload.SerializeToString()))
                payload = pb.Payload()
                add = payload.metrics.add
                count = 0

        for _, tag, value, ts_ms, quality, _reason in run:
            metric = metrics.get(tag)
            wire: Any = value
            if metric is None or (value is not None and type(value) is not metric.rule.exact):
                try:
                    if metric is None:
                        raise DoesNotFit(tag)
                    wire = metric.rule.coerce(value)
                except DoesNotFit:
                    # A new tag or datatype: settle the whole batch, so the node is born again once.
                    flush()
                    self._settle(batch)
                    metric = metrics[tag]
                    if value is not None:
                        self._fit(metric, value)  # only when the batch itself changes type again
                        wire = metric.rule.coerce(value)
                    if ts_ms >= metric.ts_ms:
                        metric.value, metric.ts_ms, metric.quality = value, ts_ms, quality
                    out += self.births(self.bd_seq, new_session=False)
                    if not device.born:  # offline: born again for the rest of its history
                        out.append(self._dbirth(device))
                    if metric.host_ts == ts_ms and metric.value is value:
                        continue  # the DBIRTH carried it
            hist = historical or ts_ms < metric.host_ts
            if value is None:
                if not metric.settled:
                    continue  # no value yet and no datatype: not born, so the host has no such metric
                pm = add(alias=metric.alias, timestamp=ts_ms, is_null=True)
            else:
                pm = add(alias=metric.alias, timestamp=ts_ms)
                setattr(pm, metric.rule.field, wire)
            good = quality == Quality.GOOD
            if hist:
                pm.is_historical = True
                if not good:
                    _property(pm.properties, "Quality", pb.Int32, "int_value", QUALITY_CODES.get(quality, 0))
            else:
                if not good or not metric.host_good:
                    _property(pm.properties, "Quality", pb.Int32, "int_value", QUALITY_CODES.get(quality, 0))
                metric.host_ts, metric.host_good = ts_ms, good
            if ts_ms >= metric.ts_ms:
                metric.value, metric.ts_ms, metric.quality = value, ts_ms, quality
            count += 1
            if count >= MAX_METRICS:
                flush()
        flush()
        if offline and device.born:  # history of a device that is offline now: born for it, then dead again
            out.append(self._ddeath(device))

    def observe(self, readings: list[Reading]) -> None:
        """Take note of readings as they reach the forwarder, before they are published.

        A host keeps the DBIRTH value as the live one and files the replayed readings (flagged
        historical) as history, so a new session's DBIRTHs must carry the newest value of each
        tag, or a tag that changed during a broker outage and then held still would show its
        value from before the outage until it next changed. One dict store per reading: the
        work is done at the next session's birth (`_catch_up`).
        """
        latest = self._latest
        for reading in readings:
            latest[reading[0], reading[1]] = reading

    def _catch_up(self) -> None:
        """Before a new session's births: the newest readings handed off become the current values.

        Nothing is born at this point, so a datatype may settle or change here: the DBIRTHs
        announce it. (A rebirth within a session keeps the published stream's values instead.)
        """
        devices = self.devices
        for (device_name, tag), reading in self._latest.items():
            device = devices.get(device_name)
            metric = device.metrics.get(tag) if device is not None else None
            if device is None or metric is None or unpublishable(reading) or reading.ts_ms < metric.ts_ms:
                continue  # unknown ones are added when they are encoded; bad ones never reach a birth
            value = reading.value
            if value is not None and type(value) is not metric.rule.exact:
                self._fit(metric, value)
            metric.value, metric.ts_ms, metric.quality = value, reading.ts_ms, reading.quality
        self._latest.clear()

    def declare(self, device_name: str, types: dict[str, str]) -> Literal["device", "node"] | None:
        """Datatypes a collector read from the device (hand-off `types`) for the tags the catalog
        gives none. What the host must be told, while the node is born: "device" when only
        metrics it has never been told of got a datatype (their device's DBIRTH adds them, as
        for a tag added by a reload), "node" when a datatype it knows changed (the node is born
        again); None: nothing."""
        device = self.devices.get(device_name)
        if device is None:
            return None
        changed = known = False
        for tag, type_name in types.items():
            metric = device.metrics.get(tag)
            datatype = CATALOG_TYPES.get(type_name.lower())
            if metric is None or metric.declared or datatype is None:
                continue
            if metric.value is not None:
                try:
                    TYPE_RULES[datatype].coerce(metric.value)
                except DoesNotFit:  # the device's values say otherwise: they win, with no flip-flop
                    continue
            was_settled = metric.settled
            if metric.set_datatype(datatype):
                self.types_version += 1
                changed = True
                known = known or was_settled
        if not (changed and self.born):
            return None
        return "node" if known else "device"

    def untyped(self) -> list[tuple[str, str]]:
        """(device, tag) of every metric whose datatype is not known yet."""
        return [(device.name, metric.name) for device in self.devices.values()
                for metric in device.metrics.values() if not metric.settled]

    def learned(self) -> Learned:
        """The datatypes learned from values (not the catalog's), to be kept across restarts."""
        return [(device.name, metric.name, pb.DataType.Name(metric.datatype))
                for device in self.devices.values() for metric in device.metrics.values()
                if metric.settled and not metric.declared]

    def adopt(self, learned: Learned) -> None:
        """Datatypes a previous run learned, for configured tags the catalog gives none: they are
        born at once (null until a value comes); a value that does not fit changes them as usual."""
        for device_name, tag, type_name in learned:
            device = self.devices.get(device_name)
            metric = device.metrics.get(tag) if device is not None else None
            datatype = _BY_NAME.get(type_name)
            if metric is not None and not metric.declared and datatype is not None:
                metric.set_datatype(datatype)


def _birth_signature(device: _Device) -> list[tuple[str, int, int, str | None, bool]]:
    """What a DBIRTH of `device` tells a host about its metrics (values aside)."""
    return [(m.name, m.alias, m.datatype, m.unit, m.writable) for m in device.metrics.values() if m.settled]


def _property(props: pb.Payload.PropertySet, key: str, datatype: int, field: str, value: Any) -> None:
    props.keys.append(key)
    pv = props.values.add(type=datatype)
    setattr(pv, field, value)


# --------------------------------------------------------------------------- bdSeq store


Learned = list[tuple[str, str, str]]  # (device, tag, Sparkplug datatype name) learned from values


class BdSeqStore:
    """The bdSeq of the last CONNECT, kept in `{buffer.dir}/sparkplug.json` across restarts, with
    the datatypes learned from values (OPC UA tags), so a restarted forwarder births them at once.

    Written (and fsync'ed) before every CONNECT: a will the broker may still publish must never
    carry the bdSeq of a newer session, or a host would declare that session dead; and when a
    datatype is learned (rare: a tag's first value, or a change).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.datatypes: Learned = []  # as loaded

    def load(self) -> int | None:
        try:
            state = orjson.loads(self.path.read_bytes())
            learned = state.get("datatypes") if isinstance(state, dict) else None
            if isinstance(learned, list):
                entries = [entry for entry in learned if isinstance(entry, list) and len(entry) == 3]
                self.datatypes = [(d, t, n) for d, t, n in entries if isinstance(d, str) and isinstance(t, str)
                                  and isinstance(n, str)]
            value = state["bdSeq"]
            if isinstance(value, int) and 0 <= value <= 255:
                return value
            raise ValueError(f"bdSeq {value!r} out of 0..255")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("Sparkplug state %s unreadable (%s): bdSeq starts again at 0", self.path, exc)
            return None

    def save(self, bd_seq: int, datatypes: Learned) -> None:
        private_dir(self.path.parent)
        tmp = self.path.with_suffix(".tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as file:
            file.write(orjson.dumps({"bdSeq": bd_seq, "datatypes": datatypes}))
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o600)  # an older version's 0644 file, truncated and rewritten
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------- the payload format


@dataclass(slots=True)
class SparkplugStats:
    """Counters for the forwarder's metrics."""

    rebirth_requests: int = 0
    commands_refused: int = 0
    write_errors: int = 0
    writes_done: int = 0


class SparkplugFormat:
    """formats.PayloadFormat for `mqtt.format: sparkplug` (see the module docstring).

    Session (Sparkplug 3.0, Operational Behavior, Edge Node Session Establishment): clean
    session; every CONNECT carries an NDEATH will with a new bdSeq; NBIRTH and DBIRTHs
    follow the CONNACK, or, with `mqtt.primary_host`, the host's STATE `online`. An
    `offline` STATE ends the session: NDEATH, disconnect, data held in the buffer until the
    host is back. Births and data go at QoS 0 (the spec requires it); the forwarder's
    buffer, replay as historical and `resend_window` make up for what QoS 0 loses.
    """

    clean_session = True

    def __init__(
        self, config: ForwarderConfig, settle: float = SETTLE, clock: Callable[[], float] = time.monotonic
    ) -> None:
        identity = config.gateway
        self.node = EdgeNode(identity.group, identity.id, config.devices)
        self._store = BdSeqStore(config.buffer.dir / STATE_FILE)
        self._bd_seq = self._store.load()
        self.node.adopt(self._store.datatypes)
        self._types_saved = self.node.types_version
        # The first NBIRTH waits (at most until `_settle_until`) for these tags' first readings.
        self._awaiting: set[tuple[str, str]] = set(self.node.untyped())
        self._clock = clock
        self._settle = settle
        self._settle_until = clock() + settle
        self._birth_pending = False  # connected and allowed to be born, held by the settle wait
        # QoS 0 written to a link that died silently vanishes until the loss is noticed. The broker
        # gives up on us after 1.5 x keep-alive; paho notices only when its PINGREQ, sent a
        # keep-alive after the last bytes in, stays unanswered for another: 2 x keep-alive, plus
        # two of the session's 0.5 s housekeeping ticks, plus a margin for a busy event loop.
        self.resend_window = max(1.5 * config.mqtt.keepalive, 2.0 * config.mqtt.keepalive + 2.0)
        self._primary = config.mqtt.primary_host
        base = f"{NAMESPACE}/{identity.group}"
        self._ncmd = f"{base}/NCMD/{identity.id}"
        self._dcmd = f"{base}/DCMD/{identity.id}/"
        self._state = f"{NAMESPACE}/STATE/{self._primary}" if self._primary else None
        self._connected = False
        self._host_online = False
        self._host_state_ts = -1
        self._write_count = 0
        self.stats = SparkplugStats()

    def register_metrics(self, metrics: Metrics) -> None:
        """Sparkplug's own counters, next to the forwarder's (app.py calls this when present)."""
        stats, node = self.stats, self.node
        for name, help_text, read in (
            ("forwarder_sparkplug_births_total", "NBIRTHs published (sessions and rebirths)",
             lambda: node.birth_count),
            ("forwarder_sparkplug_rebirth_requests_total", "NCMD Node Control/Rebirth received",
             lambda: stats.rebirth_requests),
            ("forwarder_sparkplug_commands_refused_total", "NCMD/DCMD metrics refused (unknown, "
             "not writable, wrong type, undecodable), and commands over 64 KiB", lambda: stats.commands_refused),
            ("forwarder_sparkplug_write_errors_total", "DCMD writes the collector or forwarder refused",
             lambda: stats.write_errors),
            ("forwarder_sparkplug_datatype_changes_total", "metrics whose datatype changed (device reborn)",
             lambda: node.type_changes),
        ):
            metrics.counter(name, help_text, read)
        metrics.gauge("forwarder_sparkplug_bdseq", "bdSeq of the current session",
                      lambda: -1 if self._bd_seq is None else self._bd_seq)

    @property
    def bd_seq(self) -> int | None:
        """The bdSeq of the current (or last) CONNECT."""
        return self._bd_seq

    @property
    def ready(self) -> bool:
        return self.node.born

    def subscriptions(self) -> list[tuple[str, int]]:
        subs = [(self._ncmd, 1), (self._dcmd + "+", 1)]
        if self._state:
            subs.append((self._state, 1))
        return subs

    def will(self) -> OutMessage | None:
        self._bd_seq = 0 if self._bd_seq is None else (self._bd_seq + 1) & 0xFF
        self._save()
        return self.node.death(self._bd_seq)

    def _save(self) -> None:
        assert self._bd_seq is not None
        self._types_saved = self.node.types_version
        self._store.save(self._bd_seq, self.node.learned())

    def connected(self) -> list[OutMessage]:
        self._connected = True
        if self._primary and not self._host_online:
            log.info("Sparkplug: waiting for primary host %s to be online before the births", self._primary)
            return []
        return self._births_unless_settling()

    def _births_unless_settling(self) -> list[OutMessage]:
        if self._settling():
            self._birth_pending = True
            log.info("Sparkplug: the NBIRTH waits up to %.1fs for the first values of %d tags whose "
                     "datatype only a value tells", self._settle_until - self._clock(), len(self._awaiting))
            return []
        return self._births()

    def _settling(self) -> bool:
        """True while the first NBIRTH should still wait for the first values of untyped tags."""
        if not self._awaiting:
            return False
        if self._clock() < self._settle_until:
            return True
        missing = sorted(f"{device}/{tag}" for device, tag in self._awaiting)
        log.warning("Sparkplug: no value after %gs from %s%s: born without them; each joins the births "
                    "(the node is born again) with its first value", self._settle, ", ".join(missing[:5]),
                    f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        self._awaiting.clear()  # decided once: later sessions never wait
        return False

    def tick(self) -> list[OutMessage]:
        """The births held by the settle wait, once it is over; else nothing.

        The forwarder calls this after readings arrive and from its housekeeping loop (formats.py),
        which must go on (commits, fsync) whatever happens here: a failure is logged, not raised.
        """
        try:
            if self.node.types_version != self._types_saved and self._bd_seq is not None:
                try:
                    self._save()  # a datatype learned: a restart births it at once
                except OSError as exc:  # kept for the next CONNECT's save; the births go on
                    self._types_saved = self.node.types_version
                    log.warning("Sparkplug: cannot save learned datatypes to %s: %s", self._store.path, exc)
            if not self._birth_pending or self._settling():
                return []
            return self._births()
        except Exception:
            log.exception("Sparkplug: held births or saving learned datatypes failed")
            return []

    def _births(self, new_session: bool = True) -> list[OutMessage]:
        assert self._bd_seq is not None, "will() comes before every CONNECT"
        self._birth_pending = False
        return self.node.births(self._bd_seq, new_session)

    def connection_lost(self, graceful: bool) -> None:
        self._connected = False
        self._birth_pending = False
        self._host_online = False  # a new session waits for a fresh STATE
        self.node.session_ended()

    def disconnecting(self) -> list[OutMessage]:
        self._birth_pending = False
        if not self._connected or self._bd_seq is None:
            return []
        self.node.session_ended()
        return [self.node.death(self._bd_seq)]

    def encode(self, readings: list[Reading], historical: bool) -> list[OutMessage]:
        if not readings:
            return []
        return self.node.data(readings, historical)

    def device_state(self, state: DeviceState) -> list[OutMessage]:
        return self.node.device_state(state)

    def datatypes(self, types: DeviceTypes) -> list[OutMessage]:
        """A device's datatypes as its collector read them (app.py): births use them; a change of
        a datatype the host knows makes the node born again (within the session), datatypes of
        metrics it was never told of a DBIRTH of their device (EdgeNode.declare)."""
        told = self.node.declare(types.device, types.types)
        if told == "device":
            return self.node.rebirth_device(types.device)
        if told is None:
            return []
        log.info("Sparkplug: datatypes of %s changed; the node is born again", types.device)
        return self._births(new_session=False)

    def reload(self, change: CatalogChange) -> list[OutMessage]:
        """A new catalog in place (app.py): DBIRTH/DDEATH of the changed devices only, see
        EdgeNode.reload; the node session, its bdSeq and seq go on."""
        out = self.node.reload(change)
        self._awaiting = {key for key in self._awaiting if key[0] not in change.changed | change.removed}
        if self._clock() < self._settle_until:  # the first births, still to come, wait for these too
            self._awaiting |= {key for key in self.node.untyped() if key[0] in change.changed}
        return out

    def observe(self, readings: list[Reading]) -> None:
        """Readings as they reach the forwarder (app.py): see EdgeNode.observe; and the settle wait's
        tags that have now been heard from (a reading without a value counts: waiting longer would
        not tell its datatype sooner)."""
        self.node.observe(readings)
        awaiting = self._awaiting
        if awaiting:
            for reading in readings:
                awaiting.discard((reading[0], reading[1]))

    # -- incoming

    def handle_incoming(self, topic: str, payload: bytes) -> Incoming:
        if len(payload) > MAX_COMMAND_BYTES and topic != self._state:
            self.stats.commands_refused += 1
            log.warning("Sparkplug: refusing a command of %d bytes on %s: over the limit of %d bytes",
                        len(payload), shorten(topic, 200), MAX_COMMAND_BYTES)
            return Incoming()
        try:
            if topic == self._state:
                return self._host_state(payload)
            if topic == self._ncmd:
                return self._node_command(payload)
            if topic.startswith(self._dcmd):
                return self._device_command(topic[len(self._dcmd):], payload)
        except Exception as exc:  # input from the broker must never take the forwarder down
            self.stats.commands_refused += 1
            log.warning("Sparkplug: ignoring a bad message on %s: %s", shorten(topic, 200), shorten(str(exc), 200))
            return Incoming()
        log.debug("Sparkplug: ignoring message on %s", topic)
        return Incoming()

    def _host_state(self, payload: bytes) -> Incoming:
        """STATE of the primary host (Sparkplug 3.0: retained JSON; 2.x: ONLINE/OFFLINE text)."""
        text = payload.strip()
        if text in (b"ONLINE", b"OFFLINE"):
            online, ts = text == b"ONLINE", self._host_state_ts
        else:
            body = orjson.loads(payload)
            if not isinstance(body, dict) or not isinstance(body.get("online"), bool):
                raise ValueError('STATE is not {"online": true|false, "timestamp": ms}')
            online = body["online"]
            stamp = body.get("timestamp")
            ts = stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else self._host_state_ts
        if ts < self._host_state_ts:  # an older STATE than one already seen (Sparkplug 3.0)
            log.debug("Sparkplug: ignoring a stale STATE of %s", self._primary)
            return Incoming()
        self._host_state_ts = ts
        if online:
            was_online, self._host_online = self._host_online, True
            if self._connected and not self.node.born and not was_online:
                log.info("Sparkplug: primary host %s is online", self._primary)
                return Incoming(messages=self._births_unless_settling())
            return Incoming()
        self._host_online = False
        self._birth_pending = False
        if self.node.born and self._bd_seq is not None:
            log.warning("Sparkplug: primary host %s is offline: NDEATH, disconnect, buffer", self._primary)
            self.node.session_ended()
            return Incoming(messages=[self.node.death(self._bd_seq)], reconnect=True)
        return Incoming()

    def _node_command(self, payload: bytes) -> Incoming:
        command = pb.Payload.FromString(payload)
        for metric in command.metrics:
            if metric.name == REBIRTH and metric_value(metric, pb.Boolean):
                self.stats.rebirth_requests += 1
                if not self.node.born:
                    log.info("Sparkplug: rebirth requested before the birth; the birth will come")
                    return Incoming()
                log.info("Sparkplug: rebirth requested")
                return Incoming(messages=self._births(new_session=False))
            log.info("Sparkplug: ignoring NCMD metric %r", metric.name or metric.alias)
        return Incoming()

    def _device_command(self, device_name: str, payload: bytes) -> Incoming:
        """DCMD: a write per metric, as safe as json `/set`: known, writable, converted to the tag's type."""
        command = pb.Payload.FromString(payload)
        device = self.node.device(device_name)
        writes: list[WriteRequest] = []
        metrics = command.metrics
        if len(metrics) > MAX_DCMD_METRICS:  # one line for the excess, not one per metric
            excess = len(metrics) - MAX_DCMD_METRICS
            self.stats.commands_refused += excess
            log.warning("Sparkplug: DCMD %s: %d metrics refused: too many metrics in one DCMD "
                        "(limit %d; the first %d are written)", device_name, excess, MAX_DCMD_METRICS,
                        MAX_DCMD_METRICS)
            metrics = metrics[:MAX_DCMD_METRICS]
        for pm in metrics:
            metric = None
            if device is not None:
                if pm.HasField("name"):
                    metric = device.metrics.get(pm.name)
                elif pm.HasField("alias"):
                    metric = next((m for m in device.metrics.values() if m.alias == pm.alias), None)
            label = shorten(f"{device_name}/{pm.name or pm.alias}")
            if metric is None:
                self._refuse(label, "no such device or metric")
                continue
            if not metric.writable:
                self._refuse(label, "not writable")
                continue
            # A tag whose type no value has shown yet takes the command's own type; the
            # collector converts it to the device's type, or refuses.
            datatype = metric.datatype if metric.settled else pm.datatype
            try:
                value = convert_for_tag(metric_value(pm, datatype), datatype)
            except (DoesNotFit, TypeError, ValueError):
                self._refuse(label, f"value does not fit datatype {pb.DataType.Name(datatype)}")
                continue
            self._write_count += 1
            writes.append(WriteRequest(f"dcmd-{self._write_count}", device_name, metric.name, value))
        return Incoming(writes=writes)

    def _refuse(self, label: str, reason: str) -> None:
        self.stats.commands_refused += 1
        log.warning("Sparkplug: DCMD %s refused: %s", label, reason)

    def write_result(self, result: WriteResult) -> list[OutMessage]:
        """Counted and logged, nothing published: the host sees the value the collector reports
        after the write, as the device holds it, in the reading stream (see the module docstring).
        A DDATA of the commanded value would show a value the device may never have taken."""
        if not result.ok:
            self.stats.write_errors += 1
            error = shorten(result.error or "write failed", ERROR_ECHO)
            # busy / expired come by the hundred from one flood: counted here, logged once by the collector
            level = logging.DEBUG if error.startswith(("busy:", "expired:")) else logging.WARNING
            log.log(level, "Sparkplug: DCMD write of %s/%s failed: %s", result.device, result.tag, error)
            return []
        self.stats.writes_done += 1
        return []
