"""The OPC UA device model (docs/config.md), and the OPC UA collector's config slice."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from collectors.core.config import (
    CollectorSettings,
    Duration,
    Finite,
    StrictModel,
    check_write_limits,
    password_from_env,
    read_slice,
)
from collectors.core.modelbase import Field, SecretStr, ValidationInfo, field_validator, model_validator
from collectors.core.names import Name
from collectors.core.simulate import Simulate


class Security(StrictModel):
    """A password is sent, and a server certificate checked, only under a policy other than None:
    with policy None the password would travel readable, or encrypted to a certificate nobody
    checked (which a man in the middle presents), so a password with policy None is refused
    unless `allow_password_without_encryption: true` accepts that; `trust: strict` with policy
    None is refused (no certificate is exchanged to check). Under `strict` an expired or
    not-yet-valid server (or CA) certificate is refused (BadCertificateTimeInvalid)."""

    policy: Literal["None", "Basic128Rsa15", "Basic256", "Basic256Sha256"] = Field(
        "None", description="None | Basic128Rsa15 | Basic256 | Basic256Sha256"
    )
    mode: Literal["None", "Sign", "SignAndEncrypt"] = Field(
        "None", description="None | Sign | SignAndEncrypt"
    )
    username: str | None = Field(None, description="user name; with password or password_file")
    password: SecretStr | None = Field(None, description="password, usually ${VAR}; never logged")
    password_file: Path | None = Field(None, description="file holding the password (docker secret)")
    password_env: str | None = Field(
        None, description="environment variable holding the password (rendered slices use it; never a file)"
    )
    user_certificate: Path | None = Field(None, description="X.509 user certificate (PEM or DER)")
    user_private_key: Path | None = Field(None, description="private key of the user certificate")
    trust: Literal["tofu", "strict"] = Field(
        "tofu",
        description="tofu: pin the first server certificate seen | strict: it must be in the trust dir",
    )
    trust_dir: Path | None = Field(
        None,
        description="certificates (or CAs) trusted under strict; default {state_dir}/opcua/trusted",
    )
    allow_password_without_encryption: bool = Field(
        False,
        description="send the password with policy None anyway: anyone on the network path can read "
        "it or, as a man in the middle, have it encrypted to their own certificate",
    )

    @model_validator(mode="before")
    @classmethod
    def _password_env(cls, data: Any, info: ValidationInfo) -> Any:
        return password_from_env(data, info)

    @model_validator(mode="after")
    def _consistent(self) -> Security:
        if self.policy != "None" and self.mode == "None":
            raise ValueError(f"mode None does not go with policy {self.policy}: use Sign or SignAndEncrypt")
        if self.policy == "None" and self.mode != "None":
            raise ValueError(f"mode {self.mode} needs a policy other than None, e.g. Basic256Sha256")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password needs a username")
        if (self.user_certificate is None) != (self.user_private_key is None):
            raise ValueError("user_certificate and user_private_key go together")
        if self.username is not None and self.user_certificate is not None:
            raise ValueError("authenticate with a username or with a user certificate, not both")
        if self.policy == "None":
            self._no_secrets_in_clear()
        return self

    def _no_secrets_in_clear(self) -> None:
        """Policy None: no password unless explicitly allowed, no `trust: strict` (Part 2, 6.1: the
        channel is neither signed nor encrypted, and no server certificate is exchanged)."""
        if self.trust == "strict":
            raise ValueError(
                "trust: strict checks the server certificate, and policy None exchanges none: choose a "
                "policy such as Basic256Sha256 (mode SignAndEncrypt), or leave trust at its default"
            )
        if self.password is None and self.password_file is None:
            return
        if self.allow_password_without_encryption:
            return
        key = "password_file" if self.password_file is not None else "password"
        raise ValueError(
            f"{key} with policy None: the password would travel unprotected (readable, or encrypted to "
            "a certificate nobody checked, which a man in the middle can present); choose a policy such "
            "as Basic256Sha256 (mode SignAndEncrypt), or set allow_password_without_encryption: true "
            "to accept that risk"
        )


# The shortest poll, publishing interval and request timeout; below it a collector or a server spins.
MIN_INTERVAL = 0.001


class Subscription(StrictModel):
    publishing_interval: Duration = Field(
        0.5, ge=MIN_INTERVAL, description="how often the server sends changes, at least 1ms"
    )
    sampling_interval: Duration = Field(0.1, ge=0, description="how often the server samples each value")
    queue_size: int = Field(
        10, ge=1, le=10000, description="changes the server keeps per item between publishes"
    )


# The string form of a NodeId (Part 6, 5.3.1.10), with nsu= for a namespace given by its URI.
NODE_ID_PATTERN = (
    r"^(ns=\d+;|nsu=[^;]+;)?"
    r"(i=\d+|s=.+|g=[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|b=[A-Za-z0-9+/=]+)$"
)


class OpcuaTag(StrictModel):
    name: Name = Field(description="tag name, unique within the device; the last topic level")
    node: str = Field(
        json_schema_extra={"pattern": NODE_ID_PATTERN},
        description='NodeId, e.g. "ns=2;s=Oven.Temperature", "ns=2;i=1042" or "nsu=urn:...;s=Name"',
    )
    mode: Literal["subscribe", "poll"] = Field("subscribe", description="subscribe (default) | poll")
    poll: Duration | None = Field(
        None, ge=MIN_INTERVAL, description="poll interval for mode: poll, at least 1ms; default: the device's"
    )
    deadband: Finite = Field(0.0, ge=0, description="server-side deadband (0 = every change)")
    deadband_type: Literal["absolute", "percent"] = Field(
        "absolute", description="absolute | percent (of the EURange; where the server supports it)"
    )
    unit: str | None = Field(None, description="engineering unit, e.g. degC")
    max_silence: Duration | None = Field(
        None, description="publish at least this often; default: the device's"
    )
    writable: bool = Field(False, description="accept writes")
    write_min: float | None = Field(
        None, allow_inf_nan=False,
        description="lowest value a write may set; lower writes are refused (writable tags of a numeric DataType)",
    )
    write_max: float | None = Field(
        None, allow_inf_nan=False,
        description="highest value a write may set; higher writes are refused (writable tags of a numeric DataType)",
    )
    description: str | None = Field(None, description="free text for people")
    simulate: Simulate | None = Field(None, description="how `fieldgate simulate` moves this value")

    @model_validator(mode="after")
    def _consistent(self) -> OpcuaTag:
        if self.poll is not None and self.mode != "poll":
            raise ValueError("poll applies to mode: poll tags; a subscribed tag follows the subscription")
        if self.deadband_type == "percent" and self.deadband > 100:
            raise ValueError(f"a percent deadband is 0..100 (of the EURange), not {self.deadband:g}")
        if (self.write_min is not None or self.write_max is not None) and not self.writable:
            raise ValueError("write_min and write_max apply only to writable: true tags")
        check_write_limits(self.write_min, self.write_max)
        return self

    @field_validator("node")
    @classmethod
    def _node_id(cls, value: str) -> str:
        if not re.match(NODE_ID_PATTERN, value):
            raise ValueError(
                f"{value!r} is not a NodeId: write it like ns=2;s=Oven.Temperature, ns=2;i=1042, "
                "nsu=urn:vendor:plc;s=Name, ns=2;g=<guid> or ns=2;b=<base64>"
            )
        return value


class OpcuaDevice(StrictModel):
    """One OPC UA server (devices/NAME.yaml)."""

    name: Name = Field(description="device name, unique in the gateway; a topic level")
    protocol: Literal["opcua"] = Field(description="opcua")
    endpoint: str = Field(
        json_schema_extra={"pattern": r"^opc\.tcp://[^\s/]+"}, description="opc.tcp://host:port[/path]"
    )
    security: Security = Field(default_factory=Security, description="security policy, mode, user and trust")
    subscription: Subscription = Field(default_factory=Subscription, description="subscription parameters")
    poll: Duration = Field(5.0, ge=MIN_INTERVAL, description="default interval for mode: poll tags, at least 1ms")
    timeout: Duration = Field(5.0, ge=MIN_INTERVAL, le=600, description="request timeout, 1ms..10m")
    max_silence: Duration = Field(
        60.0, gt=0, description="publish every tag at least this often, even unchanged"
    )
    description: str | None = Field(None, description="free text for people")
    tags: list[OpcuaTag] = Field(min_length=1, description="the values to read")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        from urllib.parse import urlsplit

        try:
            url = urlsplit(value)
            port = url.port  # ValueError past 65535
        except ValueError:
            url, port = None, None
        if (url is None or url.scheme != "opc.tcp" or not url.hostname or port == 0
                or re.search(r"[\s\x00-\x1f\x7f]", value)):
            raise ValueError(f"{value!r} is not an endpoint: write it like opc.tcp://host:4840[/path] "
                             "(a host, a port 1..65535, no spaces)")
        return value

    @model_validator(mode="after")
    def _unique_tags(self) -> OpcuaDevice:
        seen: set[str] = set()
        for tag in self.tags:
            if tag.name in seen:
                raise ValueError(f"tag name {tag.name!r} is used twice in this device")
            seen.add(tag.name)
        return self


class OpcuaCollectorConfig(CollectorSettings):
    """What `python -m collectors.opcua --config FILE` runs: rendered by the gateway."""

    devices: list[OpcuaDevice] = Field(description="the OPC UA servers this collector reads")


def load_collector_config(path: Path) -> OpcuaCollectorConfig:
    return OpcuaCollectorConfig.model_validate(read_slice(path))
