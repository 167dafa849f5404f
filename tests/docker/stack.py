"""A plant directory, simulators on the host and `fieldgate up --runtime docker`, as a user runs them.

Each stack gets its own gateway id, so its compose project, containers and volumes are its
own; `close()` stops the supervisor (which stops the containers) and removes what is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

from tests.support.broker import free_port

ROOT = Path(__file__).resolve().parents[2]


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (collectors take the ports after the forwarder's)."""
    for _ in range(50):
        first = free_port()
        if first + count >= 65535:
            continue
        taken = False
        for port in range(first, first + count):
            with socket.socket() as sock:
                try:
                    sock.bind(("0.0.0.0", port))
                except OSError:
                    taken = True
                    break
        if not taken:
            return first
    raise RuntimeError(f"no {count} consecutive free ports")


# The tag of the images the docker tier runs: the package version that `fieldgate images build`
# gives by default; FIELDGATE_TEST_IMAGE_TAG runs the tier on images built with `--tag`.
IMAGE_TAG = os.environ.get("FIELDGATE_TEST_IMAGE_TAG", "0.1.0")


def image(name: str) -> str:
    """`image("forwarder")`, `image("collector-modbus")`: the reference the tier runs."""
    return f"fieldgate/{name}:{IMAGE_TAG}"


def gateway_yaml(gateway_id: str, broker_port: int, metrics_port: int, network: str = "host") -> str:
    return f"""\
gateway:
  id: {gateway_id}
mqtt:
  host: 127.0.0.1
  port: {broker_port}
  qos: 1
metrics:
  port: {metrics_port}
runtime: docker
network: {network}
forwarder:
  image: {image('forwarder')}
  cpus: 0.5
  memory: 128MiB
collectors:
  modbus:
    image: {image('collector-modbus')}
    cpus: 0.5
    memory: 128MiB
    update: stop-first
  opcua:
    image: {image('collector-opcua')}
    cpus: 0.5
    memory: 192MiB
    update: start-first
"""


def modbus_tcp_device(name: str, port: int, poll: str = "250ms") -> str:
    return f"""\
name: {name}
protocol: modbus
connection:
  tcp: {{host: 127.0.0.1, port: {port}}}
unit: 1
poll: {poll}
tags:
  - name: counter
    table: holding
    address: 0
    type: uint16
    simulate: {{kind: counter, step: 4, max: 60000}}
  - name: temperature
    table: holding
    address: 2
    type: float32
    unit: degC
    simulate: {{kind: constant, value: 21.5}}
"""


def modbus_rtu_device(name: str, port: str, unit: int = 7) -> str:
    return f"""\
name: {name}
protocol: modbus
connection:
  rtu: {{port: {port}, baudrate: 19200, parity: N}}
unit: {unit}
poll: 250ms
tags:
  - name: pressure
    table: holding
    address: 10
    type: float32
    unit: bar
    simulate: {{kind: constant, value: 4.25}}
  - name: status
    table: input
    address: 0
    type: int16
    simulate: {{kind: constant, value: -3}}
"""


def opcua_device(name: str, port: int) -> str:
    return f"""\
name: {name}
protocol: opcua
endpoint: opc.tcp://127.0.0.1:{port}
subscription: {{publishing_interval: 200ms, sampling_interval: 100ms}}
tags:
  - name: temperature
    node: "ns=2;s=Oven.Temperature"
    unit: degC
    simulate: {{kind: constant, value: 180.5}}
"""


