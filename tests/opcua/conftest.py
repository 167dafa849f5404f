"""Simulators shared by a module: starting an asyncua server with security takes seconds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.opcua.support import SimulatorProcess
from tests.support.broker import free_port

USER, PASSWORD = "operator", "s3cret-Pa55"


def oven(port: int, **security: Any) -> dict[str, Any]:
    """The device file both the simulator and the collector read (the collector's may add tags)."""
    return {
        "name": "oven",
        "protocol": "opcua",
        "endpoint": f"opc.tcp://127.0.0.1:{port}",
        "security": security,
        "subscription": {"publishing_interval": "100ms", "sampling_interval": "50ms", "queue_size": 10},
        "tags": [
            {
                "name": "temperature",
                "node": "ns=2;s=Oven.Temperature",
                "unit": "degC",
                "simulate": {"kind": "ramp", "min": 0, "max": 100, "period": "5s"},
            },
            {
                "name": "setpoint",
                "node": "ns=2;s=Oven.Setpoint",
                "writable": True,
                "simulate": {"kind": "constant", "value": 180.0},
            },
            {"name": "running", "node": "ns=2;i=2001", "simulate": {"kind": "constant", "value": True}},
            {
                "name": "recipe",
                "node": "nsu=urn:plant:recipes;s=Active",
                "simulate": {"kind": "constant", "value": "R-17"},
            },
            {
                "name": "batch",
                "node": "ns=3;i=1042",
                "mode": "poll",
                "poll": "300ms",
                "simulate": {"kind": "counter", "min": 0, "max": 1000000, "step": 1},
            },
        ],
    }


@pytest.fixture(scope="module")
def plain_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimulatorProcess, dict[str, Any]]]:
    port = free_port()
    device = oven(port)
    sim = SimulatorProcess(device, tmp_path_factory.mktemp("plain-sim"), port).start()
    try:
        yield sim, device
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def secure_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimulatorProcess, dict[str, Any]]]:
    port = free_port()
    device = oven(port, policy="Basic256Sha256", mode="SignAndEncrypt", username=USER, password=PASSWORD)
    sim = SimulatorProcess(device, tmp_path_factory.mktemp("secure-sim"), port).start()
    try:
        yield sim, device
    finally:
        sim.stop()
