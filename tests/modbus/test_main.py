"""`python -m collectors.modbus --config FILE` as a process: readings, /metrics, /healthz, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest
import yaml

from collectors.core.config import HandoffConfig
from collectors.core.handoff import HandoffServer
from tests.modbus.conftest import Server, Sink, until
from tests.support.broker import free_port
from tests.support.entry import run_entry_point
from tests.support.http import http_get

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parents[2]


async def test_the_collector_process_runs_reports_and_stops_on_sigterm(
    server: Server, forwarder: tuple[Sink, HandoffServer, HandoffConfig], tmp_path: Path
) -> None:
    sink, _handoff, settings = forwarder
    await server.set(1, "holding", 0, [0x41AC, 0])
    metrics_port = free_port()
    config = {
        "name": "modbus", "metrics_port": metrics_port, "state_dir": str(tmp_path),
        "handoff": {"socket": str(settings.socket), "linger": "5ms"},
        "devices": [{
            "name": "press-1", "protocol": "modbus", "poll": "100ms",
            "connection": {"tcp": {"host": "127.0.0.1", "port": server.port}},
            "tags": [{"name": "temperature", "table": "holding", "address": 0, "type": "float32"}],
        }],
    }
    path = tmp_path / "modbus.json"  # JSON is YAML too: rendered configs may be either
    path.write_text(json.dumps(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collectors.modbus", "--config", str(path), cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await until(lambda: sink.of("press-1", "temperature"), timeout=15, what="a reading from the process")
        assert sink.of("press-1", "temperature")[0].value == 21.5
        status, body = await http_get(metrics_port, "/healthz")
        assert (status, body) == (200, "ok\n")
        status, body = await http_get(metrics_port, "/metrics")
        assert status == 200
        assert 'fieldgate_modbus_device_online{device="press-1"} 1.0' in body
        assert 'fieldgate_handoff_connected 1.0' in body
        assert 'fieldgate_modbus_polls_total{device="press-1",result="ok"}' in body
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
        assert proc.stderr is not None
        stderr = (await proc.stderr.read()).decode()
    assert code == 0, stderr
    assert "Traceback" not in stderr


async def test_a_bad_config_exits_2_naming_the_file_and_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "modbus.yaml"
    path.write_text(yaml.safe_dump({
        "name": "modbus", "devices": [{
            "name": "press-1", "protocol": "modbus", "connection": {"tcp": {"host": "127.0.0.1"}},
            "tags": [{"name": "t", "table": "coil", "address": 0, "type": "float32"}],
        }],
    }))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collectors.modbus", "--config", str(path), cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert str(path) in err.decode()
    assert "its type must be bool" in err.decode()


def test_a_bad_config_is_refused_with_file_line_and_column_for_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "modbus.yaml"
    bad.write_text(
        "name: modbus\n"
        "devices:\n"
        "  - name: press-1\n"
        "    protocol: modbus\n"
        "    connection: {tcp: {host: 127.0.0.1, prot: 502}}\n"
        "    tags:\n"
        "      - {name: t, table: coil, address: 0, type: float32}\n"
        "      - name: u\n"
        "        table: holding\n"
        "        address: -3\n"
        "        type: int16\n"
    )
    done = run_entry_point("collectors.modbus", bad)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"{bad}:5:41: devices[0].connection.tcp: unknown key 'prot' (did you mean 'port'?); "
        "allowed here: framer, host, port",
        f"{bad}:7:50: devices[0].tags[0].type: a coil tag holds one bit: its type must be bool, not float32",
        f"{bad}:10:18: devices[0].tags[1].address: input should be greater than or equal to 0 (got -3)",
    ]


def test_a_json_slice_and_broken_yaml_are_positioned_too(tmp_path: Path) -> None:
    rendered = tmp_path / "modbus.json"  # the process runtime renders JSON
    rendered.write_text('{\n  "name": "modbus",\n  "metrics_port": "ninety",\n  "devices": []\n}\n')
    done = run_entry_point("collectors.modbus", rendered)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"{rendered}:3:19: metrics_port: expected a whole number (got 'ninety')"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: modbus\ndevices:\n  - name: a\n   protocol: modbus\n")
    done = run_entry_point("collectors.modbus", broken)
    assert done.returncode == 2 and done.stderr.startswith(f"{broken}:4:4: not valid YAML: ")
    done = run_entry_point("collectors.modbus", tmp_path / "missing.yaml")
    assert done.returncode == 2
    assert done.stderr.strip() == f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"
