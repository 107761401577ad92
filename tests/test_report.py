"""bench.report on generated results with known values: statistics, best margin, failures shown, files, bad folders."""

import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.config import DEFAULTS, METRICS
from bench.report import best_cells, build_report, load_records, main, summarize

ROOT = Path(__file__).resolve().parent.parent
PLOTS = ("knn_vs_margin", "knn_vs_batch_size", "knn_vs_samples_seen", "knn_vs_elapsed_seconds",
         "samples_per_second_vs_batch_size", "peak_memory_vs_batch_size", "triplet_fractions", "tsne")

# (loss, margin, batch_size) -> per seed 0, 1, ...: (status, final knn_accuracy, checkpoints reached)
GRID = {
    ("batch-hard", 0.1, 8): [("ok", 0.5, 2), ("ok", 0.5, 2), ("ok", 0.875, 2)],  # mean 0.625 ≠ median
    ("batch-hard", 0.2, 8): [("ok", 0.875, 2), ("ok", 0.625, 2)],  # best batch-hard: mean 0.75
    ("batch-hard", 0.1, 16): [("OOM", None, 0), ("OOM", None, 0)],
    ("batch-hard", 0.2, 16): [("ok", 0.5, 2), ("diverged", math.nan, 2)],
    ("batch-all", 0.1, 8): [("ok", 0.75, 2), ("ok", 0.875, 2)],  # mean 0.8125, ties with 0.2 / 8
    ("batch-all", 0.2, 8): [("ok", 0.8125, 2), ("ok", 0.8125, 2)],
    ("batch-all", 0.1, 16): [("error", None, 1), ("error", None, 0)],
    ("batch-all", 0.2, 16): [("collapsed", 0.25, 2), ("ok", 0.5, 2)],  # collapsed counts: mean 0.375
}
TINY = {("batch-hard", 0.2, 8): [("ok", 0.5, 2)]}  # a second experiment with a single trial
EASY = {0.1: 0.75, 0.2: 0.25}  # first-checkpoint fraction_easy per margin: 0.1 is flagged


def _checkpoint(index: int, batch_size: int, margin: float, seed: int, knn: float, status: str) -> dict:
    metrics = {name: 0.5 for name in METRICS}
    metrics.update(
        checkpoint=index, step=4 * index, knn_accuracy=knn, samples_seen=4 * index * batch_size,
        elapsed_seconds=index + seed / 10, samples_per_second=100.0 * batch_size, peak_memory_mib=10.0 * batch_size,
        fraction_easy=EASY[margin] if index == 1 else 0.1, fraction_semihard=0.2, fraction_hard=0.3, status=status,
    )
    return metrics


def _write_record(records: Path, experiment: str, loss: str, margin: float, batch_size: int, seed: int,
                  status: str, knn: float | None, reached: int, embeddings: bool) -> None:
    config = {**DEFAULTS, "dataset": "mnist", "loss": loss, "margin": margin, "batch_size": batch_size, "seed": seed}
    trial_id = f"{loss}-{margin}-{batch_size}-{seed}"
    history = [_checkpoint(i, batch_size, margin, seed, 0.25 if i < reached else knn, "ok")
               for i in range(1, reached + 1)]
    if history:
        history[-1]["status"] = status
    if embeddings:
        rng = np.random.default_rng(seed)
        np.savez(records / f"{trial_id}.npz", embeddings=rng.normal(size=(40, 8)).astype(np.float16),
                 labels=np.arange(40) % 4)
    record = {
        "trial_id": trial_id, "experiment": experiment, "preset": "test", "config": config, "status": status,
        "reason": None if status == "ok" else f"{status} on purpose", "history": history,
        "final": history[-1] if history else {},
        "provenance": {"date": f"2025-01-0{seed + 1}T00:00:00Z", "git_commit": "abc123", "hardware": "Test CPU",
                       "device": "cpu", "python": "3.11", "torch": "2.5.0", "torchvision": "0.20", "ray": None,
                       "numpy": "2.0", "command": "make ablation PRESET=test"},
        "embeddings": f"{trial_id}.npz" if embeddings else None,
    }
    (records / f"{trial_id}.json").write_text(json.dumps(record))  # NaN is written as NaN


def make_results(root: Path, experiment: str = "test", grid: dict = GRID) -> Path:
    """An experiment folder root/experiment with grid.json and one record per (cell, seed) of `grid`."""
    records = root / experiment / "records"
    records.mkdir(parents=True)
    axes = {"dataset": ["mnist"], "loss": sorted({k[0] for k in grid}), "margin": sorted({k[1] for k in grid}),
            "batch_size": sorted({k[2] for k in grid}), "seed": list(range(max(map(len, grid.values()))))}
    (root / experiment / "grid.json").write_text(json.dumps({"preset": "test", "experiment": experiment,
                                                             "axes": axes, "fixed": {}}))
    for (loss, margin, batch_size), seeds in grid.items():
        for seed, (status, knn, reached) in enumerate(seeds):
            _write_record(records, experiment, loss, margin, batch_size, seed, status, knn, reached, seed == 0)
    return root / experiment


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    experiment = make_results(tmp_path_factory.mktemp("results"))
    record = experiment / "records" / "batch-all-0.2-8-1.json"  # a first batch without a valid triplet
    data = json.loads(record.read_text())
    data["history"][0]["fraction_easy"] = math.nan
    record.write_text(json.dumps(data))
    make_results(experiment.parent, "tiny", TINY)
    return experiment.parent


