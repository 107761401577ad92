"""The shipped presets (bench/presets/<name>.json) and loading one, every trial config of its grid checked.

A preset is a grid spec with a "doc" text (docs/presets.md, bench/experiment/gridspec.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bench.engine.config import resolve
from bench.engine.models import model_settings
from bench.experiment.gridspec import Grid, GridError, parse_grid

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


def preset_names() -> list[str]:
    """The presets shipped in bench/presets/."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.json"))


def load_preset(name: str) -> Grid:
    """The preset called `name` (or stored at the .json path `name`), every config in its grid checked."""
    path = Path(name)
    if not (path.suffix == ".json" and path.is_file()):
        path = PRESETS_DIR / f"{name}.json"
        if not path.is_file():
            raise GridError(f"unknown preset {name!r}; valid: {', '.join(preset_names())} (or a path to a .json file)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GridError(f"preset {path} cannot be read as JSON: {err}") from None
    try:
        grid = parse_grid(raw, path.stem, path.parent)
    except GridError as err:
        raise GridError(f"preset {path}: {err}") from None
    points = grid.points()
    for point in points + [{**points[0], "seed": seed} for seed in grid.fresh_seeds]:
        try:
            model_settings(resolve(grid.config(point)))
        except (ValueError, TypeError) as err:
            raise GridError(f"preset {path}: trial {point}: {err}") from None
    return grid


def default_preset() -> str:
    """'paper' when a CUDA GPU is visible, else 'cpu', saying so and how to choose another."""
    name = "paper" if torch.cuda.is_available() else "cpu"
    print(f"no preset given: using '{name}' ({'a' if name == 'paper' else 'no'} CUDA GPU visible); "
          f"choose one with make ablation PRESET=<{'|'.join(preset_names())}> (or --preset NAME)", flush=True)
    return name
