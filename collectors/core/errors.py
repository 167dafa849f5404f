"""The one exception base of the collectors package."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collectors.core.yamlnodes import Problem


class FieldgateError(Exception):
    """Base of every error fieldgate raises on purpose."""


class ConfigError(FieldgateError):
    """A config that cannot run; `device` and `tag` name where, when one of them is the cause
    (the gateway's loader turns them into the file:line:column of that tag)."""

    def __init__(self, message: str, *, device: str | None = None, tag: str | None = None) -> None:
        super().__init__(message)
        self.device = device
        self.tag = tag


class ConfigErrors(ConfigError, ValueError):
    """Every problem of a config directory or file; str() is one `file:line:column: message` per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class DeviceError(FieldgateError):
    """A device did not answer, or answered with an error.

    `reason` is short and stable (it becomes the `bad` reading's reason), `detail` is for logs.
    """

    def __init__(self, device: str, reason: str, detail: str | None = None) -> None:
        self.device = device
        self.reason = reason
        self.detail = detail
        super().__init__(f"{device}: {reason}" + (f" ({detail})" if detail else ""))


class WriteError(FieldgateError):
    """A write was refused (not writable, wrong type, out of range) or failed at the device."""
