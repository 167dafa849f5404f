"""The status columns a runtime measures: readings/s and buffered from a service's /metrics,
CPU and memory from the Docker Engine's stats (the docker runtime), and a process's memory
from /proc (the process runtime, and the supervisor itself).

Both runtimes scrape the same way (`scrape`) and compute readings/s the same way
(`ReadingsRate`); this module does no scheduling and holds no state beyond a `ReadingsRate`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

HTTP_TIMEOUT = 2.0

# The counter of readings through each kind of service (the forwarder: delivered to the broker);
# the first one a service serves wins.
READINGS_COUNTERS = (
    "fieldgate_forwarder_readings_out_total",
    "fieldgate_modbus_readings_total",
    "fieldgate_opcua_readings_total",
    "fieldgate_readings_total",
)
BUFFERED_GAUGES = ("fieldgate_forwarder_buffered_readings",)
QUARANTINED_GAUGES = ("fieldgate_forwarder_quarantined_segments",)


async def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    """A minimal GET against our own metrics servers (no HTTP client dependency)."""
    async with asyncio.timeout(HTTP_TIMEOUT):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read(4 * 1024 * 1024)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP answer from port {port}")
    return int(parts[1]), body.decode("utf-8", "replace")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {family: sum of its samples} (labels summed away)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def first_of(totals: dict[str, float], names: tuple[str, ...]) -> float | None:
    """The value of the first of `names` that `totals` has."""
    for name in names:
        if name in totals:
            return totals[name]
    return None


class ReadingsRate:
    """Readings per second from successive samples of a readings counter.

    A counter that went down was reset: the service restarted (a new process, a recreated
    container) and counts from zero again, so the increase since the last sample is the new
    value itself, as Prometheus' `rate()` takes it. Neither a negative rate nor a stale one.
    """

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None  # (monotonic, counter) of the last sample
        self.per_s: float | None = None

    def add(self, now: float, count: float) -> float | None:
        if self._last is not None and now > self._last[0]:
            then, before = self._last
            increase = count - before if count >= before else count
            self.per_s = increase / (now - then)
        self._last = (now, count)
        return self.per_s


@dataclass(frozen=True)
class Scraped:
    """What one /metrics answer says, for the status columns."""

    readings: float | None  # the readings counter (READINGS_COUNTERS)
    buffered: float | None  # readings the forwarder holds (BUFFERED_GAUGES)
    quarantined: float | None = None  # buffer segments set aside, never replayed (QUARANTINED_GAUGES)


async def scrape(host: str, port: int) -> Scraped | None:
    """A service's /metrics, or None when it does not answer 200 (not up yet, gone, stuck)."""
    try:
        status, text = await http_get(port, "/metrics", host=host)
    except (OSError, TimeoutError, ConnectionError):
        return None
    if status != 200:
        return None
    totals = parse_metrics(text)
    return Scraped(first_of(totals, READINGS_COUNTERS), first_of(totals, BUFFERED_GAUGES),
                   first_of(totals, QUARANTINED_GAUGES))


# ------------------------------------------------------------------ a process's memory


def process_memory(pid: int) -> tuple[int, str] | None:
    """(bytes, "pss") of a process: its proportional set size, shared pages divided among the
    processes that map them, so the services' figures add up to what they take together
    (/proc/PID/smaps_rollup, Linux 4.14+). (bytes, "rss") where that file cannot be read;
    None when the process is gone (or this is not Linux)."""
    for path, key, source in ((f"/proc/{pid}/smaps_rollup", b"Pss:", "pss"), (f"/proc/{pid}/status", b"VmRSS:", "rss")):
        try:
            with open(path, "rb") as proc:
                kib = next((int(line.split()[1]) for line in proc if line.startswith(key)), None)
        except (OSError, ValueError, IndexError):
            continue
        if kib is not None:
            return kib * 1024, source
    return None


# ------------------------------------------------------------------ the Engine's stats


def cpu_sample(stats: dict[str, Any]) -> tuple[float, float, float]:
    """(the container's CPU time, the system's CPU time, online CPUs) of one Engine stats answer."""
    cpu = stats.get("cpu_stats", {})
    return (float(cpu.get("cpu_usage", {}).get("total_usage", 0)), float(cpu.get("system_cpu_usage", 0)),
            float(cpu.get("online_cpus") or 1))


def cpu_percent(before: tuple[float, float], now: tuple[float, float, float]) -> float | None:
    """Percent of one core between two samples (`docker stats` reckons the same way)."""
    cpu_total, system, online = now
    if system <= before[1]:
        return None
    share = (cpu_total - before[0]) / (system - before[1]) * online
    return round(max(0.0, share) * 100, 1)


def memory_used(stats: dict[str, Any]) -> int | None:
    """Bytes in use less the page cache the kernel may drop, as `docker stats` shows it."""
    memory = stats.get("memory_stats", {})
    usage = memory.get("usage")
    if usage is None:
        return None
    extra = memory.get("stats", {})
    cache = extra.get("total_inactive_file", extra.get("inactive_file", extra.get("cache", 0)))
    return int(usage - cache)
