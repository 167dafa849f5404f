"""gateway.config: what a plant engineer sees when a config is wrong, and what each component gets."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from collectors.forwarder.config import ForwarderConfig
from collectors.modbus.config import ModbusCollectorConfig, ModbusDevice
from collectors.opcua.config import OpcuaCollectorConfig
from gateway import cli
from gateway.config import (
    ConfigErrors,
    collector_slices,
    forwarder_slice,
    load_config,
    load_device_files,
    slice_environment,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "gateway: {id: line3}\nmetrics: {port: null}\n"
PRESS = """\
name: press-1
protocol: modbus
connection:
  tcp: {host: 10.0.0.5, port: 502}
tags:
  - name: temperature
    table: holding
    address: 0
    type: float32
  - name: pressure
    table: input
    address: 0
    type: uint16
  - name: speed
    table: holding
    address: 2
    type: float32
"""
OVEN = """\
name: oven-2
protocol: opcua
endpoint: opc.tcp://10.0.0.7:4840
security:
  policy: Basic256Sha256
  mode: SignAndEncrypt
  username: operator
  password: ${OVEN_PASSWORD}
tags:
  - {name: temperature, node: "ns=2;s=Oven.Temperature"}
"""


def plant(tmp_path: Path, devices: dict[str, str], gateway: str = GATEWAY) -> Path:
    (tmp_path / "devices").mkdir(parents=True)
    (tmp_path / "gateway.yaml").write_text(gateway)
    for name, text in devices.items():
        (tmp_path / "devices" / f"{name}.yaml").write_text(text)
    return tmp_path


def errors(config_dir: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load_config(config_dir, env=env or {})
    return [str(p).replace(f"{config_dir}/", "") for p in caught.value.problems]


# ------------------------------------------------------------------ positions


def test_nested_error_in_a_tag_list_names_line_column_device_tag_and_key(tmp_path: Path) -> None:
    text = PRESS.replace("    type: float32\n", "    type: float23\n", 2).replace(
        "type: float23", "type: float32", 1
    )
    config_dir = plant(tmp_path, {"press-1": text})
    # the third tag's type (line 17, after "    type: ") is the misspelt one
    assert errors(config_dir) == [
        "devices/press-1.yaml:17:11: device press-1, tag speed: type: 'float23' is not one of bool, int16, "
        "uint16, int32, uint32, int64, uint64, float32, float64, string (did you mean 'float32'?)"
    ]


def test_flow_mapping_value_position(tmp_path: Path) -> None:
    text = PRESS.replace("port: 502}", "port: 70000}")
    [line] = errors(plant(tmp_path, {"press-1": text}))
    assert line.startswith("devices/press-1.yaml:4:31: device press-1: connection.tcp.port: ")
    assert "65535" in line and "70000" in line


def test_model_rule_points_at_the_key_it_names(tmp_path: Path) -> None:
    text = PRESS.replace(
        "    table: input\n    address: 0\n    type: uint16\n",
        "    table: input\n    address: 0\n    type: uint16\n    writable: true\n",
    )
    [line] = errors(plant(tmp_path, {"press-1": text}))
    assert line == (
        "devices/press-1.yaml:11:12: device press-1, tag pressure: table: the input table is "
        "read-only in Modbus: writable must be false"
    )


def test_every_error_of_every_file_is_listed(tmp_path: Path) -> None:
    bad_press = PRESS.replace("table: input", "table: inputs").replace("address: 2", "address: -2")
    bad_other = PRESS.replace("press-1", "press-9").replace("port: 502", "port: x")
    lines = errors(plant(tmp_path, {"press-1": bad_press, "press-9": bad_other}))
    assert [line.split(": ")[0] for line in lines] == [
        "devices/press-1.yaml:11:12",
        "devices/press-1.yaml:16:14",
        "devices/press-9.yaml:4:31",
    ]


# ------------------------------------------------------------------ ${VAR}


def test_variables_are_replaced_with_defaults_and_literal_dollar(tmp_path: Path) -> None:
    text = PRESS.replace("host: 10.0.0.5", 'host: "${PRESS_HOST}"').replace(
        "tags:", "poll: ${PRESS_POLL:-250ms}\ndescription: costs $${EUR} ${CURRENCY}\ntags:"
    )
    config = load_config(
        plant(tmp_path, {"press-1": text}), env={"PRESS_HOST": "10.9.9.9", "CURRENCY": "EUR"}
    )
    device = config.devices[0].device
    assert isinstance(device, ModbusDevice) and device.connection.tcp is not None
    assert device.connection.tcp.host == "10.9.9.9"
    assert device.poll == 0.25
    assert device.description == "costs ${EUR} EUR"


def test_an_unset_variable_is_an_error_at_its_column(tmp_path: Path) -> None:
    text = PRESS.replace("host: 10.0.0.5", 'host: "plc-${LINE}.plant"')
    assert errors(plant(tmp_path, {"press-1": text})) == [
        "devices/press-1.yaml:4:20: environment variable LINE is not set "
        "(set it, or give a default: ${LINE:-value})"
    ]


def test_an_unquoted_variable_in_a_flow_mapping_gets_a_hint(tmp_path: Path) -> None:
    text = PRESS.replace("host: 10.0.0.5", "host: ${PLC_HOST}")
    [line] = errors(plant(tmp_path, {"press-1": text}), env={"PLC_HOST": "10.0.0.1"})
    assert line.startswith("devices/press-1.yaml:4:16: not valid YAML: ")
    assert line.endswith('inside {...} put a value holding ${VAR} in quotes, e.g. host: "${PLC_HOST}"')


def test_the_process_environment_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FG_TEST_HOST", "10.1.2.3")
    config_dir = plant(tmp_path, {"press-1": PRESS.replace("10.0.0.5", '"${FG_TEST_HOST}"')})
    device = load_config(config_dir).devices[0].device
    assert device.connection.tcp.host == "10.1.2.3"  # type: ignore[union-attr]


# ------------------------------------------------------------------ keys and choices


def test_unknown_key_gets_the_nearest_valid_one(tmp_path: Path) -> None:
    text = PRESS.replace("    address: 2\n", "    adress: 2\n")
    assert errors(plant(tmp_path, {"press-1": text})) == [
        "devices/press-1.yaml:16:5: device press-1, tag speed: "
        "unknown key 'adress' (did you mean 'address'?); "
        "allowed here: address, bit, byte_order, deadband, description, length, max_silence, name, offset, "
        "poll, scale, simulate, table, type, unit, word_order, writable, write_max, write_min"
    ]


def test_unknown_top_level_key_in_gateway_yaml(tmp_path: Path) -> None:
    [line] = errors(plant(tmp_path, {"press-1": PRESS}, GATEWAY + "mqttt: {host: x}\n"))
    assert line.startswith(
        "gateway.yaml:3:1: unknown key 'mqttt' (did you mean 'mqtt'?); allowed here: buffer,"
    )


def test_choices_are_listed(tmp_path: Path) -> None:
    gateway = GATEWAY + "mqtt: {format: sparkplugb}\nruntime: kubernetes\n"
    assert errors(plant(tmp_path, {"press-1": PRESS}, gateway)) == [
        "gateway.yaml:3:16: mqtt.format: 'sparkplugb' is not one of json, sparkplug "
        "(did you mean 'sparkplug'?)",
        "gateway.yaml:4:10: runtime: 'kubernetes' is not one of docker, process "
        "(docker: one container per component | process: child processes of `fieldgate up`)",
    ]


def test_duplicate_yaml_keys_are_errors(tmp_path: Path) -> None:
    text = PRESS.replace(
        "    address: 0\n    type: float32\n", "    address: 0\n    type: float32\n    address: 4\n", 1
    )
    assert errors(plant(tmp_path, {"press-1": text})) == [
        "devices/press-1.yaml:10:5: key 'address' appears twice in this mapping (first at line 8); keep one"
    ]


# ------------------------------------------------------------------ cross-file


def test_duplicate_device_names_name_both_files(tmp_path: Path) -> None:
    config_dir = plant(tmp_path, {"press-1": PRESS, "press-2": PRESS.replace("10.0.0.5", "10.0.0.6")})
    [line] = errors(config_dir)
    assert line.startswith("devices/press-2.yaml:1:7: device press-1: name is already used by ")
    assert "devices/press-1.yaml:1;" in line


def test_serial_port_settings_must_agree(tmp_path: Path) -> None:
    meter = """\
