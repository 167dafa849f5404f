"""Where a config directory keeps its files: `gateway.yaml` and `devices/*.yaml`.

Apart from `gateway.config` (which imports the config models of every collector), so that the
supervisor can watch the files for changes without loading any model.
"""

from __future__ import annotations

from pathlib import Path

GATEWAY_FILE = "gateway.yaml"
DEVICES_DIR = "devices"


def device_files(dir: Path) -> list[Path]:
    """The device files of a config directory, in name order (hidden files and editor backups skipped).

    Every `*.yaml` / `*.yml` name counts, whatever it is: a directory, a pipe or a symlink loop
    under such a name is refused when read (load_yaml), never silently left out. Raises OSError
    when devices/ cannot be listed."""
    folder = dir / DEVICES_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith("."))
