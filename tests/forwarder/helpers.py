"""Shared pieces of the forwarder tests: configs, a collector feeding readings, waiting."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from collectors.core.config import HandoffConfig
from collectors.core.handoff import HandoffClient
from collectors.core.model import Reading, WriteRequest, WriteResult
from collectors.forwarder.config import ForwarderConfig
from tests.support.broker import Mosquitto
from tests.support.mqtt import Message

ROOT = Path(__file__).resolve().parents[2]

CATALOG = [
    {
        "name": "press-1",
        "collector": "modbus",
        "tags": [
            {"name": "temperature", "unit": "degC", "type": "float32"},
            {"name": "pressure", "unit": "bar", "type": "float64"},  # a scaled register, as the catalog gives it
            {"name": "run", "type": "bool", "writable": True},
            {"name": "count", "type": "uint16"},
        ],
    },
    {
        "name": "oven-2",
        "collector": "opcua",
        "tags": [{"name": "setpoint", "unit": "degC", "writable": True}],
    },
]


def config_dict(tmp_path: Path, broker: Mosquitto, **mqtt: Any) -> dict[str, Any]:
    buffer = mqtt.pop("buffer", {})
    return {
        "gateway": {"id": "line3", "group": "plant1"},
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": "2s", **mqtt},
        "buffer": {"dir": str(tmp_path / "buffer"), **buffer},
        "metrics": {"port": None},
        "handoff": {"socket": str(tmp_path / "handoff.sock"), "linger": "5ms"},
        "devices": CATALOG,
    }


def make_config(tmp_path: Path, broker: Mosquitto, **mqtt: Any) -> ForwarderConfig:
    return ForwarderConfig.model_validate(config_dict(tmp_path, broker, **mqtt))


async def no_writes(request: WriteRequest) -> WriteResult:
    return WriteResult(request.id, request.device, request.tag, False, "this test collector takes no writes")


def collector(config: ForwarderConfig, name: str = "modbus", on_write: Any = no_writes) -> HandoffClient:
    settings = HandoffConfig(socket=config.handoff.socket, linger=0.005, batch_max=2000)
    return HandoffClient(settings, name, on_write)


def counter_readings(start: int, count: int, tags: list[str], device: str = "press-1") -> list[Reading]:
    """Reading i carries value i on tag i % len(tags): every tag counts up."""
    ts = 1_764_316_800_000
    return [Reading(device, tags[i % len(tags)], i, ts + i) for i in range(start, start + count)]


async def until(check: Callable[[], bool], within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


def values_by_tag(messages: list[Message], prefix: str = "fieldgate/line3/press-1/") -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        if message.topic.startswith(prefix) and "/set" not in message.topic:
            out[message.topic[len(prefix):]].append(json.loads(message.payload)["value"])
    return out


class ForwarderProcess:
    """`python -m collectors.forwarder --config FILE` as a real process, killable with SIGKILL."""

    def __init__(self, tmp_path: Path, config: dict[str, Any]) -> None:
        self.config_file = tmp_path / "forwarder.json"
        self.config_file.write_text(json.dumps(config))
        self.log = tmp_path / "forwarder.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ForwarderProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "collectors.forwarder", "--config", str(self.config_file)],
                stdout=log, stderr=log, env=env, cwd=ROOT,
            )
        return self

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> int:
        if self.process is None:
            return 0
        self.process.terminate()
        try:
            return self.process.wait(15)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.process = None


def wait_file(path: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def out_of_order(values: list[int]) -> list[tuple[int, int]]:
    """(newest so far, value) for each value that arrives after a newer one of its tag.

    Exact repeats of values already seen are at-least-once re-sends and are skipped; a re-send
    comes in order too (it is checked by `retained` tests: the last word is the newest)."""
    breaks: list[tuple[int, int]] = []
    seen: set[int] = set()
    newest = -1
    for value in values:
        if value in seen:
            continue
        seen.add(value)
        if value < newest:
            breaks.append((newest, value))
        newest = max(newest, value)
    return breaks


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A real file system of `size` (tmpfs) mounted at `path`; skips the test where mounting is
    not allowed (not root, no CAP_SYS_ADMIN). A file filling it makes real writes fail (ENOSPC)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system holding `directory` to the last byte; remove the file to free it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 4096, 1):
            with suppress(OSError):
                while os.write(fd, bytes(size)) == size:
                    pass
    finally:
        os.close(fd)
    return filler
