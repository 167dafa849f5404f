"""Real peers for the OPC UA tests: the simulator as a process, the real hand-off with a recording sink."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collectors.core.handoff import HandoffServer
from collectors.core.model import DeviceState, DeviceTypes, Reading, WriteResult
from collectors.opcua.collector import OpcuaCollector
from collectors.opcua.config import OpcuaCollectorConfig
from tests.support.broker import wait_port


class Recorder:
    """The forwarder's sink, recording what the collector hands off."""

    def __init__(self) -> None:
        self.got: list[Reading] = []  # every reading handed off, in order
        self.states: list[DeviceState] = []
        self.results: list[WriteResult] = []
        self.types: dict[str, dict[str, str]] = {}  # device -> tag -> declared datatype (hand-off `types`)
        self._changed = asyncio.Event()

    async def readings(self, collector: str, readings: list[Reading]) -> None:
        self.got.extend(readings)
        self._changed.set()

    async def device_state(self, collector: str, state: DeviceState) -> None:
        self.states.append(state)
        self._changed.set()

    def write_result(self, collector: str, result: WriteResult) -> None:
        self.results.append(result)
        self._changed.set()

    async def datatypes(self, collector: str, types: DeviceTypes) -> None:
        self.types[types.device] = types.types
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[Reading], bool], within: float = 15.0, count: int = 1
    ) -> list[Reading]:
        deadline = time.monotonic() + within
        while True:
            found = [r for r in self.got if predicate(r)]
            if len(found) >= count:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = self.got[-8:]
                raise TimeoutError(f"{len(found)}/{count} matching readings after {within}s; last: {tail}")
            self._changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_state(self, predicate: Callable[[DeviceState], bool], within: float = 15.0) -> DeviceState:
        deadline = time.monotonic() + within
        while True:
            for state in self.states:
                if predicate(state):
                    return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching device state after {within}s; seen: {self.states}")
            self._changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.01, deadline - time.monotonic()))


@asynccontextmanager
async def running_collector(
    devices: list[dict[str, Any]], tmp: Path, metrics_port: int | None = None
) -> AsyncIterator[tuple[OpcuaCollector, Recorder]]:
    """The collector in-process on `devices` (device-file dicts), handing off to a real HandoffServer."""
    sink = Recorder()
    socket = tmp / "handoff.sock"
    config = OpcuaCollectorConfig.model_validate(
        {
            "name": "opcua",
            "handoff": {"socket": str(socket), "linger": "5ms"},
            "state_dir": str(tmp / "state"),
            "metrics_port": metrics_port,
            "devices": devices,
        }
    )
    async with HandoffServer(socket, sink), OpcuaCollector(config) as collector:
        task = asyncio.create_task(collector.run(), name="opcua-collector-under-test")
        try:
            yield collector, sink
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


class SimulatorProcess:
    """`python -m collectors.opcua.simulator` as a process that a test can kill and start again."""

    def __init__(self, device: dict[str, Any], workdir: Path, port: int) -> None:
        self.port = port
        self.file = workdir / f"{device['name']}.yaml"
        self.file.write_text(yaml.safe_dump(device))
        self.state_dir = workdir / "simulator-state"
        self.log = workdir / f"{device['name']}-simulator.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SimulatorProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "collectors.opcua.simulator",
                    str(self.file),
                    "--state-dir",
                    str(self.state_dir),
                    "--tick",
                    "0.1",
                ],
                stdout=log,
                stderr=log,
            )
        try:
            wait_port(self.port, timeout=30)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"simulator did not start: {self.log.read_text()[-2000:]}") from None
        return self

    def stop(self) -> None:
        """Kill it (no goodbye to clients), as a crash or power loss would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


def certificate(
    directory: Path,
    stem: str,
    common_name: str,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    server_uri: str | None = None,
) -> tuple[Path, Path]:
    """A self-signed certificate valid from `not_before` to `not_after` and its key, as
    `{stem}.der` and `{stem}-key.pem`: a user certificate, or with `server_uri` an OPC UA server's
    application certificate (URI in the SAN, server key usages), e.g. one that has expired."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if server_uri is not None:
        builder = (
            builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(server_uri), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=True, key_encipherment=True,
                    data_encipherment=True, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
    cert = builder.sign(key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / f"{stem}.der", directory / f"{stem}-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file
