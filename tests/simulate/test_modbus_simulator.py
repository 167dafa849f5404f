"""The Modbus simulator against a plain pymodbus client (not our collector): what a device
file describes is what a client reads, values move, writes stick, RTU answers on a pty."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.framer import FramerType

from collectors.core.simulate import Simulate
from collectors.modbus.config import DataType, ModbusDevice
from collectors.modbus.simulator import ModbusSimulator, SimulatorError
from gateway.config import load_device_files

pytestmark = pytest.mark.sim

PRESS = """\
name: press-1
protocol: modbus
connection:
  tcp: {host: 10.20.0.5, port: 502}
unit: 1
word_order: little
tags:
  - name: temperature
    table: holding
    address: 0
    type: float32
    simulate: {kind: constant, value: 21.5}
  - name: flow
    table: holding
    address: 2
    type: int16
    simulate: {kind: ramp, min: -50, max: 50, period: 2s}
  - name: speed
    table: holding
    address: 3
    type: uint16
    simulate: {kind: sine, min: 1000, max: 2000, period: 3s}
  - name: alarm_bits
    table: holding
    address: 10
    type: uint16
    bit: 3
    simulate: {kind: constant, value: true}
  - name: alarm_other
    table: holding
    address: 10
    type: uint16
    bit: 5
    simulate: {kind: constant, value: true}
  - name: recipe
    table: holding
    address: 20
    type: string
    length: 4
    simulate: {kind: constant, value: "AB-12"}
  - name: run
    table: coil
    address: 3
    type: bool
    writable: true
    simulate: {kind: constant, value: true}
  - name: setpoint
    table: holding
    address: 30
    type: int16
    scale: 0.1
    writable: true
    simulate: {kind: ramp, min: 0, max: 100, period: 1s}
  - name: strokes
    table: input
    address: 5
    type: uint32
    word_order: big
    simulate: {kind: counter, min: 0, max: 1000000, step: 10}
