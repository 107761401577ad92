"""Trial ids are reproduced byte for byte from the committed records' configs, and from their grids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.experiment.baselines import baseline_config
from bench.experiment.gridspec import stored_grid, with_threads
from bench.experiment.identity import baseline_id, record_name, trial_id

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def committed_records() -> list[tuple[Path, dict]]:
    """(path, record) of every committed record under results/*/records/ (skips where a checkout has none)."""
    paths = sorted(RESULTS.glob("*/records/*.json"))
    if not paths:
        pytest.skip("no committed records in this checkout")
    return [(path, json.loads(path.read_text())) for path in paths]


def test_committed_trial_and_baseline_ids_are_reproduced_from_their_configs() -> None:
    """Every committed record's file name and trial_id follow from its own config and data fingerprint."""
    checked = {"trial": 0, "baseline": 0}
    for path, record in committed_records():
        fingerprint = record["data"]["fingerprint"]
        if record.get("kind") == "baseline":
            expected = baseline_id(record["config"], fingerprint)
            checked["baseline"] += 1
        else:
            expected = trial_id(record["config"], fingerprint)
            checked["trial"] += 1
        assert record["trial_id"] == path.stem == expected, path
    assert checked["baseline"] > 0


def test_each_stored_grid_names_every_trial_recorded_in_its_folder() -> None:
    """A grid.json's points, with its thread default and fingerprints, give the ids of every trial recorded
    beside it (all of them once the grid is complete; a subset while it runs)."""
    specs = sorted(RESULTS.glob("*/grid.json"))
    if not specs:
        pytest.skip("no committed grid in this checkout")
    for path in specs:
        spec = json.loads(path.read_text())
        grid = stored_grid(spec)
        cells = [{axis: value for axis, value in point.items() if axis != "seed"} for point in grid.points()]
        ids = {trial_id(with_threads(grid.config(point), spec["threads"]), spec["data"][point["dataset"]])
               for point in grid.points() + grid.fresh(cells).points()}  # a cell on a fresh seed, once selected
        recorded = {record_path.stem for record_path in (path.parent / "records").glob("*.json")
                    if json.loads(record_path.read_text()).get("kind") != "baseline"}
        assert recorded <= ids, path


def test_baseline_ids_follow_the_baseline_config() -> None:
    """A baseline's id depends on its data keys (and, untrained, its net keys), not on the trial's loss."""
    one = baseline_config("pixels", {"dataset": "mnist", "loss": "batch-all", "seed": 0})
    other = baseline_config("pixels", {"dataset": "mnist", "loss": "quadruplet", "seed": 3})
    assert baseline_id(one, "f" * 16) == baseline_id(other, "f" * 16) != baseline_id(one, "e" * 16)
    untrained = [baseline_config("untrained", {"dataset": "mnist", "seed": seed}) for seed in (0, 1)]
    assert baseline_id(untrained[0], "f" * 16) != baseline_id(untrained[1], "f" * 16)


def test_a_key_added_later_leaves_ids_alone_at_its_default() -> None:
    """budget_steps is newer than the committed records: unset, the id is the one those records carry; set, it is
    another trial."""
    config = {"dataset": "mnist", "loss": "batch-all", "margin": 0.2, "batch_size": 64, "seed": 0}
    assert trial_id({**config, "budget_steps": None}, "f" * 16) == trial_id(config, "f" * 16)
    assert trial_id({**config, "budget_steps": 100}, "f" * 16) != trial_id(config, "f" * 16)


def test_record_name_of_the_cli() -> None:
    """bench.trial's file name: the cell, then 8 hex characters that change with any identity key."""
    config = {"dataset": "mnist", "loss": "batch-all", "margin": 0.2, "batch_size": 64, "seed": 1}
    name = record_name(config)
    assert name.startswith("mnist-batch-all-m0.2-b64-seed1-") and len(name.rsplit("-", 1)[1]) == 8
    assert record_name({**config, "lr": 1e-3}) != name
    assert record_name({**config, "data_dir": "/elsewhere", "device": "cpu"}) == name  # location keys
