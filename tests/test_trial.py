"""Whole trials on tiny generated data: checkpoints, metrics, timing, memory, determinism, diagnostics, the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bench.engine.protocol
import bench.engine.step
import bench.engine.train
import bench.trial
from bench.engine.config import METRICS, ConfigError, resolve
from bench.engine.device import pick_device
from bench.engine.diagnostics import INITIAL_KEYS
from bench.engine.models import MODEL_DEFAULTS, build_model
from bench.engine.protocol import fixed_subset, intermediate_sizes
from bench.engine.sampling import make_batches
from bench.engine.train import WARMUP_STEPS, checkpoint_steps, initial_check, run_trial, scaled_lr, scheduled_lr
from losses import LOSSES

TIMINGS = ("samples_per_second", "peak_memory_mib", "elapsed_seconds", "train_seconds", "cpu_share")
TRAINING = ("planned_steps", "train_seconds", "warmup_steps", "images_per_class", "lr", "precision", "threads",
            "cpu_share")
DIAGNOSTICS = ("pinned_at_margin", "collapsed", "effective_rank", "spread", "intra_class_distance",
               "inter_class_distance")
ROOT = Path(__file__).resolve().parent.parent
MNIST_LR = MODEL_DEFAULTS["mnist-net"]["lr"]  # the trial's lr where the config leaves it None


def tiny(data_dir: Path, **changes: Any) -> dict[str, Any]:
    """A trial of a few steps on the tiny generated MNIST, evaluated on small subsets."""
    config = {
        "dataset": "mnist", "loss": "batch-all", "margin": 0.2, "batch_size": 32, "budget_samples": 300,
        "data_dir": str(data_dir), "device": "cpu", "eval_gallery": 300, "eval_queries": 100, "precision": "fp32",
    }
    return {**config, **changes}


def run(config: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    reports: list[dict[str, Any]] = []
    return run_trial(config, reports.append), reports


def recording(name: str, step_losses: list[float]) -> Any:
    """LOSSES[name], appending each training step's loss value to step_losses."""
    original = LOSSES[name]

    def loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float, check_finite: bool = True) -> torch.Tensor:
        value = original(embeddings, labels, margin, check_finite)
        step_losses.append(float(value.detach()))
        return value

    return dataclasses.replace(original, fn=loss)