@pytest.fixture(scope="module")
def reports(results: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    reports = tmp_path_factory.mktemp("reports")
    assert main(["--results", str(results), "--reports", str(reports)]) == 0
    return reports


def _cell(summary: pd.DataFrame, loss: str, margin: float, batch_size: int) -> pd.Series:
    rows = summary[(summary.loss == loss) & (summary.margin == margin) & (summary.batch_size == batch_size)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_means_stds_and_counts(results: Path) -> None:
    summary = summarize(load_records(results))
    assert len(summary) == len(GRID) + len(TINY)
    summary = summary[summary.experiment == "test"]
    cell = _cell(summary, "batch-hard", 0.1, 8)
    assert (cell.n_seeds, cell.n_valid, cell.n_ok) == (3, 3, 3)
    assert cell.knn_accuracy_mean == 0.625
    assert cell.knn_accuracy_std == pytest.approx(statistics.stdev([0.5, 0.5, 0.875]), rel=1e-12)
    assert cell.samples_per_second_mean == 800.0 and cell.peak_memory_mib_mean == 80.0
    assert cell.fraction_easy_first_mean == 0.75
    one = _cell(summary, "batch-hard", 0.2, 16)  # a diverged seed is counted, not averaged
    assert (one.n_seeds, one.n_valid, one.n_ok, one.n_diverged) == (2, 1, 1, 1)
    assert one.knn_accuracy_mean == 0.5 and math.isnan(one.knn_accuracy_std)
    oom = _cell(summary, "batch-hard", 0.1, 16)
    assert (oom.n_seeds, oom.n_valid, oom.n_oom) == (2, 0, 2) and math.isnan(oom.knn_accuracy_mean)
    collapsed = _cell(summary, "batch-all", 0.2, 16)
    assert (collapsed.n_valid, collapsed.n_collapsed) == (2, 1) and collapsed.knn_accuracy_mean == 0.375
    error = _cell(summary, "batch-all", 0.1, 16)
    assert (error.n_error, error.n_valid) == (2, 0) and error.fraction_easy_first_mean == 0.75


def test_best_margin(results: Path) -> None:
    best = best_cells(summarize(load_records(results / "test"))).set_index("loss")
    assert (best.loc["batch-hard", "margin"], best.loc["batch-hard", "batch_size"]) == (0.2, 8)
    assert best.loc["batch-hard", "knn_accuracy_mean"] == 0.75
    assert (best.loc["batch-all", "margin"], best.loc["batch-all", "batch_size"]) == (0.1, 8)  # tie: smaller margin


def test_tables_show_failures_provenance_and_margin_check(reports: Path) -> None:
    markdown = (reports / "summary.md").read_text()
    assert "| mnist | batch-hard | 0.2 | 8 | 0.7500 ± 0.1768 (n=2) |" in markdown  # headline
    assert "| mnist | batch-hard | 0.1 | 16 | 2 OOM |" in markdown  # failed cells shown, not dropped
    assert "| 2 error |" in markdown and "1 ok, 1 diverged" in markdown and "1 ok, 1 collapsed" in markdown
    assert "| 0.5000 ± – |" in markdown  # a single trial has no std
    assert "| mnist | batch-all | 0.1 | 0.750 | 3 | > 50% easy |" in markdown  # one error trial has no checkpoint
    assert "| mnist | batch-hard | 0.1 | 0.750 | 3 | > 50% easy |" in markdown
    assert "| mnist | batch-all | 0.2 | 0.250 | 3 | ok |" in markdown  # a NaN fraction is skipped
    assert "| diverged | diverged on purpose |" in markdown
    for fact in ("2025-01-01T00:00:00Z to 2025-01-03T00:00:00Z", "abc123", "Test CPU", "2.5.0",
                 "mnist: 30000 samples, no time limit", "make ablation PRESET=test",
                 "17 of 24 in the grid: 11 ok, 1 diverged, 1 collapsed, 2 OOM, 2 error"):
        assert fact in markdown
    tex = (reports / "summary.tex").read_text()
    assert r"0.7500 $\pm$ 0.1768 (n=2)" in tex and "2 OOM" in tex and r"\includegraphics" in tex
    text = [line for line in tex.splitlines() if not line.startswith(r"\includegraphics")]
    assert not re.search(r"(?<!\\)[_%#]", "\n".join(text))  # escaped, e.g. knn\_vs\_margin.png in a note
    assert tex.count(r"\begin{longtable}") == tex.count(r"\end{longtable}") == 4 + 3  # tiny: no failures


def test_every_plot_is_written(reports: Path) -> None:
    for name in PLOTS:
        path = reports / "plots" / "test" / f"{name}.png"
        assert path.stat().st_size > 1000, name
        assert f"](plots/test/{name}.png)" in (reports / "summary.md").read_text()


def test_csv_is_byte_identical_and_sorted(results: Path, reports: Path, tmp_path: Path) -> None:
    build_report(results, tmp_path)
    assert (tmp_path / "summary.csv").read_bytes() == (reports / "summary.csv").read_bytes()
    csv = pd.read_csv(reports / "summary.csv")
    assert list(csv.experiment) == ["test"] * len(GRID) + ["tiny"]
    csv = csv[csv.experiment == "test"]
    assert list(csv[["loss", "margin", "batch_size"]].itertuples(index=False, name=None)) == sorted(GRID)
    for column in ("experiment", "dataset", "n_seeds", "knn_accuracy_mean", "knn_accuracy_std", "precision_at_1_mean",
                   "map_at_r_mean", "samples_per_second_mean", "peak_memory_mib_mean", "fraction_easy_first_mean",
                   "n_ok", "n_oom", "n_diverged", "n_collapsed", "n_error"):
        assert column in csv.columns


def test_one_experiment_folder(results: Path) -> None:
    frame = load_records(results / "tiny")
    assert set(frame.experiment) == {"tiny"} and list(frame.checkpoint) == [1, 2]


def test_second_experiment_and_skipped_plots_are_named(reports: Path) -> None:
    markdown = (reports / "summary.md").read_text()
    tiny = markdown[markdown.index("## Experiment tiny"):]
    assert "1 of 1 in the grid: 1 ok" in tiny
    assert "knn_vs_margin.png: a single margin (0.2) in the grid" in tiny
    assert "knn_vs_batch_size.png: a single batch_size (8) in the grid" in tiny
    assert "not made" not in markdown[:markdown.index("## Experiment tiny")]
    assert (reports / "plots" / "tiny" / "knn_vs_samples_seen.png").stat().st_size > 0
    assert not (reports / "plots" / "tiny" / "knn_vs_margin.png").exists()
    assert "\ntiny,mnist,batch-hard,0.2,8,1,1,0.500000,,0.500000," in (reports / "summary.csv").read_text()


def _partial(folder: Path) -> Path:
    make_results(folder, "x", {("batch-hard", 0.2, 8): [("ok", 0.5, 2)]})
    record = next((folder / "x" / "records").glob("*.json"))
    record.write_text(record.read_text()[:200])
    return folder


def _lacking_metrics(folder: Path) -> Path:
    make_results(folder, "x", {("batch-hard", 0.2, 8): [("ok", 0.5, 2)]})
    record = next((folder / "x" / "records").glob("*.json"))
    data = json.loads(record.read_text())
    del data["history"][0]["knn_accuracy"]
    record.write_text(json.dumps(data))
    return folder


def _foreign(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("hello")
    (folder / "sub" / "data.json").write_text("{}")
    return folder


def _no_records(folder: Path) -> Path:
    (folder / "x" / "records").mkdir(parents=True)
    (folder / "x" / "grid.json").write_text(json.dumps({"axes": {"seed": [0]}}))
    return folder


def _foreign_record(folder: Path) -> Path:
    (folder / "records").mkdir(parents=True)
    (folder / "grid.json").write_text(json.dumps({"axes": {"seed": [0]}}))
    (folder / "records" / "other.json").write_text(json.dumps({"name": "not a trial"}))
    return folder


@pytest.mark.parametrize("make, message", [
    (lambda folder: folder / "missing", "no such folder"),
    (lambda folder: folder, "no experiment"),
    (_foreign, "no experiment"),
    (_no_records, "no trial records"),
    (_foreign_record, "not a trial record (missing trial_id"),
    (_partial, "unreadable"),
    (_lacking_metrics, "lacks knn_accuracy"),
])
def test_bad_folders_fail_with_one_line(make, message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "results").mkdir()
    results = make(tmp_path / "results")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "summary.csv").write_text("old")
    assert main(["--results", str(results), "--reports", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m bench.report: error: ") and message in err
    assert [p.name for p in (tmp_path / "reports").iterdir()] == ["summary.csv"]
    assert (tmp_path / "reports" / "summary.csv").read_text() == "old"


def test_cli_partial_record_gives_one_line_and_exit_2(tmp_path: Path) -> None:
    results = _partial(tmp_path / "results")
    run = subprocess.run([sys.executable, "-m", "bench.report", "--results", str(results), "--reports",
                          str(tmp_path / "reports")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1 and "unreadable" in run.stderr
    assert not (tmp_path / "reports").exists()
