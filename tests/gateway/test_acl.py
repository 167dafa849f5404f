"""`fieldgate render --acl`: the Mosquitto ACL text for a gateway's topics (the broker test is
tests/security/test_exposure_acl.py)."""

from __future__ import annotations

import pytest

from collectors.forwarder.config import ForwarderConfig
from gateway.acl import AclError, acl_text

pytestmark = pytest.mark.unit


def config(**mqtt: object) -> ForwarderConfig:
    return ForwarderConfig.model_validate({"gateway": {"id": "line3", "group": "plant1"}, "mqtt": mqtt})


def rules(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    user = ""
    for line in text.splitlines():
        if line.startswith("user "):
            user = line.split()[1]
            out[user] = []
        elif line.startswith("topic "):
            out[user].append(line[len("topic "):])
    return out


def test_sparkplug_with_a_primary_host_lets_only_the_writer_speak_for_the_host() -> None:
    text = acl_text(config(username="gw", format="sparkplug", primary_host="scada-a"), ["scada"], ["hist"])
    assert rules(text) == {
        "gw": ["write spBv1.0/plant1/NBIRTH/line3", "write spBv1.0/plant1/NDEATH/line3",
               "write spBv1.0/plant1/DBIRTH/line3/+", "write spBv1.0/plant1/DDATA/line3/+",
               "write spBv1.0/plant1/DDEATH/line3/+", "read spBv1.0/plant1/NCMD/line3",
               "read spBv1.0/plant1/DCMD/line3/+", "read spBv1.0/STATE/scada-a"],
        "scada": ["write spBv1.0/plant1/NCMD/line3", "write spBv1.0/plant1/DCMD/line3/+",
                  "read spBv1.0/plant1/+/line3", "read spBv1.0/plant1/+/line3/+",
                  "readwrite spBv1.0/STATE/scada-a"],
        "hist": ["read spBv1.0/plant1/+/line3", "read spBv1.0/plant1/+/line3/+"],
    }


def test_json_uses_the_topic_prefix() -> None:
    text = acl_text(config(username="gw", topic_prefix="site/a/line3"), ["w"], [])
    assert rules(text)["w"] == ["write site/a/line3/+/+/set", "read site/a/line3/#"]


@pytest.mark.parametrize(("mqtt", "writers", "readers", "error"), [
    ({}, ["w"], ["r"], "mqtt.username is not set: the ACL gives the gateway's own account its topics"),
    ({"username": "gw"}, ["gw"], ["r"], "gw: one account, one role"),
    ({"username": "gw"}, ["w"], ["w"], "w: one account, one role"),
    ({"username": "gw"}, ["a b"], [], "'a b' is not a broker user name"),
])
def test_refused(mqtt: dict[str, str], writers: list[str], readers: list[str], error: str) -> None:
    with pytest.raises(AclError, match="^" + error.replace("(", r"\(")):
        acl_text(config(**mqtt), writers, readers)
