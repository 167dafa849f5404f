"""Fixtures of the attack tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may traverse, as a plant's config dir or /run usually is (pytest's
    tmp_path is private to root, so a rogue uid could not even reach a socket in it)."""
    base = Path(tempfile.mkdtemp(prefix="fg-open-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
