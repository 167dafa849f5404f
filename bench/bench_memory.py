"""Memory of the running gateway: supervisor + forwarder + Modbus collector at ~1,000 readings/s.

    python bench/bench_memory.py [--runtime process|docker|both] [--tags 100] [--poll-ms 100]
                                 [--seconds 20] [--modules]

The plant: one Modbus TCP device of `--tags` uint16 holding registers polled every `--poll-ms`
(100 tags at 100 ms: 1,000 readings/s), served by `fieldgate simulate` in its own process;
a real Mosquitto on a free loopback port; `fieldgate up DIR --runtime R` as a user starts it.
Once the forwarder delivers readings, the bench waits `--seconds` and then reads, for the
supervisor and each child process, /proc/PID/smaps_rollup:

  RSS  resident pages of the process (shared library pages counted in every process)
  PSS  proportional set size: each shared page divided among the processes that map it, so
       the PSS of several processes adds up to what they take together
  USS  private pages only (Private_Clean + Private_Dirty): what its exit would free

PSS divides a library's pages among every process on the machine that maps them, other Python
programs and the simulator included, so the total moves by a few MiB with what else runs. The
bench also prints what the three take on their own: the physical pages they have resident
(/proc/PID/pagemap, root), each counted once however many of the three map it: the PSS total
they would have on a gateway that runs nothing else in Python.

and prints them with the total PSS, next to the 65 MiB of the closest Python peer (ThingsBoard
IoT Gateway 3.8.5, one process, same 100-tag plant), and what `fieldgate status` shows
(status MiB: the PSS the process runtime reads). With the docker runtime the children are
containers: the PSS of each container's processes (its init and what it runs) is read from the
host's /proc (root needed), and status MiB is the Engine's figure.
`--modules` also lists the extension modules and libraries each process has mapped
(/proc/PID/maps): the supervisor maps none of pydantic, PyYAML or a driver, and the forwarder
and the collector, which build their rendered slices with collectors.core.lite, neither
pydantic nor PyYAML.

Bytecode: an installed fieldgate has its modules compiled (pip compiles them at install, the
images too), but a checkout run with PYTHONDONTWRITEBYTECODE=1 compiles every module of
`gateway` and `collectors` in every process at every start, which leaves 1.5-2.5 MiB more
resident per process. The bench compiles the tree first (`compileall`, into the ignored
`__pycache__` folders), so the figures are those of an installed gateway.

Prints figures; asserts nothing. The test tests/gateway/test_memory.py guards the limits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.demo import free_port_run  # noqa: E402
from tests.support.broker import Mosquitto, free_port, wait_port  # noqa: E402

PEER_MIB = 65.0  # ThingsBoard IoT Gateway 3.8.5, one process, the same 100-tag plant (issue 10)
MIB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


def smaps_rollup(pid: int) -> dict[str, int]:
    """Rss, Pss, Uss of a process in bytes, from /proc/PID/smaps_rollup."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1]) * 1024
    return {"rss": fields.get("Rss", 0), "pss": fields.get("Pss", 0),
            "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)}


def resident_pages(pid: int) -> set[int]:
    """The physical pages (frame numbers) a process has resident, from /proc/PID/pagemap (root:
    others read frame number 0)."""
    frames: set[int] = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            if line.rstrip().endswith("[vsyscall]"):  # not in the page tables
                continue
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            pagemap.seek(start // PAGE * 8)
            for (entry,) in struct.iter_unpack("<Q", pagemap.read((end - start) // PAGE * 8)):
                if entry >> 63 & 1:  # present
                    frames.add(entry & ((1 << 55) - 1))
    return frames


def shared_objects(pid: int) -> list[str]:
    """The extension modules and libraries a process has mapped (from /proc/PID/maps)."""
    names = set()
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            path = line.split(maxsplit=5)[-1].strip() if len(line.split()) >= 6 else ""
            if ".so" in path:
                names.add(path)
    return sorted(names)


def device_file(port: int, tags: int, poll_ms: float) -> dict[str, Any]:
    return {
        "name": "plant", "protocol": "modbus",
        "connection": {"tcp": {"host": "127.0.0.1", "port": port}},
        "unit": 1, "poll": f"{poll_ms:g}ms", "timeout": "1s",
        "tags": [
            {"name": f"t{i:03d}", "table": "holding", "address": i, "type": "uint16", "scale": 0.1,
             "unit": "degC", "deadband": 0,
             "simulate": {"kind": "sine", "min": 18, "max": 26, "period": "30s"}}
            for i in range(tags)
        ],
    }


def write_plant(folder: Path, broker_port: int, device_port: int, tags: int, poll_ms: float) -> None:
    (folder / "devices").mkdir(parents=True, exist_ok=True)
    (folder / "devices" / "plant.yaml").write_text(
        yaml.safe_dump(device_file(device_port, tags, poll_ms), sort_keys=False))
    gateway = {
        "gateway": {"id": "bench-memory", "group": "memory"},  # docker: project fieldgate-bench-memory
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "client_id": "fieldgate-bench-memory",
                 "qos": 1, "format": "json", "layout": "tag"},
        "metrics": {"port": free_port_run(2)},  # the forwarder's, then the Modbus collector's
        "buffer": {"max_bytes": "64MiB", "durability": "outage"},
    }
    (folder / "gateway.yaml").write_text(yaml.safe_dump(gateway, sort_keys=False))


def fieldgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


def read_status(folder: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((folder / ".fieldgate" / "run" / "status.json").read_text())
        return data
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def wait_flowing(folder: Path, timeout: float, names: tuple[str, ...]) -> dict[str, Any]:
    """status.json once every service runs healthy with a readings rate."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        status = read_status(folder)
        if status is not None:
            services = {svc["name"]: svc for svc in status.get("services", [])}
            if all(services.get(n, {}).get("health") == "healthy" and services[n].get("readings_per_s")
                   for n in names):
                return status
        time.sleep(0.5)
    raise TimeoutError(f"the services did not turn healthy with readings within {timeout}s: {status}")


def child_pids(pid: int) -> list[int]:
    """Every descendant of pid."""
    found: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found.append(child)
        found.extend(child_pids(child))
    return found


def container_pid(container: str) -> int:
    out = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", container],
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip())


PROJECT = "fieldgate-bench-memory"


def remove_project(project: str) -> None:
    """The docker runtime stops its containers on shutdown and keeps them and their volumes
    (a restart resumes them); the bench's are removed."""
    label = f"label=com.docker.compose.project={project}"
    for kind in ("container", "volume"):
        listed = subprocess.run(["docker", kind, "ls", *(["-a"] if kind == "container" else []), "-q",
                                 "--filter", label], capture_output=True, text=True, timeout=60).stdout.split()
        if listed:
            subprocess.run(["docker", kind, "rm", *(["-f"] if kind == "container" else []), *listed],
                           capture_output=True, timeout=120)


def run(runtime: str, tags: int, poll_ms: float, seconds: float, show_modules: bool) -> dict[str, dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="fieldgate-bench-memory-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work).start()
        device_port = free_port()
        folder = work / "plant"
        write_plant(folder, broker.port, device_port, tags, poll_ms)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        logs = (work / "logs.txt").open("wb")
        sim = subprocess.Popen(fieldgate("simulate", str(folder / "devices" / "plant.yaml")),
                               stdout=logs, stderr=subprocess.STDOUT, env=env)
        up: subprocess.Popen[bytes] | None = None
        try:
            wait_port(device_port, 30)
            up = subprocess.Popen(fieldgate("up", str(folder), "--runtime", runtime),
                                  stdout=logs, stderr=subprocess.STDOUT, env=env)
            status = wait_flowing(folder, 180, ("forwarder", "modbus"))
            time.sleep(seconds)
            status = read_status(folder) or status
            services = {svc["name"]: svc for svc in status["services"]}
            pids: dict[str, int] = {"supervisor": up.pid}
            if runtime == "process":
                for name in ("forwarder", "modbus"):
                    pids[name] = int(services[name]["pid"])
            else:
                for name in ("forwarder", "modbus"):
                    pids[name] = container_pid(services[name]["container"])
            figures: dict[str, dict[str, Any]] = {}
            for name, pid in pids.items():
                # A container's processes: its init (State.Pid) and what it runs, summed.
                tree = [pid, *child_pids(pid)] if runtime == "docker" and name != "supervisor" else [pid]
                rollups = [smaps_rollup(p) for p in tree]
                shown = status["supervisor"] if name == "supervisor" else services.get(name, {})
                figures[name] = {"pid": pid, **{key: sum(r[key] for r in rollups) for key in ("rss", "pss", "uss")},
                                 "status_memory": shown.get("memory"),
                                 "readings_per_s": services.get(name, {}).get("readings_per_s")}
                figures[name]["pages"] = set().union(*(resident_pages(p) for p in tree))
                if show_modules:
                    figures[name]["so"] = shared_objects(pid)
            return figures
        finally:
            if up is not None:
                up.send_signal(signal.SIGTERM)
                try:
                    up.wait(60)
                except subprocess.TimeoutExpired:
                    up.kill()
            sim.terminate()
            sim.wait(10)
            broker.stop()
            if runtime == "docker":
                remove_project(PROJECT)
            logs.close()
            if up is not None and up.returncode not in (0, -signal.SIGTERM):
                print((work / "logs.txt").read_text()[-4000:], file=sys.stderr)


def print_table(runtime: str, figures: dict[str, dict[str, Any]]) -> None:
    print(f"\n{runtime} runtime ({figures['modbus'].get('readings_per_s') or 0:.0f} readings/s collected, "
          f"{figures['forwarder'].get('readings_per_s') or 0:.0f} delivered)")
    print(f"{'process':<11} {'pid':>7} {'RSS MiB':>8} {'PSS MiB':>8} {'USS MiB':>8} {'status MiB':>11}")
    for name, fig in figures.items():
        shown = fig.get("status_memory")
        print(f"{name:<11} {fig['pid']:>7} {fig['rss'] / MIB:>8.1f} {fig['pss'] / MIB:>8.1f} "
              f"{fig['uss'] / MIB:>8.1f} {'-' if shown is None else f'{shown / MIB:.1f}':>11}")
        for so in fig.get("so", []):
            print(f"{'':<11}   {so}")
    total_pss = sum(fig["pss"] for fig in figures.values()) / MIB
    total_rss = sum(fig["rss"] for fig in figures.values()) / MIB
    total_uss = sum(fig["uss"] for fig in figures.values()) / MIB
    together = len(set().union(*(fig["pages"] for fig in figures.values()))) * PAGE / MIB
    print(f"{'total':<11} {'':>7} {total_rss:>8.1f} {total_pss:>8.1f} {total_uss:>8.1f}")
    print(f"total PSS {total_pss:.1f} MiB (target <= 65 MiB; the peer's one process: {PEER_MIB:.0f} MiB); "
          f"supervisor PSS {figures['supervisor']['pss'] / MIB:.1f} MiB (target <= 20 MiB)")
    print(f"the three alone: {together:.1f} MiB resident, every page counted once (what the PSS total "
          "would be if no other process on this machine shared their libraries)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime", choices=["process", "docker", "both"], default="process")
    parser.add_argument("--tags", type=int, default=100)
    parser.add_argument("--poll-ms", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to run at rate before measuring")
    parser.add_argument("--modules", action="store_true", help="also list each process's mapped .so files")
    args = parser.parse_args()
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        print("mosquitto is not installed: apt-get install -y mosquitto", file=sys.stderr)
        return 1
    runtimes = ["process", "docker"] if args.runtime == "both" else [args.runtime]
    import compileall

    for package in ("gateway", "collectors"):  # see the module docstring: "Bytecode"
        compileall.compile_dir(str(ROOT / package), quiet=1)
    print(f"plant: 1 Modbus TCP device, {args.tags} tags every {args.poll_ms:g} ms "
          f"(offered {args.tags * 1000 / args.poll_ms:.0f} readings/s), JSON layout tag at QoS 1")
    for runtime in runtimes:
        print_table(runtime, run(runtime, args.tags, args.poll_ms, args.seconds, args.modules))
    return 0


if __name__ == "__main__":
    sys.exit(main())
