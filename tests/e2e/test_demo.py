"""`fieldgate demo` as a user runs it: readings from every demo device, exit 0, nothing left behind."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest

from gateway.runtime.process import child_environment

PLANT = resources.files("gateway") / "demo_plant" / "devices"
DEMO_DEVICES = sorted(p.name.removesuffix(".yaml") for p in PLANT.iterdir() if p.name.endswith(".yaml"))


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway.cli", "demo", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=child_environment())


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in argv:
            found.append(f"{cmdline.parent.name}: {argv}")
    return found


def workdir_of(stdout: str) -> str:
    match = re.search(r"plant: (/\S+)/plant;", stdout)
    assert match, stdout
    return match.group(1)


@pytest.mark.sim
def test_demo_shows_readings_of_every_device_and_leaves_nothing_behind() -> None:
    assert DEMO_DEVICES == ["meter-7", "oven-2", "press-1"]
    result = demo("--duration", "20", "--no-view")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "broker: mosquitto on 127.0.0.1:" in out
    for device in DEMO_DEVICES:
        assert re.search(rf"^{device}/\w+ = \S+.* \[good\]$", out, re.MULTILINE), (device, out[-2000:])
    assert re.search(r"^press-1/temperature = [\d.]+ degC \[good\]$", out, re.MULTILINE)
    assert re.search(r"^oven-2/setpoint = 180.00 degC \[good\]$", out, re.MULTILINE)
    assert re.search(r"^meter-7/voltage = 2[23]\d\.\d\d V \[good\]$", out, re.MULTILINE)  # RTU, over a pty
    assert f"readings seen from 3 device(s): {', '.join(DEMO_DEVICES)}" in out
    workdir = workdir_of(out)
    assert not Path(workdir).exists()
    assert processes_mentioning(workdir) == []


@pytest.mark.sim
def test_demo_with_the_embedded_broker_and_the_live_view_stops_on_ctrl_c() -> None:
    command = [sys.executable, "-m", "gateway.cli", "demo", "--broker", "embedded"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=child_environment())
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "broker: embedded amqtt broker on 127.0.0.1:" in first
        workdir = workdir_of(first)
        deadline = time.monotonic() + 60
        while not all(any(f"collectors.{name}" in p for p in processes_mentioning(workdir))
                      for name in ("forwarder", "modbus", "opcua")):
            assert time.monotonic() < deadline, processes_mentioning(workdir)
            time.sleep(0.2)
        time.sleep(6)  # readings from every device (the meter polls every 2 s)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err[-3000:]
    # the live table's last frame: a row per tag of every device, with quality
    for device in DEMO_DEVICES:
        assert re.search(rf"│ {device}\s+│ \w+\s+│.*│ good\s+│", out), (device, out[-3000:])
    assert processes_mentioning(workdir) == []
    assert not Path(workdir).exists()


def demo_without(modules: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[str]:
    """`fieldgate demo` in an interpreter where `modules` cannot be imported (as after `pip install .`
    without the demo extra): a None in sys.modules is what an absent package looks like to imports."""
    hide = "".join(f"sys.modules[{m!r}] = None; " for m in modules)
    code = f"import sys; {hide}from gateway.cli import main; sys.exit(main(['demo', *sys.argv[1:]]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          env=child_environment())


@pytest.mark.sim
def test_demo_without_the_demo_extra_names_it_and_starts_nothing() -> None:
    result = demo_without(("rich", "amqtt"), "--broker", "embedded", "--duration", "5")
    assert result.returncode == 1
    assert "the live view needs rich: pip install 'fieldgate[demo]' (or run with --no-view)" in result.stderr
    assert "no broker: the embedded one needs amqtt: pip install 'fieldgate[demo]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "plant:" not in result.stdout  # nothing was started

    # Without rich, --no-view and a local mosquitto still make the whole demo.
    result = demo_without(("rich", "amqtt"), "--no-view", "--duration", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "broker: mosquitto on 127.0.0.1:" in result.stdout
    assert re.search(r"^press-1/temperature = [\d.]+ degC \[good\]$", result.stdout, re.MULTILINE)
