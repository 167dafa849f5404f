"""The buffer and the Sparkplug state hold plant data: 0600 files in 0700 directories (issue 9, item 7),
whatever the process umask, and made so when an older version left them 0644 in 0755."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.core.model import Reading
from collectors.forwarder.buffer import Batch, Buffer
from collectors.forwarder.quarantine import Quarantine
from collectors.forwarder.sparkplug import SparkplugFormat
from tests.forwarder.test_sparkplug import config

pytestmark = pytest.mark.unit

TS = 1_790_000_000_000


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the usual default: 0644 files, 0755 directories
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, str]:
    out = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = oct(stat.S_IMODE(path.stat().st_mode))
    return out


def test_buffer_quarantine_and_sparkplug_state_are_private(tmp_path: Path, loose_umask: None) -> None:
    root = tmp_path / "state" / "buffer"
    # What an older version left: 0755 directories and a 0644 segment and commit file.
    (root / "backlog").mkdir(parents=True, mode=0o755)
    old_segment = root / "backlog" / "00000000000000000000.seg"
    old_segment.write_bytes(b"")
    old_segment.chmod(0o644)
    root.chmod(0o755)

    buffer = Buffer(root, 10**7, "always")
    buffer.put([Reading("press-1", "count", 1, TS)])  # offline: to the backlog
    buffer.online = True
    buffer.put([Reading("press-1", "temperature", 2.0, TS + 1)])  # online: to the live lane, on disk
    for _ in range(2):
        batch = buffer.take(10)
        assert isinstance(batch, Batch)
        buffer.ack(batch)
    buffer.write_commits()
    Quarantine(root).drop([(Reading("x/#", "t", 1, TS), "not one topic level")], "live")
    fmt = SparkplugFormat(config(tmp_path / "state"))
    fmt.will()  # saves bdSeq to {buffer.dir}/sparkplug.json
    buffer.close()

    found = modes(root)
    expected = {
        "backlog", "live", "quarantine", "sparkplug.json", "backlog/00000000000000000000.seg", "backlog/commit",
        "live/commit", "live/00000000000000000000.seg", "quarantine/readings.jsonl",
    }
    assert expected <= found.keys(), found
    wrong = {
        name: mode for name, mode in found.items()
        if mode != ("0o700" if (root / name).is_dir() else "0o600")
    }
    assert not wrong, f"not 0600 files in 0700 directories: {wrong}"
    # The parent the buffer created is not left open either.
    assert oct(stat.S_IMODE((tmp_path / "state").stat().st_mode)) in ("0o700", "0o755")
