"""Hand edits of rendered slices against the lite models (collectors.core.lite): whatever a
slice says, the lite models either refuse it (the entry point then reports it with the full
models) or build exactly what pydantic builds from it. They never run a config that validation
would have made different. The one thing they let through is a value that validation refuses
only for a range or pattern (ge, le, pattern: docs/runtime.md, "Services").

Seeded mutations (delete a key, add one, replace a value with another JSON value) of the slices
of the every-key plant; the lite side is built in a child process without pydantic."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from collectors.core.config import dump_slice, read_slice
from gateway.config import load_config
from gateway.services import SLICE_HEADER, Placement, service_slices
from tests.core.test_lite_models import ENV, MODELS
from tests.support.model_values import ROOT, lite_values, model_values

pytestmark = pytest.mark.security

MUTATIONS = 400  # per run: ~2 s in the child
VALUES: list[Any] = [None, True, False, 0, -1, 1.5, 70000, "x", "250ms", "1e3", "", [], {}, [{}], {"a": 1}]

def places(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key and list index in `data`, as paths."""
    found: list[tuple[Any, ...]] = []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else []
    for key, value in items:
        found.append((*path, key))
        found += places(value, (*path, key))
    return found


def mutate(data: Any, rng: random.Random) -> tuple[Any, str]:
    data = copy.deepcopy(data)
    path = rng.choice(places(data))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    what = rng.choice(["delete", "add", "replace", "replace", "replace"])
    if what == "delete" and isinstance(parent, dict):
        del parent[key]
    elif what == "add" and isinstance(parent, dict):
        parent["unknown_key"] = rng.choice(VALUES)
    else:
        parent[key] = rng.choice(VALUES)
        what = "replace"
    return data, f"{what} {'.'.join(map(str, path))}"


def test_a_hand_edited_slice_is_refused_or_built_as_validation_builds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    config = load_config(ROOT / "tests" / "core" / "every_key_plant", env=ENV)
    placement = Placement(Path("/run/h.sock"), Path("/var/state"), Path("/var/buffer"))
    slices = {name: model.model_dump(mode="json", exclude_none=True)
              for name, model in service_slices(config, placement).items()}
    rng = random.Random(20261203)
    edits: dict[str, str] = {}
    for number in range(MUTATIONS):
        name = rng.choice(sorted(slices))
        data, edit = mutate(slices[name], rng)
        path = tmp_path / f"{name}-{number}.json"
        path.write_text(dump_slice(data, SLICE_HEADER))
        edits[str(path)] = edit
    lite = lite_values([Path(name) for name in edits], ENV)

    outcomes = {"both refuse": 0, "both build the same": 0, "lite refuses, validation accepts": 0,
                "lite builds, validation refuses a range": 0}
    for name, edit in edits.items():
        path = Path(name)
        try:
            full = model_values(MODELS[path.name.split("-")[0]].model_validate(read_slice(path)))
        except (ValidationError, ValueError) as exc:
            if "refused" in lite[name]:
                outcomes["both refuse"] += 1
                continue
            # only a range or a pattern may slip through (the models' own checks run in both)
            kinds = {e["type"] for e in exc.errors()} if isinstance(exc, ValidationError) else {"value_error"}
            assert kinds <= {"greater_than_equal", "greater_than", "less_than_equal", "less_than",
                             "string_pattern_mismatch", "string_too_short", "string_too_long",
                             "too_short", "too_long"}, f"{edit}: lite built what validation refuses: {exc}"
            outcomes["lite builds, validation refuses a range"] += 1
            continue
        if "refused" in lite[name]:
            outcomes["lite refuses, validation accepts"] += 1  # reported or run by the full models
        else:
            assert lite[name] == full, f"{edit}: lite built another config than validation"
            outcomes["both build the same"] += 1
    print(f"\n{MUTATIONS} hand edits of rendered slices: {outcomes}")
    assert outcomes["both build the same"] and outcomes["both refuse"]
