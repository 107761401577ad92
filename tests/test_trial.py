"""Whole trials on tiny generated data: checkpoints, metrics, determinism, divergence, collapse, the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bench.trial
from bench.config import METRICS, ConfigError
from bench.protocol import fixed_subset
from bench.trial import checkpoint_steps, pick_device, run_trial, spread
from losses import LOSSES

TIMINGS = ("samples_per_second", "peak_memory_mib", "elapsed_seconds")
ROOT = Path(__file__).resolve().parent.parent


def tiny(data_dir: Path, **changes: Any) -> dict[str, Any]:
    """A trial of a few steps on the tiny generated MNIST, evaluated on small subsets."""
    config = {
        "dataset": "mnist", "loss": "batch-all", "margin": 0.2, "batch_size": 32, "budget_samples": 300,
        "data_dir": str(data_dir), "device": "cpu", "eval_gallery": 300, "eval_queries": 100,
    }
    return {**config, **changes}


def run(config: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    reports: list[dict[str, Any]] = []
    return run_trial(config, reports.append), reports


def test_a_trial_reports_every_checkpoint(tiny_data_dir: Path) -> None:
    final, reports = run(tiny(tiny_data_dir))
    assert [r["checkpoint"] for r in reports] == [1, 2, 3, 4]
    assert [r["step"] for r in reports] == [3, 5, 8, 10]  # ⌈300 / 32⌉ = 10 steps, evaluated at 1/4 … 4/4
    assert [r["samples_seen"] for r in reports] == [96, 160, 256, 320]
    assert final == reports[-1]
    for metrics in reports:
        assert set(METRICS) | {"checkpoint", "step"} == set(metrics)
        assert metrics["status"] == "ok"
        assert math.isclose(metrics["fraction_easy"] + metrics["fraction_semihard"] + metrics["fraction_hard"], 1)
        assert 0 <= metrics["mu_pos"] and 0 <= metrics["mu_neg"] <= 2  # unit embeddings
        assert metrics["samples_per_second"] > 0 and metrics["peak_memory_mib"] > 10
    assert [r["elapsed_seconds"] for r in reports] == sorted(r["elapsed_seconds"] for r in reports)
    assert final["mu_neg"] > final["mu_pos"] + 0.2  # the classes moved apart


def test_same_seed_same_metrics_on_cpu(tiny_data_dir: Path) -> None:
    config = tiny(tiny_data_dir, loss="batch-hard", sampler="random", budget_samples=96, checkpoints=2)
    first, again = run(config)[1], run(config)[1]
    strip = [{k: v for k, v in m.items() if k not in TIMINGS} for m in first]
    assert strip == [{k: v for k, v in m.items() if k not in TIMINGS} for m in again]
    other_seed = run_trial({**config, "seed": 1})
    assert other_seed["loss"] != first[-1]["loss"]


def nan_from_call(call: int) -> Any:
    """A batch-hard loss that turns NaN from its `call`-th call on."""
    calls = []

    def loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float, check_finite: bool = True) -> torch.Tensor:
        calls.append(1)
        value = LOSSES["batch-hard"](embeddings, labels, margin, check_finite)
        return value * math.nan if len(calls) >= call else value

    return loss


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
    monkeypatch.setattr(bench.trial, "CHECK_EVERY", 4)
    final, reports = run(tiny(tiny_data_dir, loss="semi-hard", batch_size=16, budget_samples=320, checkpoints=1))
    assert len(reports) == 1 and final["step"] == 8 and final["reason"] == "non-finite loss at step 7"


def test_collapse_is_detected(tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def to_one_point(embeddings: torch.Tensor, labels: torch.Tensor, margin: float, **_: Any) -> torch.Tensor:
        return (embeddings - embeddings.mean(dim=0)).square().sum(dim=1).mean()

    monkeypatch.setitem(LOSSES, "quadruplet", to_one_point)
    final = run_trial(tiny(tiny_data_dir, loss="quadruplet", lr=1e-2, budget_samples=160, checkpoints=1))
    assert final["status"] == "collapsed" and final["mu_neg"] < 0.02


def test_spread() -> None:
    assert spread(torch.ones(5, 3)) == 0
    points = torch.nn.functional.normalize(torch.randn(2000, 16), dim=1)
    assert spread(points) == pytest.approx(1, abs=0.02)
    assert spread(points * 0.001 + torch.tensor([1.0] + [0.0] * 15)) < 0.01


def test_budget_seconds_ends_training(tiny_data_dir: Path) -> None:
    final, reports = run(tiny(tiny_data_dir, budget_seconds=1e-9))
    assert len(reports) == 1 and final["step"] == 1 and final["samples_seen"] == 32 and final["status"] == "ok"


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


def test_cli_prints_progress_and_one_json_line(tiny_data_dir: Path) -> None:
    process = cli(
        "--dataset", "mnist", "--loss", "batch-hard", "--margin", "0.2", "--batch-size", "32",
        "--budget-samples", "64", "--data-dir", str(tiny_data_dir), "--device", "cpu",
        "--eval-gallery", "100", "--eval-queries", "50", "--json",
    )
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert set(METRICS) <= set(metrics) and metrics["samples_seen"] == 64 and metrics["status"] == "ok"
    assert "checkpoint 2: step 2, 64 samples" in stderr and "Traceback" not in stderr  # 2 steps: 2 checkpoints


BAD_INPUTS = {
    "unknown dataset 'svhn'; valid: mnist, cifar10": {"--dataset": "svhn"},
    "unknown loss 'contrastive'; valid: batch-all, batch-hard, adaptive-mu, quadruplet, semi-hard":
        {"--loss": "contrastive"},
    "unknown sampler 'balanced'; valid: random, pk": {"--sampler": "balanced"},
    "batch_size must be >= 2, got 1": {"--batch-size": "1"},
    "batch_size 30 is not a multiple of samples_per_class 4": {"--batch-size": "30"},
    "batch_size 36 is not a multiple of samples_per_class 8": {"--batch-size": "36", "--samples-per-class": "8"},
    "margin must be >= 0, got -0.5": {"--margin": "-0.5"},
    "budget_samples must be > 0, got 0": {"--budget-samples": "0"},
    "budget_samples must be > 0, got -5": {"--budget-samples": "-5"},
    "budget_seconds must be > 0, got 0.0": {"--budget-seconds": "0"},
    "no mnist.npz, torchvision folder not found (Dataset not found. You can use download=True to download it); "
    "mnist is read from {empty}/ as mnist.npz": {"--data-dir": "{empty}"},
    "mnist.npz is not a readable .npz file": {"--data-dir": "{corrupt}"},
    "unknown optimizer 'rmsprop'; valid: adam, adamw, sgd": {"--optimizer": "rmsprop"},
    "argument --margin: invalid float value: 'abc'": {"--margin": "abc"},
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
            "--budget-samples": "64", "--data-dir": str(tiny_data_dir), "--device": "cpu"}
    cases = {}
    for message, change in BAD_INPUTS.items():
        args = {**good, **{key: value and value.format(**folders) for key, value in change.items()}}
        cases[message.format(**folders)] = [token for key, value in args.items() if value for token in (key, value)]
    return cases


def test_cli_bad_input_is_exit_2_and_one_line(
    bad_input_argv: dict[str, list[str]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIPLETBENCH_OFFLINE", "1")
    for message, argv in bad_input_argv.items():
        try:
            code = bench.trial.main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
        out, err = capsys.readouterr()
        assert code == 2 and out == "", (message, err)
        assert err.endswith("\n") and err.count("\n") == 1 and message in err and "error:" in err, (message, err)


def test_cli_bad_input_in_a_process(bad_input_argv: dict[str, list[str]]) -> None:
    """The same at the process level, for one bad config, one bad data folder and one bad argument."""
    processes = {
        message: cli(*argv, env={"TRIPLETBENCH_OFFLINE": "1"})
        for message, argv in bad_input_argv.items() if any(case in message for case in SUBPROCESS_CASES)
    }
    assert len(processes) == 3
    for message, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 2 and stdout == "" and "Traceback" not in stderr, (message, stderr)
        assert stderr.count("\n") == 1 and message in stderr


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="VmHWM reset needs Linux /proc")
def test_cpu_peak_memory_is_the_trials_own(tiny_data_dir: Path) -> None:
    """A trial's peak_memory_mib does not inherit a larger peak from earlier work in the same process."""
    earlier_peak_mib = 1500
    block = np.ones(earlier_peak_mib * 2**20, dtype=np.uint8)  # touched pages: RSS really rises
    assert block.sum() == block.size
    del block
    final, _ = run(tiny(tiny_data_dir, budget_samples=64, checkpoints=1))
    assert 10 < final["peak_memory_mib"] < earlier_peak_mib


def test_cli_smoke_runs_on_generated_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.trial.main(["--smoke", "--loss", "quadruplet", "--device", "cpu", "--json"]) == 0
    out, err = capsys.readouterr()
    metrics = json.loads(out)
    assert metrics["samples_seen"] == 256 and metrics["checkpoint"] == 2 and metrics["status"] == "ok"
    assert "checkpoint 2: step 8, 256 samples" in err
    with pytest.raises(SystemExit) as exit_:
        bench.trial.main(["--dataset", "mnist", "--loss", "batch-all"])
    assert exit_.value.code == 2
    assert "required: --margin, --batch-size, --budget-samples" in capsys.readouterr().err
