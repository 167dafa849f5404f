"""`fieldgate simulate FILE` as a user runs it: it prints where each device listens, serves,
and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.framer import FramerType

from collectors.core.simulate import bind_problem
from tests.support.broker import free_port, wait_port

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parents[2]

DEVICE = """\
name: meter-{n}
protocol: modbus
connection:
  tcp: {{host: 127.0.0.1, port: {port}}}
unit: {n}
tags:
  - name: energy
    table: input
    address: 0
    type: uint32
    simulate: {{kind: constant, value: 123456}}
"""


def fieldgate(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def test_simulate_prints_endpoints_serves_and_stops_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    files = []
    for n in (1, 2):  # two devices on one endpoint: one server answering two unit ids
        files.append(tmp_path / f"meter-{n}.yaml")
        files[-1].write_text(DEVICE.format(n=n, port=port))
    proc = fieldgate("simulate", *map(str, files))
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert re.match(rf"meter-1: modbus tcp 127\.0\.0\.1:{port}, unit 1$", lines[0]), lines
        assert re.match(rf"meter-2: modbus tcp 127\.0\.0\.1:{port}, unit 2$", lines[1]), lines
        assert "Ctrl-C" in lines[2]
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
        assert client.connect()
        try:
            for unit in (1, 2):
                assert client.read_input_registers(0, count=2, device_id=unit).registers == [1, 57920]
        finally:
            client.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "simulator stopped" in out
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_simulate_names_the_file_of_an_invalid_device(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEVICE.format(n=1, port=1502).replace("type: uint32", "type: uint33"))
    proc = fieldgate("simulate", str(bad))
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert f"{bad}:10:11: device meter-1, tag energy: type: 'uint33' is not one of" in err


def test_simulate_creates_and_prints_the_serial_port_of_an_rtu_device(tmp_path: Path) -> None:
    port = tmp_path / "ttyUSB0"
    device = tmp_path / "drive-1.yaml"
    device.write_text(
        DEVICE.format(n=4, port=0).replace("tcp: {host: 127.0.0.1, port: 0}", f"rtu: {{port: {port}}}")
    )
    proc = fieldgate("simulate", str(device))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        expected = f"meter-4: modbus rtu {port} (pty pair, simulator on {port}.sim), unit 4"
        assert line.rstrip("\n") == expected, line
        client = ModbusSerialClient(str(port), framer=FramerType.RTU, timeout=2, retries=0)
        assert client.connect()
        try:
            assert client.read_input_registers(0, count=2, device_id=4).registers == [1, 57920]
        finally:
            client.close()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert not port.is_symlink()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


OVEN = """\
name: oven-2
protocol: opcua
endpoint: opc.tcp://127.0.0.1:{port}/oven
tags:
  - name: temperature
    node: "ns=2;s=Oven.Temperature"
    simulate: {{kind: constant, value: 180.5}}
"""


def test_simulate_serves_modbus_and_opcua_files_together(tmp_path: Path) -> None:
    modbus_port, opcua_port = free_port(), free_port()
    (tmp_path / "meter-1.yaml").write_text(DEVICE.format(n=1, port=modbus_port))
    (tmp_path / "oven-2.yaml").write_text(OVEN.format(port=opcua_port))
    proc = fieldgate("simulate", str(tmp_path / "meter-1.yaml"), str(tmp_path / "oven-2.yaml"))
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[0] == f"meter-1: modbus tcp 127.0.0.1:{modbus_port}, unit 1\n", lines
        assert lines[1] == f"oven-2: opcua opc.tcp://127.0.0.1:{opcua_port}/oven\n", lines
        wait_port(opcua_port)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_address_not_on_this_machine_is_refused_with_what_to_do(tmp_path: Path) -> None:
    oven = tmp_path / "oven-2.yaml"
    oven.write_text(OVEN.format(port=4840).replace("127.0.0.1", "10.20.0.7"))
    proc = fieldgate("simulate", str(oven))
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "oven-2: cannot listen on 10.20.0.7:4840: 10.20.0.7 is not an address of this machine: " \
           "use --host 127.0.0.1" in err
    assert "Traceback" not in err


def test_bind_problems() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert bind_problem("127.0.0.1", port) == "something else listens there"
    assert bind_problem("127.0.0.1", free_port()) is None
    assert "does not resolve" in (bind_problem("no-such-host.invalid", 502) or "")
