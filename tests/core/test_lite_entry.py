"""A component started on a rendered slice builds it without pydantic (collectors.core.entry);
a rendered slice the lite models cannot build (edited by hand) is still reported as
`file:line:column: message` with exit code 2 at start, and refused on a reload (SIGHUP) while
the running config is kept."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collectors.core.config import dump_slice
from collectors.core.validation import ConfigErrors, load_validated
from collectors.forwarder.config import ForwarderConfig
from collectors.modbus.config import ModbusCollectorConfig
from gateway.services import SLICE_HEADER
from tests.support.broker import free_port
from tests.support.entry import run_entry_point, start_entry_point

pytestmark = pytest.mark.sim


def modbus_slice(tmp_path: Path, **tag: Any) -> dict[str, Any]:
    return {"name": "modbus", "handoff": {"socket": str(tmp_path / "handoff.sock")}, "metrics_port": None,
            "state_dir": str(tmp_path / "state"), "devices": [{
                "name": "press-1", "protocol": "modbus", "poll": "100ms", "timeout": "100ms",
                "connection": {"tcp": {"host": "127.0.0.1", "port": free_port()}},
                "tags": [{"name": "speed", "table": "holding", "address": 0, "type": "uint16", **tag}]}]}


def forwarder_slice(tmp_path: Path, **mqtt: Any) -> dict[str, Any]:
    return {"gateway": {"id": "line9"}, "mqtt": {"host": "127.0.0.1", "port": free_port(), **mqtt},
            "buffer": {"dir": str(tmp_path / "buffer")}, "metrics": {"port": None},
            "handoff": {"socket": str(tmp_path / "handoff.sock")}}


def full_report(path: Path, model: type[Any]) -> str:
    """What the full models say about `path` (what the entry points printed before lite models)."""
    with pytest.raises(ConfigErrors) as caught:
        load_validated(path, model)
    return str(caught.value)


@pytest.mark.parametrize(("module", "model", "data", "problem"), [
    # an unknown key: the lite models refuse it
    ("collectors.modbus", ModbusCollectorConfig, lambda t: modbus_slice(t, pol="1s"), "unknown key"),
    # an after-validator's check: the lite models run them too
    ("collectors.modbus", ModbusCollectorConfig, lambda t: modbus_slice(t, bit=3, type="float32"), "bit applies"),
    ("collectors.forwarder", ForwarderConfig, lambda t: forwarder_slice(t, qso=1), "unknown key"),
    # a value of another type: the lite models check JSON types, not ranges
    ("collectors.modbus", ModbusCollectorConfig, lambda t: modbus_slice(t, address="zero"), "whole number"),
    ("collectors.forwarder", ForwarderConfig, lambda t: forwarder_slice(t, qos="high"), "qos"),
])
def test_a_rendered_slice_edited_by_hand_is_reported_at_its_line_and_column(
    tmp_path: Path, module: str, model: type[Any], data: Callable[[Path], dict[str, Any]], problem: str
) -> None:
    path = tmp_path / "slice.json"
    path.write_text(dump_slice(data(tmp_path), SLICE_HEADER))
    result = run_entry_point(module, path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == full_report(path, model)
    assert result.stderr.startswith(f"{path}:") and problem in result.stderr


def wait_for_line(log: Path, text: str, after: int = 0, within: float = 30.0) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace")[after:]
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {log} after {within}s:\n{log.read_text(errors='replace')[-3000:]}")


def test_a_reload_the_lite_models_cannot_build_is_refused_and_the_running_config_kept(tmp_path: Path) -> None:
    path = tmp_path / "modbus.json"
    log = tmp_path / "modbus.log"
    good = modbus_slice(tmp_path)
    path.write_text(dump_slice(good, SLICE_HEADER))
    collector = start_entry_point("collectors.modbus", path, log)
    try:
        wait_for_line(log, "modbus collector: 1 devices")
        maps = Path(f"/proc/{collector.pid}/maps").read_text()
        assert "pydantic_core" not in maps  # a rendered slice: built by the lite models

        mark = log.stat().st_size
        broken = json.loads(json.dumps(good))
        broken["devices"][0]["tags"][0]["pol"] = "1s"
        path.write_text(dump_slice(broken, SLICE_HEADER))
        os.kill(collector.pid, signal.SIGHUP)
        said = wait_for_line(log, "new config refused, keeping the running one", mark)
        said = wait_for_line(log, "unknown key", mark)  # the full models' words, at the key's place
        assert f"{path}:" in said and full_report(path, ModbusCollectorConfig).splitlines()[0] in said
        assert collector.poll() is None

        mark = log.stat().st_size
        good["devices"][0]["tags"].append({"name": "torque", "table": "holding", "address": 1, "type": "uint16"})
        path.write_text(dump_slice(good, SLICE_HEADER))
        os.kill(collector.pid, signal.SIGHUP)
        wait_for_line(log, "applying it in place", mark)
        assert collector.poll() is None

        # a file written by hand (no header: not what the gateway renders) is validated in full
        # first, in a child: a broken one is refused, a good one taken
        mark = log.stat().st_size
        device = good["devices"][0]
        path.write_text(f"name: modbus\nhandoff: {{socket: {good['handoff']['socket']}}}\nmetrics_port: null\n"
                        f"state_dir: {good['state_dir']}\ndevices:\n  - name: {device['name']}\n"
                        f"    protocol: modbus\n    connection: {{tcp: {{host: 127.0.0.1, port: 1}}}}\n"
                        "    tags: [{name: speed, table: holding, address: -3, type: uint16}]\n")
        os.kill(collector.pid, signal.SIGHUP)
        said = wait_for_line(log, "input should be greater than or equal to 0", mark)
        assert f"{path}:9:" in said and "keeping the running one" in said
        mark = log.stat().st_size
        path.write_text(path.read_text().replace("address: -3", "address: 3"))
        os.kill(collector.pid, signal.SIGHUP)
        wait_for_line(log, "applying it in place", mark)
        assert collector.poll() is None
        assert "pydantic_core" not in Path(f"/proc/{collector.pid}/maps").read_text()
    finally:
        collector.send_signal(signal.SIGTERM)
        collector.wait(30)
