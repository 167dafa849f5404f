"""The forwarder's config slice: identity, broker, buffer, metrics, and the catalog of devices.

The `mqtt`, `buffer` and `metrics` models are also the keys of gateway.yaml; the
gateway composes them into its own model and renders this slice for the forwarder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from collectors.core.config import (
    HOST_PATTERN,
    ByteSize,
    Duration,
    HandoffConfig,
    StrictModel,
    password_from_env,
    read_slice,
)
from collectors.core.modelbase import Field, SecretStr, ValidationInfo, field_validator, model_validator
from collectors.core.names import Name


class Identity(StrictModel):
    id: Name = Field(description="edge node id; used in topics")
    group: Name = Field("fieldgate", description="Sparkplug group id")


class TlsConfig(StrictModel):
    ca_file: Path | None = Field(None, description="CA certificate(s) that signed the broker's certificate (PEM)")
    cert_file: Path | None = Field(None, description="client certificate (PEM), for brokers that require one")
    key_file: Path | None = Field(None, description="private key of the client certificate (PEM)")
    verify_hostname: bool = Field(True, description="check the broker's certificate names the host")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttConfig(StrictModel):
    host: str = Field("127.0.0.1", pattern=HOST_PATTERN, description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="broker port (8883 is usual with tls)")
    client_id: str | None = Field(
        None, pattern=r"^[^\x00-\x1f\x7f]{1,256}$",
        description="MQTT client id (1 to 256 characters, no control characters); default fieldgate-{gateway.id}",
    )
    username: str | None = Field(None, description="user name, e.g. ${MQTT_USER}")
    password: SecretStr | None = Field(None, description="password, usually ${MQTT_PASSWORD}; never logged")
    password_file: Path | None = Field(None, description="file holding the password (docker secret)")
    password_env: str | None = Field(
        None, description="environment variable holding the password (rendered slices use it; never a file)"
    )
    tls: TlsConfig | None = Field(None, description="TLS towards the broker: {ca_file, cert_file, key_file}")
    qos: Literal[0, 1, 2] = Field(1, description="QoS of readings in json mode (Sparkplug data is QoS 0)")
    format: Literal["json", "sparkplug"] = Field("json", description="json | sparkplug")
    topic_prefix: str | None = Field(None, description="json mode topic prefix; default fieldgate/{gateway.id}")
    layout: Literal["tag", "device"] = Field(
        "tag", description="json mode: tag (one message per reading) | device (one per device and batch)"
    )
    retain: bool = Field(False, description="retain readings (json mode)")
    keepalive: Duration = Field(
        30.0, ge=1, le=65535, description="MQTT keep-alive, 1s..65535s (a 16-bit count of seconds in CONNECT)"
    )
    primary_host: str | None = Field(
        None, pattern=r"^[^+#/\x00-\x1f\x7f]{1,256}$",
        description="sparkplug: host application id whose STATE gates births (one topic level: no / + #)",
    )

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, prefix: str | None) -> str | None:
        # MQTT 3.1.1, 4.7: no wildcards or U+0000 in a topic name; topics starting with $ are the
        # broker's ($SYS): a subscription to # never sees them.
        if prefix is None:
            return prefix
        if (not prefix or any(c in prefix for c in "+#") or prefix.startswith(("/", "$")) or prefix.endswith("/")
                or any(ord(c) < 0x20 or c == "\x7f" for c in prefix) or len(prefix.encode()) > 1024):
            raise ValueError(
                f"{prefix!r} is not a topic prefix: levels separated by /, no + or #, no / at either end, "
                "not starting with $ (the broker's own topics), no control characters, at most 1024 bytes "
                "(e.g. fieldgate/line3)"
            )
        return prefix

    @model_validator(mode="before")
    @classmethod
    def _password_env(cls, data: Any, info: ValidationInfo) -> Any:
        return password_from_env(data, info)

    @model_validator(mode="after")
    def _secrets(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self


class BufferConfig(StrictModel):
    dir: Path = Field(Path("/var/lib/fieldgate/buffer"), description="where the store-and-forward buffer lives")
    max_bytes: ByteSize = Field(
        256 * 1024**2, ge=64 * 1024,
        description="oldest readings are dropped past this, and counted; at least 64KiB (16 segments)",
    )
    durability: Literal["outage", "always"] = Field(
        "outage", description="outage: disk only while the broker is away | always: disk before every ack"
    )


class MetricsConfig(StrictModel):
    port: int | None = Field(9108, description="Prometheus /metrics and /healthz port of the forwarder")
    host: str = Field(
        "127.0.0.1", min_length=1,
        description="address the forwarder's and the collectors' /metrics and /healthz listen on: "
        "127.0.0.1 (this machine only) unless Prometheus scrapes from elsewhere, e.g. 0.0.0.0",
    )


class CatalogTag(StrictModel):
    name: str
    type: str | None = Field(None, description="data type when known from config (Modbus), e.g. float32")
    unit: str | None = None
    writable: bool = False


class CatalogDevice(StrictModel):
    name: str
    collector: str = Field(description="the collector that owns this device: modbus | opcua")
    tags: list[CatalogTag]


class ForwarderHandoff(HandoffConfig):
    """The hand-off as the forwarder serves it."""

    # None rather than false when unset: the slice of a gateway without a sandbox stays what it was
    # (same config hash, and readable by forwarders that predate the key).
    root_peers: bool | None = Field(
        None,
        description="true: also admit connections whose peer credentials name uid 0: gVisor's gofer, a "
        "root process on the host, connects a sandboxed collector to the socket (set by the gateway "
        "when a collector has sandbox: gvisor)",
    )


class ForwarderConfig(StrictModel):
    """What `python -m collectors.forwarder --config FILE` runs: rendered by the gateway."""

    gateway: Identity
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    handoff: ForwarderHandoff = Field(default_factory=ForwarderHandoff)
    devices: list[CatalogDevice] = Field(default_factory=list, description="every configured device and tag")
    log_level: str = Field("INFO", description="DEBUG | INFO | WARNING | ERROR")

    @property
    def topic_prefix(self) -> str:
        return self.mqtt.topic_prefix or f"fieldgate/{self.gateway.id}"

    def settings(self) -> ForwarderConfig:
        """Everything but the catalog: what a reload in place cannot change (app.Forwarder.reload)."""
        return self.model_copy(update={"devices": []})


def load_forwarder_config(path: Path) -> ForwarderConfig:
    return ForwarderConfig.model_validate(read_slice(path))
