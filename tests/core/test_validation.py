"""The shared config-error mapping as a component's entry point uses it (gateway tests cover the wording)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.core.validation import ConfigErrors, load_validated
from collectors.forwarder.config import ForwarderConfig

pytestmark = pytest.mark.unit


def test_a_rendered_slice_is_taken_as_written_and_a_users_file_substituted(tmp_path: Path) -> None:
    path = tmp_path / "forwarder.yaml"
    path.write_text("gateway: {id: line3}\nmqtt: {topic_prefix: 'plant/${LINE}', username: op}\n")
    assert load_validated(path, ForwarderConfig).mqtt.topic_prefix == "plant/${LINE}"
    assert load_validated(path, ForwarderConfig, env={"LINE": "l3"}).mqtt.topic_prefix == "plant/l3"
    with pytest.raises(ConfigErrors) as caught:
        load_validated(path, ForwarderConfig, env={})
    assert str(caught.value) == (
        f"{path}:2:29: environment variable LINE is not set (set it, or give a default: ${{LINE:-value}})"
    )


def test_every_problem_is_listed_in_file_order_and_no_password_is_shown(tmp_path: Path) -> None:
    path = tmp_path / "forwarder.yaml"
    path.write_text("mqtt:\n  password: [hunter2]\n  port: 0\ngateway: {}\n")
    with pytest.raises(ConfigErrors) as caught:
        load_validated(path, ForwarderConfig)
    lines = str(caught.value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{path}:2:13", f"{path}:3:9", f"{path}:4:10"]
    assert "hunter2" not in str(caught.value)
