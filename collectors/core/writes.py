"""The rules every write obeys, whatever the protocol or the payload format that asked for it.

Pure checks (the value's type and limits) and the bookkeeping that keeps writes from piling
up: a write carries a deadline (the requester's answer is due then; a write not started in
time is not made at all), and a link and a tag each take only so many pending writes, the
rest are refused at once. Both collectors call these, so a json `/set` and a Sparkplug DCMD
are held to the same rules, and so are Modbus and OPC UA devices.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from collectors.core.errors import WriteError
from collectors.core.model import WriteRequest, now_ms

# Writes waiting for one link (a TCP endpoint, a serial port, an OPC UA session): enough for a
# recipe download of a few hundred setpoints, few enough that polls are not held up for long.
MAX_PENDING_PER_LINK = 256
# Writes waiting for one tag: a host that sends the same setpoint again and again is not
# served faster by queueing them; the last one wins anyway.
MAX_PENDING_PER_TAG = 4


class Busy(WriteError):
    """Refused at once: too many writes are pending for the link or the tag."""


class Expired(WriteError):
    """Not written: the write could not be done before its deadline."""


def as_bool(name: str, value: object) -> bool:
    """A Boolean write: JSON true/false or the numbers 0 and 1, nothing else (not 2, not "on")."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise WriteError(f"{name} is a bool: write true, false, 1 or 0, not {value!r}")


def finite(name: str, value: float, what: str = "") -> float:
    """`value` when it is a finite number; WriteError for NaN and the infinities."""
    if not math.isfinite(value):
        raise WriteError(f"{name}: {value!r}{what} is not a finite number")
    return value


def check_limits(name: str, value: object, low: float | None, high: float | None) -> None:
    """The tag's `write_min` / `write_max` (engineering units): refuse a value outside them."""
    if low is None and high is None:
        return
    if isinstance(value, list):
        for item in value:
            check_limits(name, item, low, high)
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteError(f"{name} has write limits: write a number, not {value!r}")
    if low is not None and value < low:
        raise WriteError(f"{name}: {value!r} is below its write_min {low:g}")
    if high is not None and value > high:
        raise WriteError(f"{name}: {value!r} is above its write_max {high:g}")


def check_deadline(request: WriteRequest, needs: float = 0.0) -> None:
    """Refuse a write that cannot be done before its deadline (WriteError "expired: ...").

    `needs`: seconds the device may take to answer the write (its timeout), so a write that is
    started is also answered before the requester gives up on it. A request without a
    deadline (from a forwarder that does not send one) never expires.
    """
    if request.deadline_ms is None:
        return
    left = (request.deadline_ms - now_ms()) / 1000
    if left <= 0:
        raise Expired(f"expired: not written, its deadline passed {-left:.1f}s ago while it waited")
    if left < needs:
        raise Expired(
            f"expired: not written, {left:.1f}s was left before its deadline and the device may "
            f"take {needs:g}s to answer"
        )


class PendingWrites:
    """Counts the writes waiting or running per link and per tag, and refuses the excess at once.

    Use `with pending.admit(link, device, tag):` around everything a write waits for; `busy`
    counts the refusals.
    """

    def __init__(self, per_link: int = MAX_PENDING_PER_LINK, per_tag: int = MAX_PENDING_PER_TAG) -> None:
        self.per_link = per_link
        self.per_tag = per_tag
        self._links: Counter[str] = Counter()
        self._tags: Counter[tuple[str, str]] = Counter()
        self.busy = 0

    @contextmanager
    def admit(self, link: str, device: str, tag: str) -> Iterator[None]:
        if self._links[link] >= self.per_link:
            self.busy += 1
            raise Busy(
                f"busy: too many pending writes on {link} ({self.per_link}); not written, try again later"
            )
        if self._tags[device, tag] >= self.per_tag:
            self.busy += 1
            raise Busy(
                f"busy: too many pending writes to {device}/{tag} ({self.per_tag}); not written, "
                "try again later"
            )
        self._links[link] += 1
        self._tags[device, tag] += 1
        try:
            yield
        finally:
            self._links[link] -= 1
            self._tags[device, tag] -= 1
            if not self._links[link]:
                del self._links[link]
            if not self._tags[device, tag]:
                del self._tags[device, tag]

    def __len__(self) -> int:
        return sum(self._links.values())