def test_a_trial_reports_every_checkpoint(tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    step_losses: list[float] = []
    monkeypatch.setitem(LOSSES, "batch-all", recording("batch-all", step_losses))
    final, reports = run(tiny(tiny_data_dir))
    assert [r["checkpoint"] for r in reports] == [1, 2, 3, 4]
    assert [r["step"] for r in reports] == [3, 5, 8, 10]  # ⌈300 / 32⌉ = 10 steps, evaluated at 1/4 … 4/4
    assert [r["samples_seen"] for r in reports] == [96, 160, 256, 320]
    assert [r["warmup_steps"] for r in reports] == [0, 0, WARMUP_STEPS, WARMUP_STEPS] and WARMUP_STEPS == 5
    assert final == reports[-1] and len(step_losses) == 10  # the margin check computes no loss
    previous = 0
    for metrics in reports:  # each checkpoint's loss: the mean since the previous checkpoint
        since = step_losses[previous:metrics["step"]]
        assert metrics["loss"] == pytest.approx(sum(since) / len(since))
        previous = metrics["step"]
    for metrics in reports:
        plateau = {"plateau_val_map_at_r", "plateau_gap"} if metrics is final else set()
        assert set(METRICS) | {"checkpoint", "step", *TRAINING, *INITIAL_KEYS, *DIAGNOSTICS, *plateau} == set(metrics)
        assert metrics["status"] == "ok" and not metrics["collapsed"] and metrics["effective_rank"] > 2
        assert not metrics["pinned_at_margin"]
        if metrics is final:  # the whole test set's class distances, at the last checkpoint only
            assert 0 < metrics["intra_class_distance"] < metrics["inter_class_distance"] <= 2
        else:
            assert math.isnan(metrics["intra_class_distance"]) and math.isnan(metrics["inter_class_distance"])
        assert math.isclose(metrics["fraction_easy"] + metrics["fraction_semihard"] + metrics["fraction_hard"], 1)
        assert 0 <= metrics["mu_pos"] and 0 <= metrics["mu_neg"] <= 2  # unit embeddings
        assert 0 < metrics["cpu_share"] < 2 * metrics["threads"]
        assert metrics["samples_per_second"] > 0 and metrics["peak_memory_mib"] > 1
        assert metrics["planned_steps"] == 10 and metrics["images_per_class"] == 4  # pk: 8 classes × 4
        assert metrics["lr"] == MNIST_LR and metrics["precision"] == "fp32"
        assert metrics["threads"] == torch.get_num_threads()
        assert {key: metrics[key] for key in INITIAL_KEYS} == {key: final[key] for key in INITIAL_KEYS}
    assert math.isclose(final["initial_fraction_easy"] + final["initial_fraction_semihard"]
                        + final["initial_fraction_hard"], 1)
    assert final["initial_active_anchors"] is None and final["effective_margin"] == 0.2
    for key in ("elapsed_seconds", "train_seconds"):
        assert [r[key] for r in reports] == sorted(r[key] for r in reports)
    assert final["train_seconds"] < final["elapsed_seconds"]
    assert final["mu_neg"] > final["mu_pos"] + 0.2  # the classes moved apart


def test_the_plateau_is_read_on_the_previous_checkpoints_subsets(
    tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last checkpoint evaluates everything, and validation again on the earlier checkpoints' subsets."""
    searches: list[tuple[int, float]] = []  # (queries, MAP@R) of every search, in order
    original = bench.engine.protocol.retrieval_metrics

    def spy(*args: Any, **kwargs: Any) -> dict[str, float]:
        result = original(*args, **kwargs)
        searches.append((len(args[3]) if len(args) > 3 else len(args[0]), result["map_at_r"]))
        return result

    monkeypatch.setattr(bench.engine.protocol, "retrieval_metrics", spy)
    _, reports = run(tiny(tiny_data_dir, checkpoints=2, eval_queries=50))
    first, last = reports
    assert (first["val_queries_size"], last["val_queries_size"]) == (50, last["val_size"]) and last["val_size"] > 50
    assert last["plateau_gap"] == pytest.approx(last["plateau_val_map_at_r"] - first["val_map_at_r"])
    assert searches[-1] == (50, last["plateau_val_map_at_r"])  # a last search on 50 queries, not the whole set
    _, whole = run(tiny(tiny_data_dir, checkpoints=2, eval_gallery=0, eval_queries=0))
    assert whole[-1]["plateau_val_map_at_r"] == whole[-1]["val_map_at_r"]
    _, single = run(tiny(tiny_data_dir, checkpoints=1))
    assert math.isnan(single[0]["plateau_gap"])


def test_cosine_schedule(tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cosine: the full lr at the first update, half at mid-budget, near 0 at the last; the updates use it."""
    assert [scheduled_lr(1.0, step, 10, "cosine") for step in (0, 5)] == [1.0, pytest.approx(0.5)]
    assert 0 < scheduled_lr(1.0, 9, 10, "cosine") < 0.025 and scheduled_lr(1.0, 9, 10, "constant") == 1.0
    used: list[float] = []
    step = torch.optim.Adam.step

    def recording_step(self: torch.optim.Adam, *args: Any, **kwargs: Any) -> Any:
        used.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    run_trial(tiny(tiny_data_dir, lr_schedule="cosine", checkpoints=1))
    assert used == pytest.approx([scheduled_lr(MNIST_LR, i, 10, "cosine") for i in range(10)])
    with pytest.raises(ConfigError, match="unknown lr_schedule 'step'; valid: constant, cosine"):
        run_trial(tiny(tiny_data_dir, lr_schedule="step"))


def test_the_margin_check_changes_nothing(tiny_data_dir: Path) -> None:
    """Parameters, BatchNorm buffers and the random stream are the same before and after it; the model stays in
    training mode."""
    model = build_model("resnet18", (3, 32, 32), 16, True).to(memory_format=torch.channels_last)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    images = torch.randn(4, 8, 3, 32, 32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    rng = torch.random.get_rng_state()
    stats = initial_check(model, [(x, labels) for x in images], "batch-hard", 0.2, "fp32", torch.device("cpu"))
    assert torch.equal(torch.random.get_rng_state(), rng)
    after = model.state_dict()
    assert model.training and before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert any("running_var" in key for key in before) and 0 <= stats["initial_active_anchors"] <= 1
    assert all(parameter.grad is None for parameter in model.parameters())


def test_the_margin_check_sees_the_state_the_first_update_sees(
    tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a BatchNorm net (cifar-net, augmented), the check's first batch has the distances of the first training
    forward pass (batch statistics, not eval mode's fresh running statistics), and the model's parameters and
    buffers end bit-identical with and without the check."""
    checked: list[torch.Tensor] = []
    trained: list[torch.Tensor] = []
    models: list[torch.nn.Module] = []
    original_statistics, original_step = bench.engine.train.initial_statistics, bench.engine.train.train_step
    original_model = bench.engine.train.initial_model

    def statistics(batches: list[tuple[torch.Tensor, torch.Tensor]], *args: Any) -> dict[str, Any]:
        checked.extend(embeddings for embeddings, _ in batches)
        return original_statistics(batches, *args)

    def step(*args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings, loss = original_step(*args)
        trained.append(embeddings.detach().clone())
        return embeddings, loss

    monkeypatch.setattr(bench.engine.train, "initial_statistics", statistics)
    monkeypatch.setattr(bench.engine.train, "train_step", step)
    monkeypatch.setattr(bench.engine.train, "initial_model", lambda *a: models.append(original_model(*a)) or models[-1])
    config = tiny(tiny_data_dir, dataset="cifar10", model="cifar-net", batch_size=16, budget_samples=48,
                  checkpoints=1, eval_gallery=30, eval_queries=20)
    with_check = run_trial(config)
    torch.testing.assert_close(torch.cdist(checked[0], checked[0]), torch.cdist(trained[0], trained[0]),
                               rtol=1e-5, atol=1e-6)
    assert float(torch.pdist(checked[0]).mean()) > 0.1  # eval mode's fresh BN statistics squeeze them to ~0
    monkeypatch.setattr(bench.engine.train, "INITIAL_BATCHES", 0)
    without = run_trial(config)
    assert with_check["loss"] == without["loss"] and with_check["map_at_r"] == without["map_at_r"]
    first, second = (model.state_dict() for model in models)
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert any("running_mean" in key for key in first)


def strip(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k not in TIMINGS} for m in reports]


def test_same_seed_same_metrics_on_cpu(tiny_data_dir: Path) -> None:
    config = tiny(tiny_data_dir, loss="batch-hard", sampler="random", budget_samples=96, checkpoints=2)
    first, again = run(config)[1], run(config)[1]
    assert strip(first) == strip(again)
    other_seed = run_trial({**config, "seed": 1})
    assert other_seed["loss"] != first[-1]["loss"]


def test_a_seed_fixes_every_metric_at_a_thread_count_and_in_bf16(tiny_data_dir: Path) -> None:
    threads = torch.get_num_threads()
    config = tiny(tiny_data_dir, loss="batch-hard", precision="bf16", threads=1, budget_samples=64, checkpoints=1)
    first, again = run(config)[1], run(config)[1]
    assert strip(first) == strip(again) and first[0]["threads"] == 1 and first[0]["precision"] == "bf16"
    assert torch.get_num_threads() == threads  # restored
    fp32 = run_trial({**config, "precision": "fp32"})
    assert fp32["precision"] == "fp32" and fp32["loss"] != first[0]["loss"]  # bf16 really ran


def test_lr_scaling(tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert scaled_lr(1e-3, 64, "none", 256) == 1e-3 and scaled_lr(1e-3, 64, "linear", 256) == pytest.approx(2.5e-4)
    assert scaled_lr(1e-3, 1024, "sqrt", 256) == pytest.approx(2e-3)
    used: list[float] = []
    original = bench.engine.train.build_optimizer
    monkeypatch.setattr(bench.engine.train, "build_optimizer", lambda name, params, lr, **kw: (
        used.append(lr), original(name, params, lr, **kw))[1])
    final = run_trial(tiny(tiny_data_dir, lr_scaling="sqrt", lr_reference_batch=128, budget_samples=32, checkpoints=1))
    assert used == [pytest.approx(MNIST_LR * 0.5)] and final["lr"] == used[0]
    with pytest.raises(ConfigError, match="unknown lr_scaling 'cubic'; valid: none, sqrt, linear"):
        run_trial(tiny(tiny_data_dir, lr_scaling="cubic"))


def test_the_margin_check_sees_training_augmentations_and_changes_nothing(
    tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CIFAR-10 (augmented, BatchNorm): the check's images are training's, and training is the same without it."""
    augmented: list[torch.Tensor] = []
    original = bench.engine.step.augment
    monkeypatch.setattr(bench.engine.step, "augment", lambda x, generator: augmented.append(original(x, generator))
                        or augmented[-1])
    config = tiny(
        tiny_data_dir, dataset="cifar10", loss="batch-hard", batch_size=8, budget_samples=16, checkpoints=1,
        sampler="random", eval_gallery=30, eval_queries=20,
    )
    final = run_trial(config)
    assert final["status"] == "ok" and final["step"] == 2 and final["samples_seen"] == 16
    assert len(augmented) == 4 and all(torch.equal(augmented[i], augmented[i + 2]) for i in range(2))
    assert 0 <= final["initial_active_anchors"] <= 1
    monkeypatch.setattr(bench.engine.train, "INITIAL_BATCHES", 0)
    without = run_trial(config)
    assert math.isnan(without["effective_margin"])
    assert strip([without]) == [{**strip([final])[0], **{key: without[key] for key in INITIAL_KEYS}}]


def nan_from_call(call: int) -> Any:
    """A batch-hard loss that turns NaN from its `call`-th call on."""
    calls = []

    def loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float, check_finite: bool = True) -> torch.Tensor:
        calls.append(1)
        value = LOSSES["batch-hard"](embeddings, labels, margin, check_finite)
        return value * math.nan if len(calls) >= call else value

    return dataclasses.replace(LOSSES["semi-hard"], fn=loss)


def test_divergence_stops_at_the_next_look_and_names_the_first_bad_step(
    tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(LOSSES, "semi-hard", nan_from_call(7))
    final, reports = run(tiny(tiny_data_dir, loss="semi-hard", batch_size=16, budget_samples=320, checkpoints=2))
    assert len(reports) == 1 and final == reports[0]
    assert final["status"] == "diverged" and final["reason"] == "non-finite loss at step 7"
    assert final["step"] == 10 and final["checkpoint"] == 1  # the first checkpoint (of steps 10, 20) saw it
    assert math.isnan(final["knn_accuracy"]) and math.isnan(final["loss"])

    monkeypatch.setitem(LOSSES, "semi-hard", nan_from_call(7))
    monkeypatch.setattr(bench.engine.train, "CHECK_EVERY", 4)
    final, reports = run(tiny(tiny_data_dir, loss="semi-hard", batch_size=16, budget_samples=320, checkpoints=1))
    assert len(reports) == 1 and final["step"] == 8 and final["reason"] == "non-finite loss at step 7"


def test_collapse_to_a_point_is_detected(tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def to_one_point(embeddings: torch.Tensor, labels: torch.Tensor, margin: float, *_: Any) -> torch.Tensor:
        return (embeddings - embeddings.mean(dim=0)).square().sum(dim=1).mean()

    monkeypatch.setitem(LOSSES, "quadruplet", dataclasses.replace(LOSSES["quadruplet"], fn=to_one_point))
    final = run_trial(tiny(tiny_data_dir, loss="quadruplet", lr=1e-2, budget_samples=160, checkpoints=1))
    assert final["status"] == "collapsed" and final["collapsed"] and final["mu_neg"] < 0.02
    assert final["spread"] < 0.2 * final["initial_spread"]  # the size rule sees it, whatever the rank


class Shrinking(torch.nn.Module):
    """A net whose outputs shrink 100× per training step and are exactly 0 from the 10th step on."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.steps = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.steps += self.training
        scale = 0.0 if self.steps >= 10 else 0.01 ** max(self.steps - 1, 0)
        return self.net(x) * scale


def test_an_unnormalised_net_shrinking_to_zero_is_pinned_and_collapsed(
    tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shrunk far below the margin, every hinge stays active (pinned), and although the neighbours still hold, the
    embedding is a point against its initial size (collapsed); once the outputs coincide, the rank is 0 too. The
    old rules (chance, rank) saw no collapse until the outputs coincided."""
    original = bench.engine.train.initial_model
    monkeypatch.setattr(bench.engine.train, "initial_model",
                        lambda *args, **kwargs: Shrinking(original(*args, **kwargs)))
    final, reports = run(tiny(
        tiny_data_dir, normalize=False, batch_size=16, budget_samples=160, eval_gallery=100, eval_queries=50,
    ))
    assert [r["step"] for r in reports] == [3, 5, 8, 10]
    assert all(r["pinned_at_margin"] for r in reports[1:])  # from 1e-6 of the first step's scale on
    assert [r["status"] for r in reports] == ["collapsed"] * 4  # 1e-4 of the first step's scale at step 3
    assert reports[1]["loss"] == pytest.approx(0.2, rel=1e-3) and reports[1]["knn_accuracy"] > 0.5
    assert reports[1]["effective_rank"] > 2 and reports[1]["spread"] < 1e-3 * reports[1]["initial_spread"]
    assert final["effective_rank"] == 0 and final["collapsed"]


def test_budget_seconds_ends_training(tiny_data_dir: Path) -> None:
    final, reports = run(tiny(tiny_data_dir, budget_seconds=1e-9))
    assert len(reports) == 1 and final["step"] == 1 and final["samples_seen"] == 32 and final["status"] == "ok"
    assert final["warmup_steps"] == 0 and final["samples_per_second"] == pytest.approx(32 / final["train_seconds"])


def test_budget_steps_ends_training_at_equal_updates(tiny_data_dir: Path) -> None:
    """budget_steps caps the steps below ceil(budget_samples / B) (10 here); the CPU's intermediate evaluation sizes
    follow the samples the steps plan, not budget_samples."""
    final, reports = run(tiny(tiny_data_dir, budget_steps=4, checkpoints=2))
    assert final["planned_steps"] == 4 and final["step"] == 4 and final["samples_seen"] == 128
    assert [r["step"] for r in reports] == [2, 4]
    assert run(tiny(tiny_data_dir, budget_steps=50, checkpoints=1))[0]["planned_steps"] == 10  # samples first
    with pytest.raises(ConfigError, match="budget_steps must be >= 1, got 0"):
        resolve(tiny(tiny_data_dir, budget_steps=0))
    big = resolve({"batch_size": 256, "budget_samples": 10**7, "checkpoints": 4})
    assert intermediate_sizes(big, torch.device("cpu")) == (10_000, 10_000)
    assert intermediate_sizes({**big, "budget_steps": 100}, torch.device("cpu")) == (2133, 2133)  # 25600 / 12


def test_checkpoints_leave_training_alone_and_a_longer_pk_budget_draws_other_batches(
    tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run with 5 checkpoints in place of 2 takes the same steps, loss for loss, and ends with the same metrics:
    the evaluations draw nothing from training's random streams. A run to 2× the samples starts from the same
    initialisation but not the same batches: the pk plan draws each class's member shuffles after the class order of
    every step, so its members differ from the first step (a random plan's prefix is the same). Across budgets
    (cpu-budget against cpu-losses) a seed pairs initialisations, not batches."""
    runs: dict[str, list[float]] = {}
    finals, original = {}, LOSSES["batch-all"]
    for name, changes in (("short", {"budget_samples": 320, "checkpoints": 2}),
                          ("long", {"budget_samples": 640, "checkpoints": 4}),
                          ("often", {"budget_samples": 320, "checkpoints": 5})):
        runs[name] = []
        monkeypatch.setitem(LOSSES, "batch-all", original)  # recording wraps what LOSSES holds
        monkeypatch.setitem(LOSSES, "batch-all", recording("batch-all", runs[name]))
        finals[name], _ = run(tiny(tiny_data_dir, eval_gallery=100, eval_queries=40, **changes))
    assert len(runs["short"]) == 10 and len(runs["long"]) == 20 and runs["often"] == runs["short"]
    for key in ("map_at_r", "knn_accuracy", "val_map_at_r", "intra_class_distance"):
        assert finals["often"][key] == finals["short"][key], key
    assert runs["long"][0] != runs["short"][0]
    labels = torch.arange(1000) % 10
    plans = {(sampler, steps): make_batches(sampler, labels, 32, 4, steps, torch.Generator().manual_seed(0))
             for sampler in ("pk", "random") for steps in (10, 20)}
    assert torch.equal(plans["random", 20][:10], plans["random", 10])
    assert not torch.equal(plans["pk", 20][0], plans["pk", 10][0])
    assert torch.equal(labels[plans["pk", 20][:10]], labels[plans["pk", 10]])  # the same classes, other members


def test_evaluation_time_counts_neither_in_throughput_nor_in_the_budget(
    tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedding sleeps 1 s: 10 s of evaluation before the 6th and last step, a budget of 8 s of training."""
    original = bench.engine.train.embed
    monkeypatch.setattr(bench.engine.train, "embed", lambda *args: time.sleep(1) or original(*args))
    final, reports = run(tiny(
        tiny_data_dir, batch_size=16, budget_samples=96, checkpoints=6, budget_seconds=8, eval_gallery=50,
        eval_queries=20,
    ))
    assert len(reports) == 6 and final["step"] == 6
    assert final["elapsed_seconds"] > final["train_seconds"] + 10
    assert final["warmup_steps"] == WARMUP_STEPS
    # the steps after the warm-up at this pace take at most the training time
    assert (6 - WARMUP_STEPS) * 16 / final["samples_per_second"] <= final["train_seconds"]


def test_fixed_subset_and_checkpoint_steps() -> None:
    subset = fixed_subset(1000, 100)
    assert len(subset) == 100 and torch.equal(subset, subset.sort().values) and len(subset.unique()) == 100
    assert torch.equal(subset, fixed_subset(1000, 100)) and subset.max() > 500
    assert torch.equal(fixed_subset(10, 0), torch.arange(10)) and torch.equal(fixed_subset(10, 99), torch.arange(10))
    assert checkpoint_steps(118, 4) == [30, 59, 89, 118]
    assert checkpoint_steps(2, 4) == [1, 2] and checkpoint_steps(1, 4) == [1] and checkpoint_steps(7, 1) == [7]


def test_bad_devices_and_settings(tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        pick_device("cuda")
    with pytest.raises(ConfigError, match="valid: auto, cpu, cuda"):
        pick_device("tpu")
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'; valid: adam, adamw, sgd"):
        run_trial(tiny(tiny_data_dir, optimizer="rmsprop"))
    with pytest.raises(ConfigError, match="lr must be > 0"):
        run_trial(tiny(tiny_data_dir, lr=0.0))
    with pytest.raises(ConfigError, match="eval_gallery must be >= 0"):
        run_trial(tiny(tiny_data_dir, eval_gallery=-1))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.trial", *args], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
    )


def test_cli_prints_setup_progress_and_one_json_line_and_writes_the_record(tiny_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "records" / "trial.json"
    process = cli(
        "--dataset", "mnist", "--loss", "batch-hard", "--margin", "0.2", "--batch-size", "32",
        "--budget-samples", "64", "--data-dir", str(tiny_data_dir), "--device", "cpu", "--precision", "fp32",
        "--threads", "1", "--eval-gallery", "100", "--eval-queries", "50", "--json", "--out", str(out),
        "--model", "mnist-net", env={"OMP_NUM_THREADS": "2"},  # the process's count, unlike the trial's
    )
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert set(METRICS) <= set(metrics) and metrics["samples_seen"] == 64 and metrics["status"] == "ok"
    assert set(INITIAL_KEYS) <= set(metrics) and metrics["threads"] == 1
    first = stderr.splitlines()[0]
    for part in ("trial: dataset mnist", "model mnist-net", f"lr {MNIST_LR}", "precision fp32", "device cpu",
                 "threads 1", "steps 2", "eval gallery 100", "eval queries 50"):
        assert part in first, first
    assert "step 1/2 (50%)" in stderr and "s of training left" in stderr
    assert "checkpoint 2: step 2, 64 samples" in stderr and "Traceback" not in stderr  # 2 steps: 2 checkpoints
    record = json.loads(out.read_text())
    assert record["final"] == metrics and len(record["history"]) == 2 and record["status"] == "ok"
    assert record["config"]["threads"] == 1 and record["provenance"]["command"].startswith("python -m bench.trial")
    assert record["provenance"]["hardware"].endswith("(1 thread)")  # what the trial ran with
    assert record["initial"] == {key.removeprefix("initial_"): metrics[key] for key in INITIAL_KEYS}


BAD_INPUTS = {
    "unknown dataset 'svhn'; valid: mnist, cifar10": {"--dataset": "svhn"},
    "unknown loss 'contrastive'; valid: batch-all, batch-hard, adaptive-mu, quadruplet, semi-hard":
        {"--loss": "contrastive"},
    "unknown sampler 'balanced'; valid: random, pk": {"--sampler": "balanced"},
    "batch_size must be >= 2, got 1": {"--batch-size": "1"},
    "batch_size 30 is not a multiple of samples_per_class 4": {"--batch-size": "30"},
    "batch_size 36 is not a multiple of samples_per_class 8": {"--batch-size": "36", "--samples-per-class": "8"},
    "batch_size 4 with samples_per_class 4 gives 1 class per batch; batch-hard needs at least 2 for a valid triplet "
    "(batch_size >= 8)": {"--batch-size": "4"},
    "gives 2 classes per batch; quadruplet needs at least 3 for a valid quadruplet": {"--batch-size": "8",
                                                                                      "--loss": "quadruplet"},
    "margin must be >= 0, got -0.5": {"--margin": "-0.5"},
    "budget_samples must be > 0, got 0": {"--budget-samples": "0"},
    "budget_samples must be > 0, got -5": {"--budget-samples": "-5"},
    "budget_seconds must be > 0, got 0.0": {"--budget-seconds": "0"},
    "no mnist.npz and no torchvision MNIST/raw/ folder in {empty} (resolved: {empty}); to fetch it, re-run with "
    "TRIPLETBENCH_DOWNLOAD=1": {"--data-dir": "{empty}"},
    "mnist.npz is not a readable .npz file": {"--data-dir": "{corrupt}"},
    "unknown optimizer 'rmsprop'; valid: adam, adamw, sgd": {"--optimizer": "rmsprop"},
    "argument --margin: invalid float value: 'abc'": {"--margin": "abc"},
    "unknown lr_scaling 'cubic'; valid: none, sqrt, linear": {"--lr-scaling": "cubic"},
    "lr_reference_batch must be > 0, got 0": {"--lr-reference-batch": "0"},
    "unknown precision 'fp16'; valid: auto, fp32, bf16": {"--precision": "fp16"},
    "threads must be >= 1, got 0": {"--threads": "0"},
    "unknown model 'vgg'; valid: mnist-net, resnet18, cifar-net": {"--model": "vgg"},
    "--out {corrupt} is a folder; give the path of a .json file": {"--out": "{corrupt}"},
    "the following arguments are required: --loss": {"--loss": None},
}
SUBPROCESS_CASES = ("unknown loss", "no mnist.npz", "invalid float value")


@pytest.fixture
def bad_input_argv(tiny_data_dir: Path, tmp_path: Path) -> dict[str, list[str]]:
    """Per expected error message, the CLI arguments that must produce it."""
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "mnist.npz").write_bytes(b"PK\x03\x04 garbage")
    folders = {"empty": str(tmp_path / "empty"), "corrupt": str(tmp_path / "corrupt")}
    good = {"--dataset": "mnist", "--loss": "batch-hard", "--margin": "0.2", "--batch-size": "32",
            "--budget-samples": "64", "--data-dir": str(tiny_data_dir), "--device": "cpu",
            "--out": str(tmp_path / "record.json")}
    cases = {}
    for message, change in BAD_INPUTS.items():
        args = {**good, **{key: value and value.format(**folders) for key, value in change.items()}}
        cases[message.format(**folders)] = [token for key, value in args.items() if value for token in (key, value)]
    return cases


def test_cli_bad_input_is_exit_2_and_one_line(
    bad_input_argv: dict[str, list[str]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for message, argv in bad_input_argv.items():
        try:
            code = bench.trial.main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
        out, err = capsys.readouterr()
        assert code == 2 and out == "", (message, err)
        assert err.endswith("\n") and err.count("\n") == 1 and message in err and "error:" in err, (message, err)
        assert not (tmp_path / "record.json").exists()


def test_cli_bad_input_in_a_process(bad_input_argv: dict[str, list[str]]) -> None:
    """The same at the process level, for one bad config, one bad data folder and one bad argument."""
    processes = {
        message: cli(*argv)
        for message, argv in bad_input_argv.items() if any(case in message for case in SUBPROCESS_CASES)
    }
    assert len(processes) == 3
    for message, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 2 and stdout == "" and "Traceback" not in stderr, (message, stderr)
        assert stderr.count("\n") == 1 and message in stderr


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_cpu_share_falls_when_another_process_shares_the_trials_core(tiny_data_dir: Path, tmp_path: Path) -> None:
    """cpu_share on the case it exists to catch: a 1-thread trial pinned to one core beside a busy loop pinned to
    the same core gets about half of that core, far below the report's bench.engine.train.QUIET_SHARE."""
    core = min(os.sched_getaffinity(0))
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(hog.pid, {core})  # pinned from outside: no preexec_fn in a threaded pytest process
        trial = cli("--dataset", "mnist", "--loss", "batch-all", "--margin", "0.2", "--batch-size", "32",
                    "--budget-samples", "1024", "--checkpoints", "1", "--data-dir", str(tiny_data_dir), "--device",
                    "cpu", "--precision", "fp32", "--threads", "1", "--json", "--out", str(tmp_path / "trial.json"))
        os.sched_setaffinity(trial.pid, {core})  # before torch is even imported; its threads inherit it
        stdout, stderr = trial.communicate(timeout=600)
    finally:
        hog.kill()
        hog.wait()
    assert trial.returncode == 0, stderr
    metrics = json.loads(stdout)
    assert metrics["threads"] == 1 and metrics["step"] == 32 and 0 < metrics["cpu_share"] < 0.75, metrics


def allocating(function: Any, mib: int) -> Any:
    """`function`, allocating, touching and freeing `mib` MiB on each call."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        block = torch.ones(mib * 2**20, dtype=torch.uint8)
        assert int(block[:: 2**12].sum()) == mib * 2**8
        del block
        return function(*args, **kwargs)

    return wrapped


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="VmHWM reset needs Linux /proc")
def test_cpu_peak_memory_is_the_training_peak(tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It counts what a training step allocates, and neither the evaluation nor earlier work in the process."""
    earlier_peak_mib = 1500
    block = np.ones(earlier_peak_mib * 2**20, dtype=np.uint8)  # touched pages: RSS really rises
    assert block.sum() == block.size
    del block
    config = tiny(tiny_data_dir, batch_size=16, budget_samples=32, checkpoints=1, eval_gallery=50, eval_queries=20)
    plain = run_trial(config)["peak_memory_mib"]
    assert 1 < plain < earlier_peak_mib
    monkeypatch.setattr(bench.engine.train, "embed", allocating(bench.engine.train.embed, 300))
    assert run_trial(config)["peak_memory_mib"] < plain + 100  # evaluation is left out
    monkeypatch.setitem(LOSSES, "batch-all", dataclasses.replace(LOSSES["batch-all"],
                                                                 fn=allocating(LOSSES["batch-all"].fn, 320)))
    assert run_trial(config)["peak_memory_mib"] >= plain + 300  # a training step's peak counts


def test_cli_smoke_runs_on_generated_data(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert bench.trial.main(["--smoke", "--loss", "quadruplet", "--device", "cpu", "--json"]) == 0
    out, err = capsys.readouterr()
    metrics = json.loads(out)
    assert metrics["samples_seen"] == 256 and metrics["checkpoint"] == 2 and metrics["status"] == "ok"
    assert "checkpoint 2: step 8, 256 samples" in err
    records = list((tmp_path / "results" / "trials").glob("mnist-quadruplet-m0.2-b32-seed0-*.json"))
    assert len(records) == 1 and f"record: {records[0].relative_to(tmp_path)}" in err
    record = json.loads(records[0].read_text())
    assert record["final"] == metrics and [m["checkpoint"] for m in record["history"]] == [1, 2]
    assert record["initial"]["active_anchors"] is None and record["initial"]["effective_margin"] > 0.2
    with pytest.raises(SystemExit) as exit_:
        bench.trial.main(["--dataset", "mnist", "--loss", "batch-all"])
    assert exit_.value.code == 2
    assert "required: --margin, --batch-size, --budget-samples" in capsys.readouterr().err
