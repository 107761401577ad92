"""The isolated training-step benchmark: its smoke run end to end, the step it times, and bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench.engine.step
from bench.experiment.presets import load_preset
from bench.step_benchmark import COLUMNS, SMOKE, load_data, main, make_point, make_step, measure_step

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder a --smoke run wrote into, with both precisions; it held a file that must survive."""
    out = tmp_path_factory.mktemp("reports")
    (out / "other.md").write_text("not the benchmark's")
    assert main(["--smoke", "--precision", "both", "--out", str(out)]) == 0
    return out


def test_smoke_writes_one_row_per_dataset_loss_batch_and_precision(smoke_out: Path) -> None:
    assert {path.name for path in smoke_out.iterdir()} == {"other.md", "step_benchmark.csv", "step_benchmark.md",
                                                           "step_benchmark.json"}
    with open(smoke_out / "step_benchmark.csv") as file:
        rows = list(csv.DictReader(file))
    grid = load_preset(SMOKE["preset"])
    expected = {(d, loss, str(b), p) for d in grid.axes["dataset"] for loss in grid.axes["loss"]
                for b in SMOKE["batch_sizes"] for p in ("fp32", "bf16")}
    assert list(rows[0]) == list(COLUMNS)
    assert {(r["dataset"], r["loss"], r["batch_size"], r["precision"]) for r in rows} == expected
    assert len(rows) == len(expected)
    for row in rows:
        assert row["status"] == "ok", row
        assert float(row["median_ms"]) > 0 and float(row["peak_memory_mib"]) >= 0
        assert float(row["samples_per_second"]) == pytest.approx(
            int(row["batch_size"]) / float(row["median_ms"]) * 1000, rel=1e-4)
        assert (row["steps"], row["warmup"]) == (str(SMOKE["steps"]), str(SMOKE["warmup"]))
    assert {r["model"] for r in rows if r["dataset"] == "cifar10"} == {"cifar-net"}
    report = (smoke_out / "step_benchmark.md").read_text()
    for needle in ("git_commit", "hardware", "torch", "threads", "## mnist", "## cifar10", "--smoke"):
        assert needle in report
    meta = json.loads((smoke_out / "step_benchmark.json").read_text())
    assert (meta["steps"], meta["warmup"], meta["preset"]) == (SMOKE["steps"], SMOKE["warmup"], SMOKE["preset"])
    for key in ("date", "git_commit", "hardware", "device", "torch", "threads", "command"):
        assert meta[key] not in ("", None), key


def test_the_step_trains_the_model_on_the_plan(tiny_data_dir: Path) -> None:
    """Every call is a full optimiser step: the parameters move, and the loss is the batch's loss."""
    cfg = {"dataset": "cifar10", "model": "cifar-net", "loss": "batch-all", "margin": 0.2, "batch_size": 16,
           "precision": "fp32"}
    data = load_data("cifar10", tiny_data_dir, torch.device("cpu"))
    point = make_point(cfg, "fp32")
    step, model = make_step(point.cfg, data, torch.device("cpu"), "fp32")
    before = [p.detach().clone() for p in model.parameters()]
    losses = [float(step(i)) for i in range(3)]
    assert all(loss > 0 for loss in losses)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_peak_memory_counts_the_steps_allocations(tiny_data_dir: Path) -> None:
    """A bigger batch needs more activation memory: the measured peak grows with it."""
    data = load_data("mnist", tiny_data_dir, torch.device("cpu"))
    peaks = []
    for batch_size in (256, 8, 256):  # the second 256 after the first freed its memory: still counted
        point = make_point({"dataset": "mnist", "loss": "batch-hard", "margin": 0.2, "batch_size": batch_size}, "fp32")
        row = measure_step(point, data, torch.device("cpu"), steps=2, warmup=1)
        assert row["status"] == "ok"
        peaks.append(row["peak_memory_mib"])
    # the first conv's output alone: 256 × 64 × 28 × 28 floats = 49 MiB; without malloc_trim the repeat read
    # two thirds of the first (319 → 214 MiB), with it 72-88% (the first also starts the thread pools)
    assert peaks[0] > peaks[1] + 20 and peaks[2] > peaks[1] + 20 and peaks[2] > 0.6 * peaks[0], peaks


def test_a_failing_point_is_a_row_not_the_end(tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = load_data("mnist", tiny_data_dir, torch.device("cpu"))
    point = make_point({"dataset": "mnist", "loss": "batch-all", "margin": 0.2, "batch_size": 16}, "fp32")

    def fails(error: Exception):
        def loss(*args, **kwargs):
            raise error
        return loss

    for error, status in ((MemoryError("no room"), "OOM"), (RuntimeError("broken\nsecond line"), "error")):
        monkeypatch.setitem(bench.engine.step.LOSSES, "batch-all", fails(error))
        row = measure_step(point, data, torch.device("cpu"), steps=1, warmup=0)
        assert row["status"] == status and "\n" not in row["note"] and type(error).__name__ in row["note"]


@pytest.mark.parametrize("args,message", [
    (["--compile", "fast"], "--compile 'fast'"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--steps", "0"], "need --steps >= 1"),
    (["--smoke", "--preset", "paper"], "drop --preset paper"),
    (["--preset", "cpu-quick", "--data-dir", "/nonexistent"], "no mnist.npz"),
])
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "bench.step_benchmark", *args, "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()