"""


def cdab_float(words: Sequence[int]) -> float:
    """float32 with the low word first (word order little), decoded by hand, not by our codec."""
    return struct.unpack(">f", struct.pack(">HH", words[1], words[0]))[0]


@pytest.fixture
def press(tmp_path: Path) -> ModbusDevice:
    path = tmp_path / "press-1.yaml"
    path.write_text(PRESS)
    [entry] = load_device_files([path])
    assert isinstance(entry.device, ModbusDevice)
    return entry.device


async def test_a_plain_client_reads_what_the_device_file_describes(press: ModbusDevice) -> None:
    async with ModbusSimulator([press], host="127.0.0.1", free_ports=True, interval=0.05) as sim:
        host, port = sim.endpoints["press-1"].rsplit(":", 1)
        assert sim.client_device("press-1").connection.tcp.port == int(port)  # type: ignore[union-attr]
        client = AsyncModbusTcpClient(host, port=int(port), timeout=2)
        await client.connect()
        try:
            temperature = await client.read_holding_registers(0, count=2, device_id=1)
            assert cdab_float(temperature.registers) == 21.5

            alarm = await client.read_holding_registers(10, count=1, device_id=1)
            assert alarm.registers == [(1 << 3) | (1 << 5)]  # two bit tags share one register

            recipe = await client.read_holding_registers(20, count=4, device_id=1)
            assert b"".join(w.to_bytes(2, "big") for w in recipe.registers) == b"AB-12\0\0\0"

            coils = await client.read_coils(0, count=8, device_id=1)
            assert coils.bits[:8] == [False, False, False, True, False, False, False, False]

            # values move: a counter of 10/s on an input register, a 1 s ramp on a scaled int16
            first = await client.read_input_registers(5, count=2, device_id=1)
            ramp_a = (await client.read_holding_registers(30, count=1, device_id=1)).registers[0]
            await asyncio.sleep(1.1)  # the counter adds its step once a second
            later = await client.read_input_registers(5, count=2, device_id=1)
            ramp_b = (await client.read_holding_registers(30, count=1, device_id=1)).registers[0]
            count_a = (first.registers[0] << 16) | first.registers[1]
            count_b = (later.registers[0] << 16) | later.registers[1]
            assert count_b > count_a and count_b % 10 == 0
            assert ramp_a != ramp_b and 0 <= ramp_a <= 1000 and 0 <= ramp_b <= 1000  # raw = value / 0.1

            # neighbouring tags, written together, each hold their own value
            block = (await client.read_holding_registers(0, count=4, device_id=1)).registers
            assert cdab_float(block[:2]) == 21.5
            assert -50 <= struct.unpack(">h", block[2].to_bytes(2, "big"))[0] <= 50
            assert 1000 <= block[3] <= 2000

            # a gap between tags reads as zeros (collectors coalesce across gaps); past the end is illegal
            gap = await client.read_holding_registers(4, count=6, device_id=1)
            assert gap.registers == [0] * 6
            past = await client.read_holding_registers(31, count=1, device_id=1)
            assert past.isError()

            # a unit nobody answers gets an exception, never another device's registers
            other = await client.read_holding_registers(0, count=2, device_id=7)
            assert other.isError() and other.exception_code == 0x0B  # gateway target failed to respond
            written = await client.write_register(0, 1, device_id=7)
            assert written.isError() and written.exception_code == 0x0B
        finally:
            client.close()


async def test_a_write_is_applied_and_held_against_the_simulation(press: ModbusDevice) -> None:
    async with ModbusSimulator([press], host="127.0.0.1", free_ports=True, interval=0.05,
                               write_hold=30) as sim:
        host, port = sim.endpoints["press-1"].rsplit(":", 1)
        client = AsyncModbusTcpClient(host, port=int(port), timeout=2)
        await client.connect()
        try:
            assert not (await client.write_register(30, 425, device_id=1)).isError()  # 42.5 at scale 0.1
            assert not (await client.write_coil(3, False, device_id=1)).isError()
            await asyncio.sleep(0.5)  # ten simulation ticks: the 1 s ramp would have moved on
            assert (await client.read_holding_registers(30, count=1, device_id=1)).registers == [425]
            assert (await client.read_coils(3, count=1, device_id=1)).bits[0] is False
            assert await sim.read("press-1", "setpoint") == pytest.approx(42.5)
            assert await sim.read("press-1", "run") is False
            # a tag nobody wrote keeps moving
            temperature = await client.read_holding_registers(0, count=2, device_id=1)
            assert cdab_float(temperature.registers) == 21.5
        finally:
            client.close()


async def test_a_write_hold_runs_out_and_the_simulation_resumes(press: ModbusDevice) -> None:
    async with ModbusSimulator([press], host="127.0.0.1", free_ports=True, interval=0.05,
                               write_hold=0.3) as sim:
        await sim.set("press-1", "run", False)
        assert await sim.read("press-1", "run") is False
        await asyncio.sleep(0.6)
        assert await sim.read("press-1", "run") is True  # back to its constant


async def test_stop_and_start_take_a_device_offline_and_back(press: ModbusDevice) -> None:
    async with ModbusSimulator([press], host="127.0.0.1", free_ports=True) as sim:
        host, port = sim.endpoints["press-1"].rsplit(":", 1)
        await sim.stop("press-1")
        client = AsyncModbusTcpClient(host, port=int(port), timeout=1, retries=0)
        assert not await client.connect()
        client.close()
        await sim.start("press-1")
        assert sim.endpoints["press-1"] == f"{host}:{port}"
        client = AsyncModbusTcpClient(host, port=int(port), timeout=2)
        assert await client.connect()
        try:
            regs = (await client.read_holding_registers(0, count=2, device_id=1)).registers
            assert cdab_float(regs) == 21.5
        finally:
            client.close()


def rtu_device(name: str, unit: int, port: Path, value: int) -> ModbusDevice:
    return ModbusDevice.model_validate({
        "name": name, "protocol": "modbus", "unit": unit,
        "connection": {"rtu": {"port": str(port), "baudrate": 19200}},
        "tags": [{"name": "level", "table": "holding", "address": 4, "type": "uint16",
                  "simulate": {"kind": "constant", "value": value}}],
    })


@pytest.mark.parametrize("backend", ["socat", "python"])
async def test_rtu_on_a_created_pty_answers_two_unit_ids(tmp_path: Path, backend: str) -> None:
    port = tmp_path / "ttyUSB0"
    devices = [rtu_device("tank-1", 1, port, 111), rtu_device("tank-2", 2, port, 222)]
    async with ModbusSimulator(devices, pty_backend=backend) as sim:  # type: ignore[arg-type]
        assert sim.endpoints == {"tank-1": str(port), "tank-2": str(port)}
        assert port.is_symlink()
        assert "pty pair" in sim.describe("tank-1")
        client = AsyncModbusSerialClient(
            str(port), framer=FramerType.RTU, baudrate=19200, timeout=1, retries=0
        )
        assert await client.connect()
        try:
            one = await client.read_holding_registers(4, count=1, device_id=1)
            two = await client.read_holding_registers(4, count=1, device_id=2)
            assert (one.registers, two.registers) == ([111], [222])
            assert not (await client.write_register(4, 7, device_id=2)).isError()
            assert (await client.read_holding_registers(4, count=1, device_id=2)).registers == [7]
            assert (await client.read_holding_registers(4, count=1, device_id=1)).registers == [111]
        finally:
            client.close()
    assert not port.exists() and not port.is_symlink()  # the pty pair went with the simulator


async def test_a_unit_nobody_answers_on_a_bus_stays_silent(tmp_path: Path) -> None:
    port = tmp_path / "ttyS9"
    async with ModbusSimulator([rtu_device("tank-1", 1, port, 5)]):
        client = AsyncModbusSerialClient(str(port), framer=FramerType.RTU, timeout=0.3, retries=0)
        assert await client.connect()
        try:
            with pytest.raises(Exception, match="No response"):
                await client.read_holding_registers(4, count=1, device_id=3)
            assert (await client.read_holding_registers(4, count=1, device_id=1)).registers == [5]
        finally:
            client.close()


async def test_refuses_what_it_cannot_serve(press: ModbusDevice, tmp_path: Path) -> None:
    twin = press.model_copy(update={"name": "press-2"})
    with pytest.raises(SimulatorError, match="press-1 and press-2 both answer unit 1"):
        ModbusSimulator([press, twin], host="127.0.0.1")
    with pytest.raises(SimulatorError, match=r"10\.20\.0\.5 is not an address of this machine"):
        async with ModbusSimulator([press]):
            pass
    bad = ModbusDevice.model_validate({
        "name": "x", "protocol": "modbus", "connection": {"tcp": {"host": "127.0.0.1"}},
        "tags": [{"name": "t", "table": "holding", "address": 0, "type": "int16",
                  "simulate": {"kind": "constant", "value": "high"}}],
    })
    with pytest.raises(SimulatorError, match=r"x\.t: cannot simulate 'high' as int16"):
        ModbusSimulator([bad])
    huge = bad.model_copy(update={"tags": [bad.tags[0].model_copy(update={
        "type": DataType.FLOAT32, "simulate": Simulate(kind="sine", min=0, max=1e40)})]})
    too_big = r"x\.t: cannot simulate sine 0\.\.1e\+40 as float32: .*out of range"
    with pytest.raises(SimulatorError, match=too_big):
        ModbusSimulator([huge])


def test_a_spec_past_an_integer_range_clips_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    device = ModbusDevice.model_validate({
        "name": "x", "protocol": "modbus", "connection": {"tcp": {"host": "127.0.0.1"}},
        "tags": [{"name": "t", "table": "holding", "address": 0, "type": "int16", "scale": 0.1,
                  "simulate": {"kind": "ramp", "min": 0, "max": 5000}}],
    })
    ModbusSimulator([device])
    clipped = "x.t: simulate ramp 0..5000 is clipped to -3276.8..3276.7 (int16, scale 0.1, offset 0)"
    assert clipped in caplog.text


async def test_rtu_framing_over_tcp_for_serial_servers() -> None:
    device = ModbusDevice.model_validate({
        "name": "gw-1", "protocol": "modbus", "unit": 9,
        "connection": {"tcp": {"host": "127.0.0.1", "port": 502, "framer": "rtu"}},
        "tags": [{"name": "level", "table": "input", "address": 0, "type": "int32",
                  "simulate": {"kind": "constant", "value": -70000}}],
    })
    async with ModbusSimulator([device], free_ports=True) as sim:
        assert "(rtu framing)" in sim.describe("gw-1")
        host, port = sim.endpoints["gw-1"].rsplit(":", 1)
        client = AsyncModbusTcpClient(host, port=int(port), framer=FramerType.RTU, timeout=2)
        await client.connect()
        try:
            words = (await client.read_input_registers(0, count=2, device_id=9)).registers
            assert struct.unpack(">i", struct.pack(">HH", *words))[0] == -70000
        finally:
            client.close()
