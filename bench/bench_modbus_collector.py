"""The Modbus collector's own costs: decode per reading, and polls/s against pymodbus' server.

    python bench/bench_modbus_collector.py [--devices 4] [--tags 125] [--type uint16] [--seconds 8]

1. In process: the block decoder's cost per reading for a few block layouts, and the poller's
   whole per-reading path after the read (decode, Reading, report filter, hand-off queue).
2. Processes: pymodbus' own server (one process; one TCP port per device, so each device is
   its own link) and the collector (`python -m collectors.modbus`, its own process) polling
   every device as fast as it answers (poll 1ms: the scheduler skips the ticks it cannot
   keep) with deadband 0, handing every reading off to this script's HandoffServer, which
   counts them. Polls/s come from the collector's /metrics; its CPU from /proc (utime +
   stime) over the measuring window; RSS at the end.
Prints figures; asserts nothing. The server is usually the limit (FIELD-NOTES: ~13k req/s per
core), and on a 2-core machine it shares the CPU with the collector.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collectors.core.handoff import HandoffServer  # noqa: E402
from collectors.core.model import DeviceState, Reading, WriteResult  # noqa: E402
from collectors.core.report import ReportFilter  # noqa: E402
from collectors.modbus.codec import _SHORT_CACHE, BlockDecoder  # noqa: E402
from collectors.modbus.config import ModbusDevice, Table  # noqa: E402
from collectors.modbus.planner import plan_device  # noqa: E402
from collectors.modbus.poller import DevicePoller  # noqa: E402
from tests.support.broker import free_port, wait_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")

SERVER = """
import asyncio, logging, sys
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
async def main():
    servers = []
    for port in map(int, sys.argv[1:]):
        device = SimDevice(id=1, simdata=(
            [SimData(0, count=256, values=False, datatype=DataType.BITS)],
            [SimData(0, count=256, values=False, datatype=DataType.BITS)],
            [SimData(0, count=256, values=0x4142, datatype=DataType.REGISTERS)],
            [SimData(0, count=256, values=0, datatype=DataType.REGISTERS)],
        ))
        server = ModbusTcpServer(device, address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        servers.append(server)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def device_dict(name: str, port: int, tags: int, type_: str) -> dict[str, Any]:
    width = {"uint16": 1, "int16": 1, "float32": 2, "uint32": 2, "float64": 4}[type_]
    return {
        "name": name, "protocol": "modbus", "poll": "1ms", "timeout": "1s",
        "connection": {"tcp": {"host": "127.0.0.1", "port": port}},
        "tags": [{"name": f"t{i}", "table": "holding", "address": i * width, "type": type_}
                 for i in range(min(tags, 125 // width))],
    }


def uncached_call(decoder: BlockDecoder, blocks: list[list[int]]) -> Any:
    def run() -> None:
        _SHORT_CACHE.clear()
        for words in blocks:
            decoder.decode(words)

    return run


def decoder_call(decoder: BlockDecoder, words: list[int]) -> Any:
    return lambda: decoder.decode(words)


class NoLink:
    """The poller's delivery path is measured without a link: nothing is read."""

    key = "none"


def micro() -> None:
    print("1. in process, per reading")
    layouts: dict[str, list[dict[str, Any]]] = {
        "125 x uint16": [{"type": "uint16", "address": i} for i in range(125)],
        "62 x float32": [{"type": "float32", "address": 2 * i} for i in range(62)],
        "62 x int32 scaled 0.1, CDAB": [
            {"type": "int32", "address": 2 * i, "scale": 0.1, "word_order": "little"} for i in range(62)
        ],
        "mixed (int16*0.1, float32, uint32, bit, string)": [
            {"type": t, "address": a, **extra} for a, t, extra in [  # type: ignore[dict-item]
                (0, "int16", {"scale": 0.1}), (1, "float32", {}), (3, "uint32", {}),
                (5, "uint16", {"bit": 3}), (6, "string", {"length": 8}),
            ]
        ],
    }
    words = [0x41AC, 0x0123] * 63
    for label, tags in layouts.items():
        device = ModbusDevice.model_validate({
            "name": "d", "protocol": "modbus", "connection": {"tcp": {"host": "x"}},
            "tags": [{"name": f"t{i}", "table": "holding", **tag} for i, tag in enumerate(tags)],
        })
        (poll_class,) = plan_device(device)
        (block,) = poll_class.blocks
        decoder = BlockDecoder(Table.HOLDING, block.count, block.tags, device)
        data = words[:block.count]
        n = max(1, 200_000 // len(tags))
        best = min(timeit.repeat(decoder_call(decoder, data), number=n, repeat=3))
        decode_ns = best / n / len(tags) * 1e9

        queue: list[Reading] = []
        poller = DevicePoller(device, NoLink(), ReportFilter(), queue.extend, lambda s: None)  # type: ignore[arg-type]
        planned = poller._blocks[0][0]

        def deliver(p: DevicePoller = poller, b: Any = planned, w: list[int] = data,
                    q: list[Reading] = queue) -> None:
            p._deliver(b.rules, b.decoder.decode(w), 1_764_316_800_000)
            q.clear()

        full_ns = min(timeit.repeat(deliver, number=n, repeat=3)) / n / len(tags) * 1e9
        print(f"   {label:<50} decode {decode_ns:6.0f} ns   decode+report {full_ns:6.0f} ns")
        if "float32" in label and "mixed" not in label:
            # the registers above repeat, so float32 formatting is served from the codec's cache;
            # values that never repeat (a noisy sensor) pay for it every time:
            fresh = [[(i * 7919 + k) & 0xFFFF if k % 2 else 0x41AC for k in range(block.count)]
                     for i in range(64)]
            cycles = 200
            best = min(timeit.repeat(uncached_call(decoder, fresh), number=cycles, repeat=3))
            ns = best / cycles / len(fresh) / len(tags) * 1e9
            print(f"   {label + ' (values never repeat)':<50} decode {ns:6.0f} ns")


class Sink:
    def __init__(self) -> None:
        self.count = 0
        self.first = asyncio.Event()

    async def readings(self, collector: str, readings: list[Reading]) -> None:
        self.count += len(readings)
        self.first.set()

    async def device_state(self, collector: str, state: DeviceState) -> None:
        pass

    def write_result(self, collector: str, result: WriteResult) -> None:
        pass


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def polls_total(port: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
    body = (await reader.read()).decode()
    writer.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("fieldgate_modbus_polls_total{") and 'result="ok"' in line)


async def end_to_collector(args: argparse.Namespace) -> None:
    print(f"2. processes: {args.devices} devices x {args.tags} {args.type} tags, "
          f"pymodbus server -> collector -> hand-off, {args.seconds:g}s")
    with tempfile.TemporaryDirectory() as tmp:
        ports = [free_port() for _ in range(args.devices)]
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SERVER, *map(str, ports), cwd=ROOT)
        collector: asyncio.subprocess.Process | None = None
        try:
            for port in ports:
                wait_port(port)
            sink = Sink()
            socket = Path(tmp) / "handoff.sock"
            metrics = free_port()
            config = {
                "name": "modbus", "metrics_port": metrics, "state_dir": tmp, "log_level": "WARNING",
                "handoff": {"socket": str(socket), "linger": "5ms", "queue_max": 1_000_000,
                            "queue_max_bytes": "1GiB"},
                "devices": [device_dict(f"dev-{i}", port, args.tags, args.type)
                            for i, port in enumerate(ports)],
            }
            config_file = Path(tmp) / "modbus.json"
            config_file.write_text(json.dumps(config))
            async with HandoffServer(socket, sink):
                collector = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "collectors.modbus", "--config", str(config_file), cwd=ROOT)
                await sink.first.wait()
                await asyncio.sleep(1.0)  # warm up
                count0, cpu0, t0 = sink.count, cpu_seconds(collector.pid), time.monotonic()
                server_cpu0 = cpu_seconds(server.pid)
                polls0 = await polls_total(metrics)
                await asyncio.sleep(args.seconds)
                count1, cpu1, t1 = sink.count, cpu_seconds(collector.pid), time.monotonic()
                server_cpu1 = cpu_seconds(server.pid)
                polls1 = await polls_total(metrics)
                rss = rss_mb(collector.pid)
                collector.terminate()  # while the hand-off is up: it drains, then exits
                await collector.wait()
        finally:
            for proc in (collector, server):
                if proc is not None and proc.returncode is None:
                    proc.terminate()
                    await proc.wait()
    span = t1 - t0
    readings = count1 - count0
    print(f"   polls/s            {(polls1 - polls0) / span:10.0f}")
    print(f"   readings/s         {readings / span:10.0f}")
    print(f"   collector CPU      {(cpu1 - cpu0) / span * 100:10.1f} % of one core")
    print(f"   CPU per 1,000 readings {(cpu1 - cpu0) / max(readings, 1) * 1000 * 1000:6.2f} ms")
    print(f"   collector RSS      {rss:10.1f} MB")
    print(f"   server CPU         {(server_cpu1 - server_cpu0) / span * 100:10.1f} % of one core "
          "(pymodbus' server: usually the limit)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--tags", type=int, default=125, help="tags per device (one block)")
    parser.add_argument("--type", default="uint16",
                        choices=["uint16", "int16", "float32", "uint32", "float64"])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--skip-micro", action="store_true")
    args = parser.parse_args()
    if not args.skip_micro:
        micro()
    asyncio.run(end_to_collector(args))


if __name__ == "__main__":
    main()
