"""Generated trial and baseline records in the record format of docs/records.md (for the report's tests and --smoke).

Values are a fixed function of the cell and seed (zlib.crc32, never hash()), so the same call writes the same
bytes. Every record field that bench.report reads is present: test and val_* metrics, *_size fields,
initial_* statistics, pinned_at_margin / collapsed diagnostics, planned_steps, images_per_class, lr,
precision, threads and train_seconds.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from bench.engine.config import DEFAULTS
from bench.experiment import records as schema

SIZES = {"val_gallery_size": 540, "val_queries_size": 540, "test_gallery_size": 5400, "test_queries_size": 1000,
         "train_size": 5400, "val_size": 600, "test_size": 1000, "n_train_classes": 10}
CURVES = ("map_at_r", "knn_accuracy", "precision_at_1", "val_map_at_r", "val_knn_accuracy", "val_precision_at_1")
PROVENANCE = {"date": "2026-01-01T00:00:00Z", "git_commit": "abc123", "hardware": "Test CPU (2 threads)",
              "device": "cpu", "python": "3.11", "torch": "2.5.0", "ray": None, "numpy": "2.0",
              "command": "make ablation PRESET=test", "node": {"node_id": "n0", "hostname": "host"},
              "resources": {"cpu": 1, "gpu": 0}, "concurrent_trials": 2}


FINGERPRINT = "0123456789abcdef"


def _noise(*key: Any) -> float:
    """A fixed number in [0, 1) for key."""
    return zlib.crc32(repr(key).encode()) / 2**32


def checkpoint(index: int, checkpoints: int, batch_size: int, values: dict[str, float], steps: int | None = None,
               subsets: dict[str, int] | None = None) -> dict[str, Any]:
    """One checkpoint of a trial at fraction index/checkpoints of its `steps` (default 20 per checkpoint), final
    metrics `values` at the end; `subsets` overrides the evaluation sizes of every checkpoint but the last."""
    share = index / checkpoints
    steps = steps or 20 * checkpoints
    entry: dict[str, Any] = {
        "checkpoint": index, "step": round(steps * share), "planned_steps": steps,
        "samples_seen": round(steps * share) * batch_size, "loss": 0.3 * (1 - share) + 0.05,
        "train_seconds": 2.0 * index, "elapsed_seconds": 3.0 * index, "samples_per_second": 40.0 * batch_size,
        "warmup_steps": 5, "images_per_class": batch_size / 10, "lr": 2e-4, "precision": "fp32", "threads": 1,
        "cpu_share": 0.98,
        "peak_memory_mib": 50.0 + 4.0 * batch_size, "fraction_easy": 0.2 * share, "fraction_semihard": 0.3,
        "fraction_hard": 0.5 - 0.2 * share,
        "mu_pos": 0.4, "mu_neg": 1.2, "pinned_at_margin": False, "collapsed": False, "effective_rank": 8.0,
        "initial_fraction_easy": 0.05, "initial_fraction_semihard": 0.15, "initial_fraction_hard": 0.8,
        "initial_active_anchors": None, "effective_margin": 0.2, "status": "ok", **SIZES,
        **(subsets if subsets and index < checkpoints else {}),
        **({"intra_class_distance": 0.3, "inter_class_distance": 1.1} if index == checkpoints else {}),
    }
    for name, value in values.items():
        growing = name in CURVES and index < checkpoints
        entry[name] = value * (0.5 + 0.5 * share) if growing else value
    return entry


def trial_record(experiment: str, loss: str, margin: float, batch_size: int, seed: int, *, status: str = "ok",
                 values: dict[str, Any] | None = None, checkpoints: int = 3, protocol: str = "seen",
                 pinned: list[bool] | None = None, collapsed: list[bool] | None = None,
                 dataset: str = "mnist", trial_id: str | None = None, steps: int | None = None,
                 subsets: dict[str, int] | None = None, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """A trial record: `values` overrides the final checkpoint's fields (metrics default to a fixed function of
    the cell and seed), `config` the config's keys (a variant axis's value, say); a status other than ok/collapsed
    keeps only the checkpoints before the failure. `steps` sets the budget, `steps` × batch size samples (default:
    20 steps per checkpoint at every batch size, under one budget of 20 × checkpoints × 32 samples, so that a
    grid's cells share their budget, as bench.reporting.stats.select needs to compare them); `subsets`, the
    evaluation sizes of the checkpoints before the last (which then evaluate subsets, as the reference grids do)."""
    base = 0.5 + 0.3 * _noise(loss, margin, batch_size) + 0.05 * _noise(loss, margin, batch_size, seed)
    systems = {"samples_per_second": 40.0 * batch_size * (0.9 + 0.2 * _noise(loss, margin, batch_size, seed, 1)),
               "peak_memory_mib": (50.0 + 4.0 * batch_size) * (0.9 + 0.2 * _noise(loss, margin, batch_size, seed, 2))}
    values = {**systems, "map_at_r": base, "knn_accuracy": base + 0.15, "precision_at_1": base + 0.12,
              "val_map_at_r": base + 0.01, "val_knn_accuracy": base + 0.16, "val_precision_at_1": base + 0.13,
              **(values or {})}
    history = [checkpoint(i, checkpoints, batch_size, values, steps, subsets) for i in range(1, checkpoints + 1)]
    for flags, name in ((pinned, "pinned_at_margin"), (collapsed, "collapsed")):
        for entry, flag in zip(history, flags or [], strict=False):
            entry[name] = flag
    if status not in ("ok", "collapsed"):
        history = history[:-1]
    if history:
        history[-1]["status"] = status if status in ("ok", "collapsed", "diverged") else history[-1]["status"]
    overrides = config or {}
    config = {**DEFAULTS, "dataset": dataset, "loss": loss, "margin": margin, "batch_size": batch_size, "seed": seed,
              "protocol": protocol, "budget_samples": steps * batch_size if steps else 20 * checkpoints * 32,
              **overrides}
    suffix = "".join(f"-{key}{value}" for key, value in sorted(overrides.items()))
    trial_id = trial_id or f"{dataset}-{protocol}-{loss}-{margin}-{batch_size}-{seed}{suffix}"
    return schema.trial_record(trial_id, config, status, None if status == "ok" else f"{status} on purpose", history,
                                PROVENANCE, experiment=experiment, preset=experiment, fingerprint=FINGERPRINT)


def baseline_record(experiment: str, baseline: str, seed: int | None, values: dict[str, float],
                    dataset: str = "mnist", protocol: str = "seen") -> dict[str, Any]:
    """A baseline record (pixels: seed None; untrained: one per seed) with final metrics `values`."""
    final = {**SIZES, **values}
    trial_id = f"baseline-{dataset}-{protocol}-{baseline}" + ("" if seed is None else f"-{seed}")
    config = {"dataset": dataset, "protocol": protocol, "val_fraction": 0.1, "seed": seed, "model": None}
    return schema.baseline_record(trial_id, baseline, config, final, PROVENANCE, FINGERPRINT, experiment=experiment,
                                   preset=experiment)


def write_experiment(root: Path, experiment: str, records: list[dict[str, Any]], axes: dict[str, list[Any]],
                     fixed: dict[str, Any] | None = None, embeddings: bool = False, citable: bool = False) -> Path:
    """root/experiment with grid.json (preset named as the experiment, axes, fixed, citable) and one JSON per
    record; with embeddings, a 4-cluster npz of test embeddings beside every trial record."""
    records_dir = root / experiment / "records"
    records_dir.mkdir(parents=True, exist_ok=True)
    (root / experiment / "grid.json").write_text(json.dumps(
        {"preset": experiment, "experiment": experiment, "doc": f"generated records ({experiment})",
         "citable": citable, "axes": axes, "fixed": fixed or {}, "per_dataset": {}},
        indent=1))
    for record in records:
        if embeddings and record.get("kind") != "baseline":
            rng = np.random.default_rng(zlib.crc32(record["trial_id"].encode()))
            labels = np.arange(60) % 4
            points = rng.normal(size=(60, 8)) * 0.3 + np.eye(8)[labels] * 2
            np.savez(records_dir / f"{record['trial_id']}.npz", embeddings=points.astype(np.float16), labels=labels)
            record = {**record, "embeddings": f"{record['trial_id']}.npz"}
        schema.write_record(records_dir / f"{record['trial_id']}.json", record)
    return root / experiment


def write_smoke_results(root: Path) -> Path:
    """Two experiments under root: `full` (3 seeds, 3 losses × 2 margins × 2 batch sizes, baselines, an OOM
    cell, a diverged seed, a pinned then escaped trial; a citable reference) and `partial` (INCOMPLETE: 3 of 8
    trials; not citable)."""
    losses, margins, batches, seeds = ["batch-all", "batch-hard", "quadruplet"], [0.1, 0.2], [16, 32], [0, 1, 2]
    records: list[dict[str, Any]] = [
        baseline_record("full", "pixels", None, {"map_at_r": 0.30, "knn_accuracy": 0.90, "precision_at_1": 0.89,
                                                 "val_map_at_r": 0.31, "val_knn_accuracy": 0.91,
                                                 "val_precision_at_1": 0.9})]
    records += [baseline_record("full", "untrained", seed, {
        "map_at_r": 0.2 + 0.01 * seed, "knn_accuracy": 0.8 + 0.01 * seed, "precision_at_1": 0.79 + 0.01 * seed,
        "val_map_at_r": 0.21, "val_knn_accuracy": 0.81, "val_precision_at_1": 0.8}) for seed in seeds]
    for loss in losses:
        for margin in margins:
            for batch_size in batches:
                for seed in seeds:
                    status = "ok"
                    if (loss, margin, batch_size) == ("quadruplet", 0.2, 32):
                        status = "OOM"
                    elif (loss, margin, batch_size, seed) == ("batch-all", 0.2, 16, 1):
                        status = "diverged"
                    pinned = [True, False, False] if (loss, batch_size) == ("batch-hard", 32) else None
                    records.append(trial_record("full", loss, margin, batch_size, seed, status=status, pinned=pinned))
    write_experiment(root, "full", records, {"dataset": ["mnist"], "loss": losses, "margin": margins,
                                             "batch_size": batches, "seed": seeds}, {"protocol": "seen"},
                     embeddings=True, citable=True)
    partial = [trial_record("partial", "batch-hard", 0.2, 16, seed) for seed in (0, 1)]
    partial.append(trial_record("partial", "batch-all", 0.2, 16, 0))
    write_experiment(root, "partial", partial, {"dataset": ["mnist"], "loss": ["batch-all", "batch-hard"],
                                                "margin": [0.2], "batch_size": [16, 32], "seed": [0, 1]})
    return root
