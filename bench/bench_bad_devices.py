"""Log volume of a Modbus collector polling misbehaving devices: bytes per hour at the default level.

    python bench/bench_bad_devices.py [--devices 17] [--seconds 180] [--switch 5] [--poll 1s]

This script runs one misbehaving Modbus TCP server per device (tests/support/rogue_modbus.py:
wrong function codes, wrong byte counts and transaction ids, exceptions, stalls, garbage,
undecodable frames, half frames, connections closed mid-frame, floods of unsolicited frames)
and a hand-off server counting what arrives; the collector is the real one
(`python -m collectors.modbus`, its own process, log level INFO). Each device changes its
misbehaviour every `--switch` seconds (seeded, so runs compare), now and then answering well:
a device that flaps, which is what fills a log. The collector's stderr is measured over the
run and extrapolated to an hour. Also printed: lines per level, tracebacks, readings handed
off, and wrong values handed off as good (must be 0). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
from collections import Counter
from contextlib import suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collectors.core.handoff import HandoffServer  # noqa: E402
from collectors.core.model import DeviceState, Quality, Reading, WriteResult  # noqa: E402
from tests.support.rogue_modbus import GOOD, MODES, RogueModbusServer  # noqa: E402

LEVEL = re.compile(rb" (DEBUG|INFO|WARNING|ERROR|CRITICAL) +modbus ")


class Count:
    """The forwarder's end of the hand-off: counts readings, and wrong values passed as good."""

    def __init__(self) -> None:
        self.total = 0
        self.wrong_good = 0

    async def readings(self, collector: str, readings: list[Reading]) -> None:
        for reading in readings:
            if reading.quality == Quality.GOOD and reading.value != GOOD:
                self.wrong_good += 1
        self.total += len(readings)

    async def device_state(self, collector: str, state: DeviceState) -> None:
        pass

    def write_result(self, collector: str, result: WriteResult) -> None:
        pass


async def misbehave(servers: list[RogueModbusServer], switch: float, seed: int) -> None:
    rng = random.Random(seed)
    bad = [mode for mode in MODES if mode != "good"]
    while True:
        for server in servers:
            server.mode = "good" if rng.random() < 0.2 else rng.choice(bad)
        await asyncio.sleep(switch)


async def main(args: argparse.Namespace) -> None:
    count = Count()
    with tempfile.TemporaryDirectory() as tmp:
        socket = Path(tmp) / "handoff.sock"
        async with HandoffServer(socket, count):
            servers = [await RogueModbusServer().__aenter__() for _ in range(args.devices)]
            devices: list[dict[str, Any]] = [
                {"name": f"dev-{i}", "protocol": "modbus", "poll": args.poll,
                 "connection": {"tcp": {"host": "127.0.0.1", "port": server.port}},
                 "tags": [{"name": "level", "table": "holding", "address": 0, "type": "uint16"},
                          {"name": "flow", "table": "holding", "address": 1, "type": "uint16"}]}
                for i, server in enumerate(servers)
            ]
            config = Path(tmp) / "modbus.json"
            config.write_text(json.dumps({
                "name": "modbus", "handoff": {"socket": str(socket)}, "metrics_port": None,
                "state_dir": tmp, "log_level": "INFO", "devices": devices,
            }))
            log = Path(tmp) / "modbus.log"
            flapping = asyncio.create_task(misbehave(servers, args.switch, args.seed))
            with log.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "collectors.modbus", "--config", str(config),
                    stdout=out, stderr=out, cwd=ROOT,
                )
                started = time.monotonic()
                warm = 0
                try:
                    await asyncio.wait_for(proc.wait(), min(args.warmup, args.seconds))
                except TimeoutError:
                    warm = log.stat().st_size
                with suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), max(args.seconds - args.warmup, 0.001))
                if proc.returncode is not None:
                    print(f"the collector ended early with exit code {proc.returncode}")
                elapsed = time.monotonic() - started
                if proc.returncode is None:
                    proc.terminate()
                    await proc.wait()
            flapping.cancel()
            for server in servers:
                await server.__aexit__(None, None, None)
            text = log.read_bytes()
    levels = Counter(match.group(1).decode() for match in LEVEL.finditer(text))
    per_hour = len(text) * 3600 / elapsed
    print(f"{args.devices} misbehaving devices, poll {args.poll}, misbehaviour changing every "
          f"{args.switch:g}s, {elapsed:.0f}s of the collector at log level INFO")
    lines = text.count(b"\n")
    print(f"log: {len(text)} bytes, {lines} lines "
          f"({', '.join(f'{n} {lvl}' for lvl, n in sorted(levels.items()))}), "
          f"{text.count(b'Traceback (most recent call last)')} tracebacks")
    print(f"log bytes per hour, whole run: {per_hour / 1e6:.3f} MB/h")
    if elapsed > args.warmup:
        # the first minute says every device's first failure once; what follows is the steady state
        steady = (len(text) - warm) * 3600 / (elapsed - args.warmup)
        print(f"log bytes per hour after the first {args.warmup:g}s: {steady / 1e6:.3f} MB/h "
              f"({steady / 1e3:.1f} kB/h, {steady * 24 / 1e6:.1f} MB/day)")
    print(f"readings handed off: {count.total}; wrong values handed off as good: {count.wrong_good}")
    if args.show:
        sys.stdout.write(text.decode(errors="replace")[-args.show:])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=17)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--switch", type=float, default=5.0, help="seconds between changes of misbehaviour")
    parser.add_argument("--poll", default="1s")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the steady-state measurement")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--show", type=int, default=0, help="print the last N characters of the log")
    asyncio.run(main(parser.parse_args()))
