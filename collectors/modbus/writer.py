"""Serves writes from the forwarder: check, encode, write, read back, report, answer.

A write is checked before the device is touched (the device and tag exist, the tag is
`writable`, the value fits the tag's type, range and `write_min`/`write_max`), then written
while the link is held, ahead of any waiting poll, and read back in the same turn, so the
answer and the reading reported with it show what the device now holds, not what was asked
(a read-back that fails is logged, and the write still answered `ok`: it was made).
A bit of a holding register is written as read-modify-write of its register in that same turn.

Writes do not pile up: a link and a tag take only so many pending writes (the rest are
refused "busy" at once), and a write whose turn comes too late to be done before its deadline
is not made and answered "expired", as the requester has been told by then (collectors.core.writes).
"""

from __future__ import annotations

import logging

from collectors.core.errors import DeviceError, WriteError
from collectors.core.model import WriteRequest, WriteResult, now_ms
from collectors.core.service import ErrorLatch
from collectors.core.writes import Busy, Expired, PendingWrites, check_deadline, check_limits
from collectors.modbus.codec import codec_for, decode
from collectors.modbus.link import WRITE
from collectors.modbus.poller import DevicePoller

log = logging.getLogger(__name__)


class Writer:
    """The collector's write handler (HandoffClient's `on_write`)."""

    def __init__(self, pollers: list[DevicePoller]) -> None:
        self._pollers = {poller.device.name: poller for poller in pollers}
        self.pending = PendingWrites()
        self.ok = 0
        self.failed = 0
        self.busy = 0  # refused at once: too many pending writes (collectors.core.writes)
        self.expired = 0  # not written: their deadline came first
        self._crowded = ErrorLatch(log, "writes refused, too many or too late")

    def replace(self, pollers: list[DevicePoller]) -> None:
        """The devices after a config reload."""
        self._pollers = {poller.device.name: poller for poller in pollers}

    async def __call__(self, request: WriteRequest) -> WriteResult:
        try:
            await self._write(request)
        except (Busy, Expired) as exc:  # a flood of these must not be a flood of log lines
            if isinstance(exc, Busy):
                self.busy += 1
            else:
                self.expired += 1
            self._crowded.failure(f"{request.device}/{request.tag}: {exc}")
            return WriteResult(request.id, request.device, request.tag, False, str(exc))
        except (WriteError, DeviceError) as exc:
            self.failed += 1
            error = f"write failed: {exc.reason}" if isinstance(exc, DeviceError) else str(exc)
            log.warning("write %s/%s = %r refused: %s", request.device, request.tag, request.value, error)
            return WriteResult(request.id, request.device, request.tag, False, error)
        self.ok += 1
        self._crowded.success()
        return WriteResult(request.id, request.device, request.tag, True)

    async def _write(self, request: WriteRequest) -> None:
        poller = self._pollers.get(request.device)
        if poller is None:
            raise WriteError(f"no Modbus device named {request.device!r} in this collector")
        device = poller.device
        tag = next((t for t in device.tags if t.name == request.tag), None)
        if tag is None:
            raise WriteError(f"device {device.name} has no tag {request.tag!r}")
        if not tag.table.is_writable:
            raise WriteError(
                f"{tag.name} is not writable: the {tag.table.value} table is read-only in Modbus"
            )
        if not tag.writable:
            raise WriteError(f"{tag.name} is not writable (writable: true in the device file allows it)")
        check_limits(tag.name, request.value, tag.write_min, tag.write_max)
        codec = codec_for(tag, device)
        if tag.bit is None:
            words = codec.encode(request.value)  # refuses a bad value before any I/O
        else:
            codec.encode(request.value, [0])
        table = tag.table
        # the turn's requests (a bit: read-modify-write, one more), each at the device's worst
        requests = 3 if tag.bit is not None else 2
        needs = requests * (device.retries + 1) * (device.timeout + device.frame_delay)
        check_deadline(request)
        with self.pending.admit(poller.link.key, device.name, tag.name):
            async with poller.link.turn(WRITE) as turn:
                check_deadline(request, needs)  # before the device is touched
                if tag.bit is not None:
                    current = await turn.read(device, table, tag.address, 1)
                    words = codec.encode(request.value, current)
                await turn.write(device, table, tag.address, words)
                try:
                    back = await turn.read(device, table, tag.address, tag.registers)
                except DeviceError as exc:  # written all the same: the answer must not say otherwise
                    log.warning("wrote %s/%s = %r, but its read-back failed: %s", device.name, tag.name,
                                request.value, exc.reason)
                    return
                ts_ms = now_ms()
        value = decode(tag, device, back)
        log.info("wrote %s/%s = %r (reads back %r)", device.name, tag.name, request.value, value)
        poller.deliver_value(tag, value, ts_ms)
