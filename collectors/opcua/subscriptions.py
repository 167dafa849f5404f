"""What the collector asks of one server, and the readings it makes of the answers.

Per device: one subscription (Part 4, 5.13) holding a monitored item per `mode: subscribe`
tag, with the device's sampling interval and queue size and the tag's deadband as a
server-side DataChangeFilter (Part 4, 7.22.2); one Read service call per poll class for the
`mode: poll` tags; and the `max_silence` heartbeat. `plan_device` describes all of it for
`fieldgate plan`; `reader.DeviceReader` runs it on one connected Session.

Pure: no asyncua import, so the gateway can plan without the opcua extra installed.
"""

from __future__ import annotations

from collectors.core.config import format_duration
from collectors.opcua.config import OpcuaDevice, OpcuaTag

# asyncua's iterator queue (in notifications); see queue_maxsize
QUEUE_MIN = 10_000
QUEUE_MAX = 1_000_000


def subscribed_tags(device: OpcuaDevice) -> list[OpcuaTag]:
    return [tag for tag in device.tags if tag.mode == "subscribe"]


def poll_classes(device: OpcuaDevice) -> dict[float, list[OpcuaTag]]:
    """Polled tags grouped by interval: each group is one Read service call per interval."""
    classes: dict[float, list[OpcuaTag]] = {}
    for tag in device.tags:
        if tag.mode == "poll":
            classes.setdefault(tag.poll or device.poll, []).append(tag)
    return dict(sorted(classes.items()))


def queue_maxsize(device: OpcuaDevice) -> int:
    """Iterator queue: every item's server queue twice over, so one full publish never overflows it."""
    items = len(subscribed_tags(device))
    return max(QUEUE_MIN, min(QUEUE_MAX, 2 * items * device.subscription.queue_size))


def plan_device(device: OpcuaDevice) -> list[str]:
    """Lines describing the subscription and the polled reads the collector will make (`fieldgate plan`)."""
    lines: list[str] = []
    sub = device.subscription
    subscribed = subscribed_tags(device)
    security = device.security
    in_clear = security.policy == "None" and security.allow_password_without_encryption and (
        security.password is not None or security.password_file is not None
    )
    lines.append(
        f"{device.name}: {device.endpoint}  "
        + (f"security {security.policy},{security.mode}" if security.policy != "None" else "no security")
        + (f"  user {security.username}" if security.username else "")
        + (f"  trust {security.trust}" if security.policy != "None" else "")
        + ("  PASSWORD SENT WITHOUT ENCRYPTION" if in_clear else "")
    )
    if subscribed:
        lines.append(
            f"  subscription: publishing {format_duration(sub.publishing_interval)}, "
            f"{len(subscribed)} monitored item{'s' if len(subscribed) != 1 else ''}, "
            f"client queue {queue_maxsize(device)}"
        )
        width = max(len(t.name) for t in subscribed)
        node_width = max(len(t.node) for t in subscribed)
        for tag in subscribed:
            if tag.deadband > 0:
                deadband = (
                    f"deadband {tag.deadband:g} absolute (server DataChangeFilter)"
                    if tag.deadband_type == "absolute"
                    else f"deadband {tag.deadband:g}% of EURange (server DataChangeFilter)"
                )
            else:
                deadband = "every change"
            lines.append(
                f"    {tag.name:<{width}}  {tag.node:<{node_width}}  "
                f"sampling {format_duration(sub.sampling_interval)}  queue {sub.queue_size}  {deadband}"
                + ("  writable" if tag.writable else "")
            )
    for interval, tags in poll_classes(device).items():
        lines.append(
            f"  poll every {format_duration(interval)}: "
            f"one Read of {len(tags)} node{'s' if len(tags) != 1 else ''}"
        )
        width = max(len(t.name) for t in tags)
        for tag in tags:
            lines.append(f"    {tag.name:<{width}}  {tag.node}" + ("  writable" if tag.writable else ""))
    silences = sorted({t.max_silence or device.max_silence for t in device.tags})
    lines.append(
        "  heartbeat: every tag reported at least every " + " / ".join(map(format_duration, silences))
    )
    return lines
