"""Baselines: known answers on generated data, one config per data set × protocol (× seed), grid records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.engine.config import METRICS, resolve
from bench.engine.data import channel_stats
from bench.engine.diagnostics import spread
from bench.engine.models import initial_model
from bench.engine.protocol import EVAL_METRICS, load_splits
from bench.engine.synthetic import synthetic_split, write_synthetic
from bench.engine.train import embed, recalibrate_batchnorm
from bench.experiment.baselines import (
    BASELINES,
    BATCHNORM_RULE,
    baseline_config,
    baseline_configs,
    pixel_embeddings,
    run_baseline,
)
from bench.experiment.fingerprint import fingerprint
from bench.experiment.gridspec import Grid, GridError
from bench.experiment.identity import baseline_id
from bench.grid import Context, record_baselines

RECORD_KEYS = {"kind", "baseline", "trial_id", "experiment", "preset", "config", "status", "reason", "final",
               "history", "provenance"}


def test_pixel_embeddings_are_flat_unit_rows() -> None:
    images = torch.randint(0, 256, (3000, 1, 5, 4), dtype=torch.uint8)
    embedded = pixel_embeddings(images)
    assert embedded.shape == (3000, 20) and embedded.dtype == torch.float32
    torch.testing.assert_close(embedded, torch.nn.functional.normalize(images.flatten(1).double(), dim=1).float())


@pytest.mark.parametrize("protocol", ["seen", "unseen"])
def test_pixels_separate_well_separated_clusters_perfectly(tiny_data_dir: Path, protocol: str) -> None:
    # bench.engine.synthetic: class prototypes uniform in 0..255 per pixel, noise σ = 40: classes far apart in pixels
    final = run_baseline(baseline_config("pixels", {"dataset": "mnist", "protocol": protocol}), str(tiny_data_dir),
                         "cpu")
    assert {key: final[key] for key in EVAL_METRICS} == dict.fromkeys(EVAL_METRICS, 1.0)
    if protocol == "seen":  # the whole sets: 540 train (gallery), 60 validation, 200 test
        assert (final["val_gallery_size"], final["val_queries_size"], final["test_queries_size"]) == (540, 60, 200)
    else:  # validation classes 4-5: their 120 training images; test classes 6-9: their 80 test images (leave-one-out)
        assert (final["val_gallery_size"], final["val_queries_size"], final["test_gallery_size"]) == (120, 120, 80)
    assert final["n_train_classes"] == (10 if protocol == "seen" else 4)


def test_pixels_on_overlapping_clusters_fall_below_one(tmp_path: Path) -> None:
    x_train, y_train = synthetic_split("mnist", 400, noise=1500.0, seed=1)  # noise ≫ the prototypes' spread
    x_test, y_test = synthetic_split("mnist", 100, noise=1500.0, seed=2)
    np.savez(tmp_path / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    final = run_baseline(baseline_config("pixels", {"dataset": "mnist"}), str(tmp_path), "cpu")
    assert final["map_at_r"] < 0.9 and final["val_map_at_r"] < 0.9


def test_untrained_net_is_the_trials_net_before_training(tiny_data_dir: Path) -> None:
    config = {"dataset": "mnist", "protocol": "unseen", "seed": 3}
    first = run_baseline(baseline_config("untrained", config), str(tiny_data_dir), "cpu")
    assert first == run_baseline(baseline_config("untrained", config), str(tiny_data_dir), "cpu")
    other = run_baseline(baseline_config("untrained", {**config, "seed": 4}), str(tiny_data_dir), "cpu")
    assert other["map_at_r"] != first["map_at_r"]  # another seed, another net
    assert 0 < first["map_at_r"] < 1 and set(EVAL_METRICS) <= set(first)


def test_one_baseline_per_data_set_protocol_and_seed() -> None:
    trials = [{"dataset": d, "protocol": p, "seed": s, "loss": loss, "margin": m}
              for d in ("mnist", "cifar10") for p in ("seen", "unseen") for s in (0, 1)
              for loss in ("batch-all", "batch-hard") for m in (0.1, 0.2)]
    configs = baseline_configs(trials)
    assert sum(c["baseline"] == "pixels" for c in configs) == 4  # data set × protocol
    assert sum(c["baseline"] == "untrained" for c in configs) == 8  # × seed
    assert all(c["seed"] is None and c["model"] is None for c in configs if c["baseline"] == "pixels")
    ids = [baseline_id(c, "f" * 16) for c in configs]
    assert len(set(ids)) == 12 and all(i.startswith("baseline-") and len(i) == 21 for i in ids)
    assert set(ids) == {baseline_id(c, "f" * 16) for c in baseline_configs(trials[::-1])}  # not order-dependent
    assert baseline_id(configs[0], "0" * 16) != ids[0]  # other data, another baseline
    with pytest.raises(ValueError, match="unknown baseline 'noise'"):
        baseline_config("noise", {})


def context(tmp_path: Path, data_dir: Path, protocol: str = "seen") -> tuple[Context, list[dict]]:
    grid = Grid("t", {"dataset": ["mnist"], "loss": ["batch-all", "batch-hard"], "margin": [0.2],
                      "batch_size": [32], "seed": [0, 1]}, {"protocol": protocol, "budget_samples": 64}, {})
    ctx = Context(grid, "e", str(tmp_path / "e"), str(data_dir), "python -m bench.grid --preset t",
                  {"mnist": fingerprint("mnist", data_dir)}, 1)
    return ctx, grid.points()


def test_the_grid_records_each_baseline_once(tiny_data_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ctx, points = context(tmp_path, tiny_data_dir)
    record_baselines(ctx, points)
    paths = sorted((tmp_path / "e" / "records").glob("baseline-*.json"))
    records = [json.loads(path.read_text()) for path in paths]
    assert sorted(r["baseline"] for r in records) == ["pixels", "untrained", "untrained"]  # seeds 0 and 1
    for path, record in zip(paths, records, strict=True):
        assert RECORD_KEYS <= set(record) and record["kind"] == "baseline" and record["baseline"] in BASELINES
        assert record["data"] == {"fingerprint": ctx.fingerprints["mnist"]}
        assert record["trial_id"] == path.stem == baseline_id(record["config"], ctx.fingerprints["mnist"])
        assert record["status"] == "ok"
        assert record["history"] == [record["final"]] and record["experiment"] == "e" and record["preset"] == "t"
        assert set(record["final"]) == set(METRICS[METRICS.index("val_knn_accuracy"):]) | {
            "knn_accuracy", "precision_at_1", "map_at_r"}
        assert record["provenance"]["command"] == ctx.command
    assert capsys.readouterr().out.count("baseline ") == 3
    mtimes = [path.stat().st_mtime_ns for path in paths]
    record_baselines(ctx, points)  # already recorded: nothing runs, nothing is rewritten
    assert [path.stat().st_mtime_ns for path in paths] == mtimes and capsys.readouterr().out == ""


def test_a_protocol_the_data_cannot_take_stops_the_grid_in_one_line(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "three", n_classes=3)
    ctx, points = context(tmp_path, tmp_path / "three", protocol="unseen")
    with pytest.raises(GridError, match="protocol unseen needs at least 6 classes"):
        record_baselines(ctx, points)
    assert not list((tmp_path / "e").glob("**/*.json"))


def test_the_untrained_bn_net_is_evaluated_with_recalibrated_statistics(tiny_data_dir: Path) -> None:
    """cifar-net's fresh running statistics (mean 0, variance 1) squeeze its eval-mode embeddings together; the
    baseline re-estimates them on the training images first, changing no parameter, and says so in its config."""
    config = baseline_config("untrained", {"dataset": "cifar10", "model": "cifar-net", "seed": 0})
    assert config["batchnorm"] == BATCHNORM_RULE
    assert "batchnorm" not in baseline_config("pixels", {"dataset": "cifar10"})
    cfg = resolve({"dataset": "cifar10", "model": "cifar-net", "data_dir": str(tiny_data_dir), "device": "cpu"})
    splits = load_splits(cfg, torch.device("cpu"))
    mean, std = channel_stats(splits.x_train)
    fresh = initial_model(cfg, tuple(splits.x_train.shape[1:]), torch.device("cpu"))
    parameters = {name: value.clone() for name, value in fresh.named_parameters()}
    squeezed = embed(fresh, splits.x_val, mean, std)
    recalibrate_batchnorm(fresh, splits.x_train, mean, std)
    calibrated = embed(fresh, splits.x_val, mean, std)
    assert all(torch.equal(parameters[name], value) for name, value in fresh.named_parameters())
    assert spread(calibrated) > 5 * spread(squeezed) and fresh.training
    norm = next(m for m in fresh.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert norm.momentum == 0.1 and int(norm.num_batches_tracked) == 1  # 600 training images: one batch


def test_recalibration_leaves_a_net_without_batchnorm_alone(tiny_data_dir: Path) -> None:
    cfg = resolve({"dataset": "mnist", "data_dir": str(tiny_data_dir), "device": "cpu"})
    splits = load_splits(cfg, torch.device("cpu"))
    mean, std = channel_stats(splits.x_train)
    net = initial_model(cfg, tuple(splits.x_train.shape[1:]), torch.device("cpu"))
    before = embed(net, splits.x_val, mean, std)
    recalibrate_batchnorm(net, splits.x_train, mean, std)
    assert torch.equal(embed(net, splits.x_val, mean, std), before)
