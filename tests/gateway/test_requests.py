"""`fieldgate plan`: the requests a plant engineer can check before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import cli
from gateway.requests import rtu_request_time

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_plan_of_the_example_plant(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", str(REPO / "examples" / "plant")]) == 0
    out = capsys.readouterr().out
    # press-1: the float32, the CDAB int32 and the status word share one read; recipe and setpoint another
    assert "press-1: modbus unit 1 on tcp:127.0.0.1:5020, 4 requests in 2 poll classes" in out
    assert "    holding 0..10 (11 regs, 6 gap) every 1s: temperature, strokes, door_open" in out
    assert "    holding 20..30 (11 regs, 2 gap) every 1s: recipe, setpoint" in out
    assert "    coil 3..3 (1 bit, 0 gap) every 1s: run" in out
    assert "    input 0..3 (4 regs, 0 gap) every 2s: voltage, current" in out
    # the OPC UA device: subscription and polled node
    assert "oven-2: opc.tcp://127.0.0.1:4840" in out
    assert "  subscription: publishing 500ms, 3 monitored items, client queue 10000" in out
    assert (
        "    temperature  ns=2;s=Oven.Temperature  sampling 100ms  queue 10"
        "  deadband 0.1 absolute (server DataChangeFilter)"
    ) in out
    assert "  poll every 5s: one Read of 1 node\n    batch  ns=2;i=1042\n" in out
    # per link: requests/s, and how busy the serial line is
    assert "  serial:/dev/ttyFG0: meter-7; 0.6 requests/s, 19200 8N2: line busy 1%" in out
    assert "  tcp:127.0.0.1:5020: press-1; 5 requests/s" in out


def test_a_serial_line_that_cannot_keep_up_is_called_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "devices").mkdir()
    (tmp_path / "gateway.yaml").write_text("gateway: {id: line3}\nmetrics: {port: null}\n")
    tags = "\n".join(
        f"  - {{name: t{i}, table: holding, address: {i * 200}, type: uint16}}" for i in range(20)
    )
    (tmp_path / "devices" / "slow.yaml").write_text(
        "name: slow\nprotocol: modbus\nconnection:\n  rtu: {port: /dev/ttyS9, baudrate: 1200}\n"
        f"poll: 100ms\ntags:\n{tags}\n"
    )
    assert cli.main(["plan", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "serial:/dev/ttyS9: slow; 200 requests/s, 1200 8N1: line busy" in out
    assert "the line cannot keep up: poll less often, raise the baud rate or split the line" in out


def test_plan_of_a_broken_config_lists_the_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", str(tmp_path)]) == 1
    assert "gateway.yaml: not found" in capsys.readouterr().out


def test_rtu_request_time() -> None:
    # 10 registers at 9600 baud: 8 + 5 + 20 bytes plus 7 characters of silence, 11 bits each
    assert rtu_request_time(10, False, 9600) == pytest.approx(40 * 11 / 9600)
    # 16 coils are 2 data bytes
    assert rtu_request_time(16, True, 19200, frame_delay=0.01) == pytest.approx(22 * 11 / 19200 + 0.01)