name: meter-{n}
protocol: modbus
connection:
  rtu: {{port: /dev/ttyUSB0, baudrate: {baud}, parity: E}}
unit: {n}
tags:
  - {{name: voltage, table: input, address: 0, type: float32}}
"""
    same = plant(
        tmp_path / "same",
        {"meter-1": meter.format(n=1, baud=19200), "meter-2": meter.format(n=2, baud=19200)},
    )
    assert len(load_config(same, env={}).devices) == 2
    other = plant(
        tmp_path / "other",
        {"meter-1": meter.format(n=1, baud=19200), "meter-2": meter.format(n=2, baud=9600)},
    )
    [line] = errors(other)
    assert line.startswith(
        "devices/meter-2.yaml:4:8: device meter-2: serial port /dev/ttyUSB0 is also used by meter-1"
    )
    assert "baudrate 9600 (there: 19200)" in line


def test_overlapping_writable_registers(tmp_path: Path) -> None:
    text = PRESS.replace("    type: float32\n", "    type: float32\n    writable: true\n").replace(
        "address: 2", "address: 1"
    )
    [line] = errors(plant(tmp_path, {"press-1": text}))
    assert line.startswith(
        "devices/press-1.yaml:17:14: device press-1, tag speed: writable holding 1..2 overlaps "
        "writable tag temperature"
    )


# ------------------------------------------------------------------ secrets


SECRET = "hunter2-Zq9!"


def test_a_password_never_appears_in_an_error(tmp_path: Path) -> None:
    # security is wrong (no mode), the password is a number (wrong type), and a YAML error on its line
    broken = OVEN.replace("  mode: SignAndEncrypt\n", "  mode: None\n")
    wrong_type = OVEN.replace("${OVEN_PASSWORD}", "[" + SECRET + "]")
    syntax = OVEN.replace("${OVEN_PASSWORD}", SECRET + ": {")
    for i, text in enumerate((broken, wrong_type, syntax)):
        config_dir = plant(tmp_path / str(i), {"oven-2": text})
        with pytest.raises(ConfigErrors) as caught:
            load_config(config_dir, env={"OVEN_PASSWORD": SECRET})
        assert caught.value.problems, text
        assert SECRET not in str(caught.value)
        assert "hunter2" not in str(caught.value)


def test_slices_carry_no_password_and_the_component_gets_it_from_its_environment(tmp_path: Path) -> None:
    gateway = GATEWAY + "mqtt: {username: gw, password: '${MQTT_PASSWORD}'}\n"
    config = load_config(
        plant(tmp_path, {"oven-2": OVEN}, gateway),
        env={"OVEN_PASSWORD": SECRET, "MQTT_PASSWORD": SECRET + "m"},
    )
    assert SECRET not in repr(config)
    forwarder = forwarder_slice(config, tmp_path / "h.sock")
    opcua = collector_slices(config, tmp_path / "h.sock", tmp_path / "state", 9108)["opcua"]
    rendered = {
        name: yaml.safe_dump(model.model_dump(mode="json"))
        for name, model in (("forwarder", forwarder), ("opcua", opcua))
    }
    for text in rendered.values():
        assert "hunter2" not in text
    env = slice_environment(config)
    assert env == {"MQTT_PASSWORD": SECRET + "m", "OVEN_PASSWORD": SECRET}
    # what the forwarder and the collector do with their rendered file and that environment
    loaded_forwarder = ForwarderConfig.model_validate(
        yaml.safe_load(rendered["forwarder"]), context={"env": env}
    )
    assert loaded_forwarder.mqtt.password is not None
    assert loaded_forwarder.mqtt.password.get_secret_value() == SECRET + "m"
    loaded_opcua = OpcuaCollectorConfig.model_validate(
        yaml.safe_load(rendered["opcua"]), context={"env": env}
    )
    password = loaded_opcua.devices[0].security.password
    assert password is not None and password.get_secret_value() == SECRET


def test_a_rendered_slice_file_reads_its_password_from_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collectors.forwarder.config import load_forwarder_config

    gateway = GATEWAY + "mqtt: {username: gw, password: '${FG_TEST_MQTT_PASSWORD}'}\n"
    config = load_config(plant(tmp_path, {"press-1": PRESS}, gateway), env={"FG_TEST_MQTT_PASSWORD": SECRET})
    path = tmp_path / "forwarder.yaml"
    path.write_text(yaml.safe_dump(forwarder_slice(config, tmp_path / "h.sock").model_dump(mode="json")))
    assert SECRET not in path.read_text()
    assert "password_env: FG_TEST_MQTT_PASSWORD" in path.read_text()
    monkeypatch.setenv("FG_TEST_MQTT_PASSWORD", SECRET)
    password = load_forwarder_config(path).mqtt.password
    assert password is not None and password.get_secret_value() == SECRET
    monkeypatch.delenv("FG_TEST_MQTT_PASSWORD")
    with pytest.raises(ValueError, match="environment variable FG_TEST_MQTT_PASSWORD is not set"):
        load_forwarder_config(path)


def test_a_literal_password_gets_a_variable_of_its_own(tmp_path: Path) -> None:
    config = load_config(plant(tmp_path, {"oven-2": OVEN.replace("${OVEN_PASSWORD}", SECRET)}), env={})
    opcua = collector_slices(config, tmp_path / "h.sock", tmp_path / "state", None)["opcua"]
    assert isinstance(opcua, OpcuaCollectorConfig)
    assert opcua.devices[0].security.password_env == "FIELDGATE_PASSWORD_DEVICE_OVEN_2"
    assert slice_environment(config) == {"FIELDGATE_PASSWORD_DEVICE_OVEN_2": SECRET}


def test_password_file_must_exist_relative_to_its_file(tmp_path: Path) -> None:
    text = OVEN.replace("password: ${OVEN_PASSWORD}", "password_file: oven.secret")
    config_dir = plant(tmp_path, {"oven-2": text})
    [line] = errors(config_dir)
    assert line == (
        "devices/oven-2.yaml:8:18: device oven-2: security.password_file: file "
        "devices/oven.secret does not exist"
    )
    (config_dir / "devices" / "oven.secret").write_text("s3cret\n")
    device = load_config(config_dir, env={}).devices[0].device
    assert device.security.password_file == config_dir / "devices" / "oven.secret"  # type: ignore[union-attr]


# ------------------------------------------------------------------ slices


def test_slices_per_protocol_in_use(tmp_path: Path) -> None:
    config = load_config(plant(tmp_path, {"press-1": PRESS, "oven-2": OVEN}), env={"OVEN_PASSWORD": "x"})
    slices = collector_slices(config, Path("/run/fg/h.sock"), Path("/var/lib/fg"), 9200)
    assert list(slices) == ["modbus", "opcua"]
    modbus = slices["modbus"]
    assert isinstance(modbus, ModbusCollectorConfig)
    assert (modbus.name, modbus.metrics_port, modbus.state_dir) == ("modbus", 9201, Path("/var/lib/fg"))
    assert modbus.handoff.socket == Path("/run/fg/h.sock")
    assert [d.name for d in modbus.devices] == ["press-1"]
    assert slices["opcua"].metrics_port == 9202  # type: ignore[attr-defined]
    only_modbus = load_config(plant(tmp_path / "m", {"press-1": PRESS}), env={})
    assert list(collector_slices(only_modbus, Path("/h"), Path("/s"), None)) == ["modbus"]


def test_forwarder_slice_catalog_and_buffer(tmp_path: Path) -> None:
    config = load_config(plant(tmp_path, {"press-1": PRESS, "oven-2": OVEN}), env={"OVEN_PASSWORD": "x"})
    forwarder = forwarder_slice(config, Path("/run/fg/h.sock"), Path("/tmp/buffer"))
    assert forwarder.gateway.id == "line3"
    assert forwarder.buffer.dir == Path("/tmp/buffer")
    assert [(d.name, d.collector) for d in forwarder.devices] == [("oven-2", "opcua"), ("press-1", "modbus")]
    assert [(t.name, t.type) for t in forwarder.devices[1].tags] == [
        ("temperature", "float32"),
        ("pressure", "uint16"),
        ("speed", "float32"),
    ]
    assert forwarder_slice(config, Path("/h")).buffer.dir == config.buffer.dir


def test_load_device_files_for_the_simulator(tmp_path: Path) -> None:
    path = tmp_path / "press-1.yaml"
    path.write_text(PRESS)
    [entry] = load_device_files([path], env={})
    assert entry.device.name == "press-1" and entry.source == path
    path.write_text(PRESS.replace("uint16", "unit16"))
    with pytest.raises(ConfigErrors, match=r"press-1.yaml:13:11: .*did you mean 'uint16'"):
        load_device_files([path], env={})


# ------------------------------------------------------------------ the CLI


def test_validate_exit_codes_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = plant(tmp_path / "good", {"press-1": PRESS})
    assert cli.main(["validate", str(good)]) == 0
    out = capsys.readouterr().out
    assert out == f"{good}: valid: 1 device (press-1), 3 tags, protocols modbus\n"
    bad = plant(tmp_path / "bad", {"press-1": PRESS.replace("holding", "holdin")})
    assert cli.main(["validate", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("did you mean 'holding'?") == 2
    assert captured.err == f"{bad}: 2 errors; nothing was changed\n"


def test_validate_the_example_plant_with_the_real_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "validate", str(REPO / "examples" / "plant")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 devices (meter-7, oven-2, press-1)" in done.stdout
    assert "protocols modbus, opcua" in done.stdout
    broken = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "validate", str(REPO / "no-such-dir")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert broken.returncode == 1
    assert "gateway.yaml: not found" in broken.stdout


# ------------------------------------------------------------------ schema


def test_schema_validates_the_examples_and_refuses_a_bad_file(capsys: pytest.CaptureFixture[str]) -> None:
    import jsonschema

    assert cli.main(["schema"]) == 0
    document = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"gateway", "device"} <= set(document["$defs"])
    validator = jsonschema.Draft202012Validator(document)
    files = [REPO / "examples" / "plant" / "gateway.yaml", *sorted((REPO / "devices").glob("*.yaml"))]
    assert len(files) == 4
    for path in files:
        errors_found = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors_found == [], path
    bad = yaml.safe_load((REPO / "devices" / "press-1.yaml").read_text())
    bad["tags"][0]["table"] = "holdng"
    assert not validator.is_valid(bad)
    del bad["protocol"]
    assert not validator.is_valid(bad)


def test_the_committed_schema_files_are_current(tmp_path: Path) -> None:
    assert cli.main(["schema", "--write", str(tmp_path)]) == 0
    for name in ("fieldgate.schema.json", "gateway.schema.json", "device.schema.json"):
        assert (tmp_path / name).read_text() == (REPO / "docs" / "schema" / name).read_text(), (
            f"docs/schema/{name} is stale: run `fieldgate schema --write docs/schema`"
        )


def test_example_files_carry_the_editor_schema_comment() -> None:
    for path in sorted((REPO / "devices").glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        assert first == "# yaml-language-server: $schema=../docs/schema/device.schema.json"
        assert (path.parent / "../docs/schema/device.schema.json").exists()
    gateway = REPO / "examples" / "plant" / "gateway.yaml"
    first = gateway.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../../docs/schema/gateway.schema.json"
    assert (gateway.parent / "../../docs/schema/gateway.schema.json").exists()


def test_the_config_reference_is_generated_from_the_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema", "--markdown"]) == 0
    assert capsys.readouterr().out == (REPO / "docs" / "config.md").read_text(), (
        "docs/config.md is stale: run `fieldgate schema --markdown > docs/config.md`"
    )


# ------------------------------------------------------------------ robustness

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_JUNK = st.sampled_from(
    ["", "-", "- x", "{", "}", "[1, 2]", "{a: 1}", "${X}", "${", "null", "~", "true", "1e400", "'", "\"",
     "  - name: x", "tags: 5", ":", "&a x", "*a", "<<: {}", "? x", "!!binary x", "0x1F", "é", "\t"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.sampled_from(["press-1", "oven-2", "gateway"]),
    line=st.integers(0, 40),
    junk=_JUNK,
    replace_value=st.booleans(),
)
def test_any_corrupted_file_gives_positioned_errors_never_a_crash(
    tmp_path: Path, which: str, line: int, junk: str, replace_value: bool
) -> None:
    files = {"press-1": PRESS, "oven-2": OVEN, "gateway": GATEWAY + "mqtt:\n  host: broker\n  qos: 1\n"}
    lines = files[which].splitlines()
    index = line % len(lines)
    if replace_value and ":" in lines[index]:
        key = lines[index].split(":", 1)[0]
        lines[index] = f"{key}: {junk}"
    else:
        lines.insert(index, junk)
    files[which] = "\n".join(lines) + "\n"
    config_dir = Path(tempfile.mkdtemp(dir=tmp_path))
    plant(config_dir, {"press-1": files["press-1"], "oven-2": files["oven-2"]}, files["gateway"])
    try:
        load_config(config_dir, env={"OVEN_PASSWORD": SECRET})
    except ConfigErrors as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.position is None or 1 <= problem.position.line <= len(lines) + 1
            assert problem.message and "Traceback" not in problem.message
            assert SECRET not in problem.message


def test_the_device_schema_knows_model_includes() -> None:
    """A device file that includes a model (`model: PATH`, gateway/include.py) writes only its own
    keys: an editor using device.schema.json accepts it and still flags a misspelled key."""
    import jsonschema

    from gateway.schema import device_schema

    validator = jsonschema.Draft202012Validator(device_schema())
    files = sorted((REPO / "examples" / "fleet" / "gateways").glob("*/devices/*.yaml"))
    including = [p for p in files if "model" in yaml.safe_load(p.read_text())]
    assert len(including) == 3
    for path in files:
        assert [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))] == [], path
    device = yaml.safe_load(including[0].read_text())
    assert not validator.is_valid({**device, "conection": device["connection"]})  # a misspelled key
    assert not validator.is_valid({**device, "model": 3})  # a path, not a number
    assert not validator.is_valid({**device, "protocol": "modbus", "endpoint": "opc.tcp://h:4840"})
    assert not validator.is_valid({**device, "poll": "often"})  # the keys keep their own schema
    without_model = {k: v for k, v in device.items() if k != "model"}
    assert not validator.is_valid(without_model)  # without a model the device needs its protocol and tags