class Process:
    """A child process with its output in a log file, stopped by pid (never by name)."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env={**os.environ, **(env or {})}, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, needle: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{needle!r} not in output after {timeout}s:\n{self.text()[-3000:]}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def fieldgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


class Stack:
    """One plant directory with its simulators and its supervisor."""

    def __init__(self, workdir: Path, broker_port: int, network: str = "host") -> None:
        self.workdir = workdir
        self.gateway_id = f"t{uuid.uuid4().hex[:8]}"
        self.project = f"fieldgate-{self.gateway_id}"
        self.plant = workdir / "plant"
        (self.plant / "devices").mkdir(parents=True)
        self.sim_dir = workdir / "sim"
        self.sim_dir.mkdir()
        self.metrics_port = free_ports(3)
        self.broker_port = broker_port
        (self.plant / "gateway.yaml").write_text(
            gateway_yaml(self.gateway_id, broker_port, self.metrics_port, network))
        self.processes: list[Process] = []
        self.supervisor: Process | None = None
        self.client = docker.from_env()

    @property
    def topic_prefix(self) -> str:
        return f"fieldgate/{self.gateway_id}"

    def add_device(
        self, name: str, text: str, simulate: bool = True, sim_text: str | None = None,
        sim_host: str | None = None,
    ) -> Path:
        path = self.plant / "devices" / f"{name}.yaml"
        path.write_text(text)
        if simulate:
            sim_path = self.sim_dir / f"{name}.yaml"
            sim_path.write_text(sim_text or text)
            host = ["--host", sim_host] if sim_host else []
            sim = Process(fieldgate("simulate", str(sim_path), *host), self.workdir / f"sim-{name}.log")
            self.processes.append(sim)
            sim.wait_for_output("simulating", 30)
        return path

    def up(self) -> Process:
        self.supervisor = Process(
            fieldgate("up", str(self.plant), "--runtime", "docker"), self.workdir / "up.log")
        return self.supervisor

    def status(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(fieldgate("status", str(self.plant)), capture_output=True, text=True,
                              cwd=ROOT, timeout=30)

    def status_table(self) -> dict[str, dict[str, str]]:
        """`fieldgate status DIR` as a user reads it: service -> column -> cell (cells are aligned
        under their headers; a state may hold spaces, so columns are cut at the header positions)."""
        lines = [line for line in self.status().stdout.splitlines() if line.strip()]
        header = next((i for i, line in enumerate(lines) if line.startswith("SERVICE")), None)
        if header is None:
            return {}
        names = lines[header].split()
        starts = [lines[header].index(name) for name in names]
        table: dict[str, dict[str, str]] = {}
        for line in lines[header + 1:]:
            cells = [line[start:end].strip() for start, end in zip(starts, [*starts[1:], None], strict=True)]
            table[cells[0]] = dict(zip(names, cells, strict=True))
        return table

    def containers(self) -> dict[str, Any]:
        found = self.client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={self.project}"})
        return {c.labels["com.docker.compose.service"]: c for c in found
                if c.name == f"{self.project}-{c.labels['com.docker.compose.service']}-1"}

    def wait_containers(
        self, check: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            containers = self.containers()
            if check(containers):
                return containers
            if self.supervisor is not None and self.supervisor.proc.poll() is not None:
                raise RuntimeError(f"fieldgate up exited:\n{self.supervisor.text()[-3000:]}")
            if time.monotonic() > deadline:
                log = self.supervisor.text()[-3000:] if self.supervisor else ""
                raise TimeoutError(f"{what} not reached after {timeout}s:\n{log}")
            time.sleep(0.5)

    def status_json(self) -> dict[str, Any]:
        path = self.plant / ".fieldgate" / "run" / "status.json"
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def close(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop(signal.SIGINT, timeout=90)
        for process in reversed(self.processes):
            process.stop(signal.SIGTERM, timeout=15)
        for container in self.client.containers.list(
                all=True, filters={"label": f"com.docker.compose.project={self.project}"}):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        label = {"label": f"com.docker.compose.project={self.project}"}
        for volume in self.client.volumes.list(filters=label):
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)
        for network in self.client.networks.list(
                filters={"label": f"com.docker.compose.project={self.project}"}):
            with contextlib.suppress(docker.errors.APIError):
                network.remove()
        self.client.close()


def readings(topic_prefix: str, device: str, tag: str) -> Callable[[Any], bool]:
    topic = f"{topic_prefix}/{device}/{tag}"
    return lambda m: m.topic == topic


def after(moment: float, predicate: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda m: m.at > moment and predicate(m)
