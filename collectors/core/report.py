"""Which readings a collector reports: deadband, heartbeat and quality changes, for every protocol.

A reading is reported when it is the tag's first, when its quality changes, when it moves at
least `deadband` from the last reported value (deadband 0: every poll), when a non-numeric
value changes, or when the tag has been silent for `max_silence` (the heartbeat that tells a
historian "still this value" and a SCADA watchdog "still alive").
"""

from __future__ import annotations

from collectors.core.model import Quality, Reading, Value


class ReportFilter:
    __slots__ = ("_last",)

    def __init__(self) -> None:
        # (device, tag) -> (last reported value, its quality, when it was reported: monotonic s)
        self._last: dict[tuple[str, str], tuple[Value, str, float]] = {}

    def accept(self, reading: Reading, deadband: float, max_silence: float, now: float) -> bool:
        """True when `reading` should be reported; remembers it if so."""
        key = (reading.device, reading.tag)
        last = self._last.get(key)
        if last is None or self._differs(last, reading, deadband) or now - last[2] >= max_silence:
            self._last[key] = (reading.value, reading.quality, now)
            return True
        return False

    @staticmethod
    def _differs(last: tuple[Value, str, float], reading: Reading, deadband: float) -> bool:
        value, quality, _ = last
        if quality != reading.quality:
            return True
        if deadband <= 0:
            return True
        new = reading.value
        if isinstance(new, bool) or isinstance(value, bool):
            return new != value
        if isinstance(new, int | float) and isinstance(value, int | float):
            return abs(new - value) >= deadband
        return new != value

    def last_value(self, device: str, tag: str) -> Value:
        """The last reported value, for the `bad` reading a failure reports with it."""
        last = self._last.get((device, tag))
        return None if last is None else last[0]

    def forget(self, device: str) -> None:
        for key in [k for k in self._last if k[0] == device]:
            del self._last[key]


def bad_readings(
    device: str, tags: list[str], report: ReportFilter, ts_ms: int, reason: str
) -> list[Reading]:
    """One `bad` reading per tag with its last value: what a device that stopped answering reports."""
    return [Reading(device, tag, report.last_value(device, tag), ts_ms, Quality.BAD, reason) for tag in tags]
