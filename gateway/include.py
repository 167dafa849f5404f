"""Shared device models: one file that several device files include without copying it.

A device file may name a model file with `model: PATH` (relative to the device file):

    # gateways/line3/devices/press-1.yaml        # models/press-v2.yaml
    model: ../../../models/press-v2.yaml         protocol: modbus
    name: press-1                                unit: 1
    connection:                                  poll: 1s
      tcp: {host: 10.20.0.5, port: 502}          tags: [...]

The device is the model's keys with the device file's own keys on top: a top-level key the
device file writes replaces the model's whole value (no deep merge: `tags:` in the device file
replaces the model's tag list). A model is one level deep (it cannot name another model).
Errors point at the file that wrote the key: a bad tag in the model is reported at its line in
the model file, once per device that includes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from collectors.core.yamlnodes import Loc, Position, Problem, Source, load_yaml

MODEL_KEY = "model"


@dataclass(slots=True)
class IncludedSource(Source):
    """A device file merged with its model: positions and problems of the model's keys name the
    model file, the others the device file."""

    model_file: Path | None = None
    from_model: frozenset[str | int] = frozenset()

    def problem(self, loc: Loc | Position | None, message: str, key: bool = False) -> None:
        if (self.model_file is not None and isinstance(loc, tuple) and loc
                and loc[0] in self.from_model):
            position = self.where(loc, key)
            self.problems.append(Problem(self.model_file, position, message))
            return
        Source.problem(self, loc, message, key)


def resolve_model(source: Source, env: Mapping[str, str] | None) -> Source:
    """`source` with its `model:` replaced by the model file's keys (see the module docstring);
    unchanged when it names none. Problems with the model itself are put on the result."""
    data = source.data
    if source.broken or not isinstance(data, dict) or MODEL_KEY not in data:
        return source
    value = data[MODEL_KEY]
    if not isinstance(value, str) or not value.strip():
        source.problem((MODEL_KEY,), "model: must be the path of a model file, relative to this device file "
                       "(e.g. model: ../../models/press.yaml)")
        source.broken = True
        return source
    model_path = Path(os.path.normpath(source.file.parent / value))
    if not model_path.is_file():
        source.problem((MODEL_KEY,), f"model: {value}: no such file ({model_path})")
        source.broken = True  # nothing more to say about a device without its model
        return source
    model = load_yaml(model_path, env)
    if model.broken or model.problems:
        source.problems.extend(model.problems)
        source.broken = True
        return source
    if not isinstance(model.data, dict):
        source.problem((MODEL_KEY,), f"model: {value}: a model file is a mapping of device keys "
                       "(protocol:, tags:, ...)")
        source.broken = True  # nothing more to say about a device without its model
        return source
    if MODEL_KEY in model.data:
        source.problems.append(Problem(model.file, model.where((MODEL_KEY,), key=True),
                                       "a model cannot include another model: copy its keys here"))
        source.broken = True  # nothing more to say about a device without its model
        return source
    own = {k: v for k, v in data.items() if k != MODEL_KEY}
    inherited = frozenset(k for k in model.data if k not in own)
    merged = IncludedSource(source.file, model_file=model.file, from_model=inherited)
    merged.data = {**{k: model.data[k] for k in model.data if k in inherited}, **own}
    for table, own_table, model_table in ((merged.values, source.values, model.values),
                                          (merged.keys, source.keys, model.keys)):
        table.update({loc: pos for loc, pos in model_table.items() if loc and loc[0] in inherited})
        table.update({loc: pos for loc, pos in own_table.items() if not loc or loc[0] != MODEL_KEY})
    merged.env_refs = {**{loc: n for loc, n in model.env_refs.items() if loc[0] in inherited},
                       **source.env_refs}
    merged.problems = list(source.problems)
    merged.size = source.size + model.size  # the directory's budget counts the model for each device
    merged.tainted = {loc for loc in model.tainted if loc and loc[0] in inherited} | source.tainted
    return merged


def model_of(path: Path) -> Path | None:
    """The model file a device file names (for change watching and the fleet's file list), if any."""
    source = load_yaml(path, None)
    value = source.data.get(MODEL_KEY) if isinstance(source.data, dict) else None
    return Path(os.path.normpath(path.parent / value)) if isinstance(value, str) and value.strip() else None
