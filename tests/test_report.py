"""bench.report end to end on generated records: summary.csv against the records, headline, INCOMPLETE, the
comparison, old-format records, LaTeX fragments, byte-identical output across processes, bad input."""

import csv
import io
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from bench.report import main
from bench.reporting import plots, stats, tables
from bench.reporting.fake_records import baseline_record, trial_record, write_experiment, write_smoke_results
from bench.reporting.frame import load_records
from losses import LOSSES

ROOT = Path(__file__).resolve().parent.parent
PLOTS = ("map_vs_margin", "map_vs_batch_size", "map_vs_samples_seen", "map_vs_train_seconds",
         "throughput_vs_batch_size", "peak_memory_vs_batch_size", "triplet_fractions", "tsne")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_smoke_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of --smoke: the records that write_smoke_results writes (the `results` fixture)."""
    reports = tmp_path_factory.mktemp("reports")
    assert main(["--smoke", "--reports", str(reports)]) == 0
    return reports


def _rows(reports: Path) -> list[dict[str, str]]:
    with open(reports / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _row(rows: list[dict[str, str]], experiment: str, loss: str, margin: str, batch: str) -> dict[str, str]:
    found = [r for r in rows if (r["experiment"], r["loss"], r["margin"], r["batch_size"]) == (experiment, loss,
                                                                                                 margin, batch)]
    assert len(found) == 1
    return found[0]


def _finals(results: Path, experiment: str, loss: str, margin: float, batch: int) -> list[dict]:
    records = [json.loads(p.read_text()) for p in sorted((results / experiment / "records").glob("*.json"))]
    cell = (loss, margin, batch)
    chosen = [r for r in records if r.get("kind") != "baseline"
              and (r["config"]["loss"], r["config"]["margin"], r["config"]["batch_size"]) == cell]
    return [r["final"] for r in sorted(chosen, key=lambda r: r["config"]["seed"]) if r["status"] in ("ok", "collapsed")]


def test_csv_holds_the_records_statistics(results: Path, reports: Path) -> None:
    rows = _rows(reports)
    row = _row(rows, "full", "batch-hard", "0.1", "16")
    finals = _finals(results, "full", "batch-hard", 0.1, 16)
    for metric in ("map_at_r", "precision_at_1", "knn_accuracy", "val_map_at_r", "samples_per_second",
                   "peak_memory_mib"):
        values = [final[metric] for final in finals]
        assert len(set(values)) == 3, metric  # distinct per seed
        half = scipy_stats.t.ppf(0.975, 2) * statistics.stdev(values) / 3 ** 0.5
        assert float(row[f"{metric}_mean"]) == pytest.approx(statistics.mean(values), rel=1e-5), metric
        assert float(row[f"{metric}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-5), metric
        assert float(row[f"{metric}_ci95"]) == pytest.approx(half, rel=1e-5), metric
    assert (row["n_seeds"], row["n_valid"], row["planned_steps"], row["images_per_class"]) == ("3", "3", "60", "1.6")
    assert (row["lr_scaling"], row["precision"], row["test_queries_size"]) == ("none", "fp32", "1000")
    oom = _row(rows, "full", "quadruplet", "0.2", "32")
    assert (oom["n_oom"], oom["n_valid"], oom["map_at_r_mean"], oom["map_at_r_ci95"]) == ("3", "0", "", "")
    assert (oom["eligible"], oom["selected"]) == ("false", "false")
    pixels = _row(rows, "full", "pixels", "", "")
    assert (pixels["n_seeds"], pixels["map_at_r_mean"], pixels["map_at_r_ci95"]) == ("1", "0.3", "")
    assert [r["loss"] for r in rows[:2]] == ["pixels", "untrained"]  # baselines first


def test_selected_rows_carry_p_vs_best(reports: Path) -> None:
    rows = [r for r in _rows(reports) if r["experiment"] == "full"]
    selected = [r for r in rows if r["selected"] == "true"]
    assert sorted(r["loss"] for r in selected) == ["batch-all", "batch-hard", "quadruplet"]
    for metric in ("map_at_r", "knn_accuracy"):
        best = max(selected, key=lambda r: float(r[f"{metric}_mean"]))
        assert best[f"p_vs_best_{metric}"] == ""
        assert all(0 <= float(r[f"p_vs_best_{metric}"]) <= 1 for r in selected if r is not best)
    assert all(r["p_vs_best_map_at_r"] == "" for r in rows if r["selected"] != "true")
    for loss in ("batch-all", "batch-hard", "quadruplet"):  # the selected cell has the best validation MAP@R
        eligible = [r for r in rows if r["loss"] == loss and r["eligible"] == "true"]
        chosen = max(eligible, key=lambda r: float(r["val_map_at_r_mean"]))
        assert chosen["selected"] == "true"


def test_headline_lists_baselines_first_and_states_what_it_depends_on(reports: Path) -> None:
    markdown = (reports / "summary.md").read_text()
    full = markdown[markdown.index("## Experiment full"):markdown.index("## Experiment partial")]
    headline = full[full.index("### Headline: mnist, protocol seen"):full.index("### Full grid")]
    table = [line for line in headline.splitlines() if line.startswith("| ")][2:]
    assert [line.split(" | ")[0] for line in table] == ["| pixels", "| untrained", "| quadruplet", "| batch-all",
                                                        "| batch-hard"]
    assert "| pixels | – | – | – | – | 0.3000 (n=1) | baseline |" in headline
    assert "| best on val. |" in headline and ("| worse: −" in headline or "| not detected: " in headline)
    assert ", Holm p = " in headline and "80% power" in headline
    assert "BatchNorm running statistics re-estimated on the training images (no gradient step" in headline
    assert headline.index("MAP@R (test)") < headline.index("k-NN accuracy (test)") < headline.index("P@1 (test)")
    for fact in ("Budget mnist: 1920 samples, no time limit", "60 planned optimiser steps", "precision fp32",
                 "validation: 540 queries, gallery 540; test: 1000 queries, gallery 5400",
                 "hardware Test CPU (2 threads) (cpu)", "lr rule mnist: lr 0.0002, none (lr as configured",
                 "On test MAP@R, "):
        assert fact in headline, fact
    grid = full[full.index("### Full grid"):]
    assert "| selected |" in grid and "| not selected |" in grid and "| not eligible: failed |" in grid
    assert "| 3 OOM | not eligible: failed |" in grid
    assert "| intra / inter |" in grid and "| 0.300 / 1.100 |" in grid  # the whole test set's class distances
    assert "| checkpoint 1 (step 20) | yes | never |" in full  # pinned, then escaped
    assert "| mnist | seen | quadruplet | 0.2 | 32 | 0 | OOM | OOM on purpose |" in full
    for name in PLOTS:
        assert f"](plots/full/{name}.png)" in full and (reports / "plots" / "full" / f"{name}.png").is_file()


def test_incomplete_experiment_is_marked_and_lists_its_unfinished_cells(reports: Path) -> None:
    markdown = (reports / "summary.md").read_text()
    partial = markdown[markdown.index("## Experiment partial"):]
    assert partial.startswith("## Experiment partial (INCOMPLETE: 3 of 8 trials recorded)")
    assert "### Headline (INCOMPLETE): mnist, protocol seen" in partial
    assert "| mnist | seen | batch-all | 0.2 | 16 | 1 | 1 ok, 1 not run |" in partial
    assert "| mnist | seen | batch-all | 0.2 | 32 | 0, 1 | 2 not run |" in partial
    assert "| batch-all | – | – | – | – | no eligible cell: " in partial  # its only finished cell lacks a seed
    assert "map_vs_margin.png: a single margin (0.2) in the grid" in partial
    assert "INCOMPLETE" not in markdown[:markdown.index("## Experiment partial")]


def test_plots_of_an_incomplete_experiment_say_so(results: Path) -> None:
    loaded = load_records(results / "partial")
    summary = stats.summarize(loaded.checkpoints, loaded.grids, tuple(LOSSES))
    trials = loaded.checkpoints[loaded.checkpoints.kind == "trial"]
    citation = stats.citation(loaded.grids["partial"], summary, trials)
    assert citation.endswith("INCOMPLETE, not yet citable") or "NOT FOR CITING" in citation
    figures = plots.make_plots(loaded.checkpoints, summary, tuple(LOSSES), citation)
    assert figures["map_vs_batch_size"]._suptitle.get_text().replace("\n", " ").startswith(f"partial ({citation}): ")
    plt.close("all")


def test_comparison_of_experiments(reports: Path) -> None:
    markdown = (reports / "summary.md").read_text()
    comparison = markdown[markdown.index("## Comparison of experiments"):markdown.index("## Experiment full")]
    assert "| dataset | protocol | loss | full: MAP@R (test), selected cell | partial: MAP@R (test), selected cell |" \
        in comparison
    assert "| mnist | seen | pixels | 0.3000 (n=1) | not in this experiment |" in comparison
    assert "| mnist | seen | batch-all |" in comparison and "| no eligible cell |" in comparison
    assert (reports / "tex" / "comparison.tex").is_file()


def _old_format(record: dict) -> dict:
    """The record as the committed results/cpu records are: no validation, sizes, initial or diagnostics."""
    dropped = ("pinned_at_margin", "collapsed", "planned_steps", "images_per_class", "train_seconds",
               "effective_margin", "effective_rank", "lr", "precision", "threads", "warmup_steps", "n_train_classes",
               "cpu_share")
    for entry in record["history"]:
        for key in [k for k in entry if k in dropped or k.startswith(("val_", "initial_")) or k.endswith("_size")]:
            del entry[key]
    record.pop("initial")
    record.pop("data")
    return record


def test_old_records_report_what_they_can(tmp_path: Path) -> None:
    records = [_old_format(trial_record("old", loss, 0.2, batch, 0)) for loss in ("batch-all", "batch-hard")
               for batch in (8, 16)]
    write_experiment(tmp_path / "results", "old", records, {"dataset": ["mnist"], "loss": ["batch-all", "batch-hard"],
                                                            "margin": [0.2], "batch_size": [8, 16], "seed": [0]})
    assert main(["--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports")]) == 0
    markdown = (tmp_path / "reports" / "summary.md").read_text()
    assert "| batch-all | – | – | – | – | selection not possible: no validation metrics |" in markdown
    assert "Selection not possible: the records have no validation metrics" in markdown
    assert "Margin check unavailable: the records predate" in markdown
    assert "Unavailable: the records predate the pinned_at_margin and collapsed diagnostics." in markdown
    assert "60 optimiser steps at the final checkpoint (the records predate planned_steps)" in markdown
    assert "map_vs_samples_seen.png: selection not possible: no validation metrics" in markdown
    assert "map_vs_batch_size.png: selection not possible: no validation metrics" in markdown
    assert (tmp_path / "reports" / "plots" / "old" / "throughput_vs_batch_size.png").is_file()


def test_one_seed_is_not_testable(tmp_path: Path) -> None:
    records = [trial_record("one", loss, 0.2, 8, 0) for loss in ("batch-all", "batch-hard")]
    write_experiment(tmp_path / "results", "one", records, {"dataset": ["mnist"], "loss": ["batch-all", "batch-hard"],
                                                            "margin": [0.2], "batch_size": [8], "seed": [0]})
    assert main(["--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports")]) == 0
    markdown = (tmp_path / "reports" / "summary.md").read_text()
    assert "| not testable (1 paired seed) |" in markdown
    assert "On test MAP@R, no difference is testable (fewer than 2 paired seeds): the order is not a ranking." \
        in markdown


def test_headline_marks_an_edge_margin_and_reports_the_plateau_gap(tmp_path: Path) -> None:
    """batch-all is best at the largest margin of its axis (edge), batch-hard in the middle (interior), adaptive-mu
    at 0 (no edge: no margin lies below); the plateau gap column is the t-interval of the selected cell's per-seed
    gaps."""
    gaps = [0.004, 0.012, 0.008]
    best = {"batch-all": 0.4, "batch-hard": 0.2, "adaptive-mu": 0.0}
    records = [trial_record("edge", loss, margin, 8, seed, values={
        "val_map_at_r": 0.9 if margin == best[loss] else 0.5, "plateau_gap": gaps[seed]})
        for loss in best for margin in (0.0, 0.2, 0.4) for seed in range(3)]
    write_experiment(tmp_path / "results", "edge", records, {"dataset": ["mnist"], "loss": list(best),
                                                             "margin": [0.0, 0.2, 0.4], "batch_size": [8],
                                                             "seed": [0, 1, 2]})
    assert main(["--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports")]) == 0
    markdown = (tmp_path / "reports" / "summary.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in markdown.splitlines()
            if line.startswith(("| batch-", "| adaptive-mu"))}
    assert rows["batch-all"][1] == "0.4 (edge)" and rows["batch-hard"][1] == "0.2"
    assert rows["adaptive-mu"][1] == "0"  # the smallest margin there is: nothing lies below it
    interval = stats.t_interval(gaps)
    assert rows["batch-all"][-1].rstrip(" |") == f"{interval.mean:.4f} ± {interval.ci95:.4f} (n=3)"


def test_headline_marks_a_tuned_lr_at_the_edge_of_its_axis(tmp_path: Path) -> None:
    """batch-all is best at the largest of its 3 lrs (edge), batch-hard at the middle one (interior)."""
    best = {"batch-all": 1e-3, "batch-hard": 3e-4}
    records = [trial_record("lrs", loss, 0.2, 8, seed, config={"lr": lr},
                            values={"val_map_at_r": 0.9 if lr == best[loss] else 0.5})
               for loss in best for lr in (1e-4, 3e-4, 1e-3) for seed in range(3)]
    write_experiment(tmp_path / "results", "lrs", records, {"dataset": ["mnist"], "loss": list(best), "margin": [0.2],
                                                            "batch_size": [8], "seed": [0, 1, 2],
                                                            "lr": [1e-4, 3e-4, 1e-3]})
    assert main(["--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports")]) == 0
    markdown = (tmp_path / "reports" / "summary.md").read_text()
    headline = markdown.split("### Headline")[1].split("### Full grid")[0]
    assert "| batch-all [lr 0.001 (edge)] | 0.2 |" in headline
    assert "| batch-hard [lr 0.0003] | 0.2 |" in headline


def test_a_fresh_seed_headline_marks_the_edge_of_the_axis_its_loss_was_tuned_on(tmp_path: Path) -> None:
    """The fresh seeds run each loss's selected lr alone: the edge is that of the selection's lr axis."""
    import json

    best = {"batch-all": 1e-3, "batch-hard": 3e-4}
    records = [trial_record("lrs", loss, 0.2, 8, seed, config={"lr": lr},
                            values={"val_map_at_r": 0.9 if lr == best[loss] else 0.5})
               for loss in best for lr in (1e-4, 3e-4, 1e-3) for seed in range(3)]
    records += [trial_record("lrs", loss, 0.2, 8, seed, config={"lr": lr}) for loss, lr in best.items()
                for seed in (3, 4, 5)]
    folder = write_experiment(tmp_path / "results", "lrs", records, {
        "dataset": ["mnist"], "loss": list(best), "margin": [0.2], "batch_size": [8], "seed": [0, 1, 2],
        "lr": [1e-4, 3e-4, 1e-3]})
    spec = json.loads((folder / "grid.json").read_text())
    (folder / "grid.json").write_text(json.dumps({**spec, "fresh_seeds": [3, 4, 5]}))
    assert main(["--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports")]) == 0
    fresh = (tmp_path / "reports" / "summary.md").read_text().split("## Experiment lrs-fresh")[1]
    headline = fresh.split("### Headline")[1].split("### Full grid")[0]
    assert "| batch-all [lr 0.001 (edge)] | 0.2 |" in headline
    assert "| batch-hard [lr 0.0003] | 0.2 |" in headline


def test_a_control_has_no_margin_in_the_tables(tmp_path: Path) -> None:
    """The normalised softmax has no margin: its config's margin (0) is shown as "–" in the headline and the full
    grid, and left out of the comparison of experiments, while a triplet loss at margin 0 keeps its 0."""
    for name in ("ctl", "other"):
        records = [trial_record(name, loss, 0.0, 8, seed) for loss in ("normalized-softmax", "adaptive-mu")
                   for seed in range(3)]
        write_experiment(tmp_path / "results", name, records, {"dataset": ["mnist"],
                                                               "loss": ["normalized-softmax", "adaptive-mu"],
                                                               "margin": [0.0], "batch_size": [8], "seed": [0, 1, 2]})
    assert main(["--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports")]) == 0
    markdown = (tmp_path / "reports" / "summary.md").read_text()
    comparison = markdown.split("## Comparison of experiments")[1].split("\n## ")[0]
    control = next(line for line in comparison.splitlines() if "| normalized-softmax |" in line)
    assert "(n=3), B 8 |" in control and "m 0" not in control, control
    assert "(n=3), m 0 B 8 |" in next(line for line in comparison.splitlines() if "| adaptive-mu |" in line)
    headline, grid = markdown.split("## Experiment ctl")[1].split("### Headline")[1].split("### Full grid")
    for table in (headline, grid.split("###")[0]):
        lines = [line.strip("| ").split(" | ") for line in table.splitlines() if line.startswith("| ")]
        header, rows = lines[0], [dict(zip(lines[0], line, strict=True)) for line in lines[2:]]
        margins = {row["loss"]: row["margin"] for row in rows if row["loss"] in ("normalized-softmax", "adaptive-mu")}
        assert "margin" in header and margins == {"normalized-softmax": "–", "adaptive-mu": "0"}, margins


def test_a_grid_without_records_yet_is_left_out_and_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A grid that has just started (grid.json, an empty records/ or its baselines alone) does not stop the report
    of the others: it is left out, named in one line; with no trial record anywhere the report still fails."""
    _write_small(tmp_path / "results", reverse=False)
    _no_records(tmp_path / "results")
    baselines = write_experiment(tmp_path / "results", "started", [baseline_record("started", "pixels", None, {
        "map_at_r": 0.3, "knn_accuracy": 0.9, "precision_at_1": 0.88, "val_map_at_r": 0.3})],
        {"dataset": ["mnist"], "loss": ["batch-all"], "margin": [0.2], "batch_size": [8], "seed": [0]})
    assert main(["--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports")]) == 0
    err = capsys.readouterr().err
    assert f"report: {tmp_path / 'results' / 'x'} left out: no trial record yet" in err
    assert f"report: {baselines} left out: no trial record yet" in err
    assert "Experiment small" in (tmp_path / "reports" / "summary.md").read_text()
    assert main(["--results", str(_no_records(tmp_path / "only")), "--reports", str(tmp_path / "r2")]) == 2


def test_the_report_removes_the_fragments_and_plots_it_no_longer_writes(tmp_path: Path) -> None:
    """tex/ and plots/ are the report's own: a fragment or plot of an experiment no longer reported (a stale
    "unfinished" table, a folder left out) is deleted, and every file the report writes stays."""
    _write_small(tmp_path / "results", reverse=False)
    reports = tmp_path / "reports"
    stale = [reports / "tex" / "small-unfinished.tex", reports / "plots" / "gone" / "tsne.png"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("stale")
    (reports / "README.md").write_text("hand-written")
    assert main(["--results", str(tmp_path / "results"), "--reports", str(reports)]) == 0
    assert not any(path.exists() for path in stale) and not (reports / "plots" / "gone").exists()
    assert (reports / "README.md").read_text() == "hand-written"
    kept = sorted(path for path in reports.rglob("*") if path.is_file())
    assert any(path.parent.name == "tex" for path in kept) and any(path.suffix == ".png" for path in kept)
    assert main(["--results", str(tmp_path / "results"), "--reports", str(reports)]) == 0
    assert sorted(path for path in reports.rglob("*") if path.is_file()) == kept


def _write_small(folder: Path, reverse: bool) -> Path:
    """2 losses × 2 margins × 2 batch sizes × 2 seeds with embeddings and a baseline, records written in
    creation order or its reverse."""
    records = [trial_record("small", loss, margin, batch, seed) for loss in ("batch-all", "quadruplet")
               for margin in (0.1, 0.2) for batch in (8, 16) for seed in (0, 1)]
    records.append(baseline_record("small", "pixels", None, {"map_at_r": 0.3, "knn_accuracy": 0.9,
                                                             "precision_at_1": 0.88, "val_map_at_r": 0.3}))
    axes = {"dataset": ["mnist"], "loss": ["batch-all", "quadruplet"], "margin": [0.1, 0.2], "batch_size": [8, 16],
            "seed": [0, 1]}
    return write_experiment(folder, "small", records[::-1] if reverse else records, axes, embeddings=True)


def test_byte_identical_across_processes_hash_seeds_and_file_order(tmp_path: Path) -> None:
    runs = []
    _write_benchmark(tmp_path / "bench")  # the same isolated benchmark for both, given by --systems
    for index, (seed, reverse) in enumerate((("0", False), ("12345", True))):
        results = _write_small(tmp_path / f"results{index}", reverse)
        env = {**os.environ, "PYTHONHASHSEED": seed}
        runs.append((tmp_path / f"reports{index}", subprocess.Popen(
            [sys.executable, "-m", "bench.report", "--results", str(results), "--reports",
             str(tmp_path / f"reports{index}"), "--systems", str(tmp_path / "bench" / "step_benchmark.csv")],
            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)))
    for _, process in runs:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    first, second = (sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file()) for folder, _ in runs)
    assert first == second and len(first) == 17 and {Path("plots/small/tsne.png"), Path("claims.md")} <= set(first)
    assert {Path("systems.csv"), Path("tex/systems.tex")} <= set(first)
    for name in first:
        assert (runs[0][0] / name).read_bytes() == (runs[1][0] / name).read_bytes(), name


def _mixed_protocols(folder: Path) -> Path:
    records = [trial_record("x", "batch-hard", 0.2, 8, 0, protocol="seen"),
               trial_record("x", "batch-hard", 0.2, 8, 0, protocol="unseen"),
               baseline_record("x", "pixels", None, {"map_at_r": 0.3, "knn_accuracy": 0.9, "precision_at_1": 0.9},
                               protocol="seen"),
               baseline_record("x", "pixels", None, {"map_at_r": 0.3, "knn_accuracy": 0.9, "precision_at_1": 0.9},
                               protocol="unseen")]  # baselines of both protocols are fine
    return write_experiment(folder, "x", records, {"dataset": ["mnist"], "loss": ["batch-hard"], "margin": [0.2],
                                                   "batch_size": [8], "seed": [0]}).parent


def _duplicate(folder: Path) -> Path:
    records = [trial_record("x", "batch-hard", 0.2, 8, 0), trial_record("x", "batch-hard", 0.2, 8, 0, trial_id="b")]
    return write_experiment(folder, "x", records, {"dataset": ["mnist"], "loss": ["batch-hard"], "margin": [0.2],
                                                   "batch_size": [8], "seed": [0]}).parent


def _bad_blocks(folder: Path) -> Path:
    experiment = _duplicate(folder) / "x"
    (experiment / "records" / "b.json").unlink()
    grid = json.loads((experiment / "grid.json").read_text())
    (experiment / "grid.json").write_text(json.dumps({**grid, "blocks": [{"lr": [0.1]}]}))
    return folder


def _partial(folder: Path) -> Path:
    write_experiment(folder, "x", [trial_record("x", "batch-hard", 0.2, 8, 0)], {"seed": [0]})
    record = next((folder / "x" / "records").glob("*.json"))
    record.write_text(record.read_text()[:200])
    return folder


def _lacking_metrics(folder: Path) -> Path:
    record = trial_record("x", "batch-hard", 0.2, 8, 0)
    del record["history"][0]["map_at_r"]
    return write_experiment(folder, "x", [record], {"seed": [0]}).parent


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
    (_lacking_metrics, "lacks map_at_r"),
    (_mixed_protocols, "records mix protocols seen, unseen in one cell"),
    (_duplicate, "two records for one trial"),
    (_bad_blocks, "grid.json: not a grid (\"blocks\"[0] names ['lr']"),
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


# ---- the systems table: the isolated step benchmark (make bench) ------------------------------------------------

BENCH_HEADER = ("dataset,model,loss,batch_size,precision,compile,device,status,note,median_ms,samples_per_second,"
                "peak_memory_mib,steps,warmup,forward_gflops_per_sample")
BENCH_PROVENANCE = {"date": "2031-02-03T04:05:06Z", "git_commit": "0123abcd", "hardware": "Quiet Test CPU 9000",
                    "device": "cpu", "threads": 7, "preset": "cpu-quick", "steps": 20, "warmup": 5,
                    "torch": "9.9.9", "command": "python -m bench.step_benchmark --preset cpu-quick"}


def _tiny_results(folder: Path) -> Path:
    records = [trial_record("tiny", loss, 0.2, 8, 0) for loss in ("batch-all", "batch-hard")]
    return write_experiment(folder, "tiny", records, {"dataset": ["mnist"], "loss": ["batch-all", "batch-hard"],
                                                      "margin": [0.2], "batch_size": [8], "seed": [0]})


def _write_benchmark(folder: Path, provenance: str = "json") -> list[dict[str, str]]:
    """A step_benchmark.csv (in an order the report must sort) with its provenance as .json or as make bench's .md;
    its rows as the CSV holds them."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [BENCH_HEADER]
    for index, (loss, batch) in enumerate([("batch-hard", 64), ("batch-all", 64), ("batch-hard", 16),
                                           ("batch-all", 16)]):
        ms = 12.345 + 7.1 * index
        lines.append(f"mnist,mnist-net,{loss},{batch},fp32,none,cpu,ok,,{ms:.6g},{batch / ms * 1000:.6g},"
                     f"{101.5 + 33.25 * index:.6g},20,5,0.0123")
    lines.append("mnist,mnist-net,batch-all,4096,fp32,none,cpu,OOM,OutOfMemoryError: no room,,,,20,5,0.0123")
    (folder / "step_benchmark.csv").write_text("\n".join(lines) + "\n")
    if provenance == "json":
        (folder / "step_benchmark.json").write_text(json.dumps(BENCH_PROVENANCE))
    else:
        (folder / "step_benchmark.md").write_text(
            "# Training step in isolation\n\nCommand: `python -m bench.step_benchmark --preset cpu-quick`\n\n"
            + "".join(f"- {key}: {value}\n" for key, value in BENCH_PROVENANCE.items() if key != "command")
            + "\nMedian of ...\n\n## mnist\n\n| model |\n|---|\n| - hardware: not this |\n")
    return list(csv.DictReader(io.StringIO("\n".join(lines) + "\n")))


@pytest.mark.parametrize("provenance", ["json", "md"])
def test_systems_table_is_the_isolated_benchmark(provenance: str, tmp_path: Path) -> None:
    rows = _write_benchmark(tmp_path / "reports", provenance)
    assert main(["--results", str(_tiny_results(tmp_path / "results")), "--reports", str(tmp_path / "reports")]) == 0
    with open(tmp_path / "reports" / "systems.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    key = [(r["loss"] != "batch-all", int(r["batch_size"])) for r in table]  # the registry's loss order, then B
    assert key == sorted(key)
    assert sorted(({k: r[k] for k in rows[0]} for r in table), key=str) == sorted(rows, key=str)  # exactly its numbers
    for row in table:
        assert (row["hardware"], row["threads"], row["git_commit"], row["date"]) == (
            "Quiet Test CPU 9000", "7", "0123abcd", "2031-02-03T04:05:06Z")
    markdown = (tmp_path / "reports" / "summary.md").read_text()
    section = markdown[markdown.index("## Systems: the training step in isolation"):markdown.index("## Experiment")]
    assert "- **hardware:** Quiet Test CPU 9000 (cpu), 7 threads" in section
    assert "commit 0123abcd, 2031-02-03T04:05:06Z" in section
    assert "median of 20 timed steps after 5 warm-up steps" in section and "- **precision:** fp32" in section
    lines = [line for line in section.splitlines() if line.startswith("| mnist |")]
    assert len(lines) == len(rows)
    for row in rows:
        if row["status"] == "ok":
            cells = (f"| mnist | mnist-net | {row['loss']} | {row['batch_size']} | fp32 | none | "
                     f"{float(row['median_ms']):.1f} | {float(row['samples_per_second']):.0f} | "
                     f"{float(row['peak_memory_mib']):.0f} | 0.012 | ok |")
            assert cells in lines
    oom = "| mnist | mnist-net | batch-all | 4096 | fp32 | none | – | – | – | 0.012 | OOM OutOfMemoryError: no room |"
    assert oom in lines
    fragment = (tmp_path / "reports" / "tex" / "systems.tex").read_text()
    comment = " ".join(line[2:] for line in fragment.splitlines() if line.startswith("% "))
    assert "Quiet Test CPU 9000 (cpu), 7 threads, commit 0123abcd" in comment and fragment.isascii()
    figure = plots.isolated_systems(
        pd.DataFrame(table).assign(**{c: pd.to_numeric(pd.DataFrame(table)[c], errors="coerce")
                                      for c in ("batch_size", "samples_per_second", "peak_memory_mib")}),
        ["mnist"], "samples_per_second", "throughput (images/s)", tuple(LOSSES), "tiny", "Quiet Test CPU 9000")
    assert "in isolation" in figure.texts[0].get_text() and "Quiet Test CPU 9000" in figure.texts[0].get_text()
    plt.close(figure)


def test_without_a_benchmark_the_report_says_so(tmp_path: Path) -> None:
    assert main(["--results", str(_tiny_results(tmp_path / "results")), "--reports", str(tmp_path / "reports")]) == 0
    markdown = (tmp_path / "reports" / "summary.md").read_text()
    assert "No isolated measurement: run `make bench`" in markdown
    assert "taken while other trials shared the machine" in markdown  # the grid's observed numbers, labelled
    assert (tmp_path / "reports" / "systems.csv").read_text().count("\n") == 1  # a header only
    assert not (tmp_path / "reports" / "tex" / "systems.tex").exists()


def _bad_numbers(folder: Path) -> Path:
    _write_benchmark(folder)
    path = folder / "step_benchmark.csv"
    path.write_text(path.read_text().replace(",20,5,", ",twenty,5,", 1))
    return path


@pytest.mark.parametrize("make, explicit, message", [
    (lambda folder: folder / "nowhere.csv", True, "nowhere.csv: no such file"),
    (lambda folder: (folder / "other.csv").write_text("a,b\n1,2\n") and folder / "other.csv", True,
     "not a step benchmark CSV (missing dataset"),
    (_bad_numbers, False, "steps 'twenty' is not a number"),
])
def test_bad_benchmark_fails_with_one_line(make, explicit: bool, message: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bench").mkdir()
    path = make(tmp_path / "bench")
    reports = path.parent if not explicit else tmp_path / "reports"
    before = sorted(p.name for p in reports.iterdir()) if reports.exists() else []
    argv = ["--results", str(_tiny_results(tmp_path / "results")), "--reports", str(reports)]
    assert main(argv + (["--systems", str(path)] if explicit else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m bench.report: error: ") and message in err
    assert (sorted(p.name for p in reports.iterdir()) if reports.exists() else []) == before


def test_hardware_line_reads_one_thread_in_the_singular() -> None:
    final = pd.DataFrame({"kind": ["trial"], "provenance_hardware": ["AMD EPYC (1 threads)"],
                          "provenance_device": ["cpu"]})
    assert tables.hardware(final) == "AMD EPYC (1 thread) (cpu)"


def test_a_whole_float_setting_reads_in_full() -> None:
    assert tables.plain(1e6) == "1000000" and tables.plain(64.0) == "64" and tables.plain(0.001) == "0.001"
    final = pd.DataFrame({"kind": ["trial"], "dataset": ["cifar10"], "budget_samples": [1e6],
                          "budget_seconds": [float("nan")]})
    assert tables.budget(final) == "cifar10: 1000000 samples, no time limit"


def test_hardware_line_names_the_trials_apart_from_the_baselines() -> None:
    final = pd.DataFrame({"kind": ["trial", "trial", "baseline"], "provenance_device": ["cpu"] * 3,
                          "provenance_hardware": ["AMD EPYC (1 thread)"] * 2 + ["AMD EPYC (2 threads)"]})
    assert tables.hardware(final) == "trials AMD EPYC (1 thread); baselines AMD EPYC (2 threads) (cpu)"
    same = final.assign(provenance_hardware="AMD EPYC (1 thread)")
    assert tables.hardware(same) == "AMD EPYC (1 thread) (cpu)"


def test_p_clause_never_reads_p_equals_less_than() -> None:
    assert tables.p_clause(0.0004) == "p < 0.001"
    assert tables.p_clause(0.015) == "p = 0.015"


def test_every_experiment_says_its_seeds_and_whether_it_is_citable(reports: Path) -> None:
    markdown = (reports / "summary.md").read_text()
    full = markdown[markdown.index("## Experiment full"):markdown.index("## Experiment partial")]
    partial = markdown[markdown.index("## Experiment partial"):]
    assert "- **citable:** n = 3 seeds; citable\n" in full
    assert "### Headline: mnist, protocol seen (n = 3 seeds; citable)" in full
    assert ("- **citable:** n = 2 seeds; NOT FOR CITING (preset partial is not a reference design). The preset's "
            "note: generated records (partial)") in partial
    fragment = (reports / "tex" / "full-grid.tex").read_text()
    assert "% Experiment full: n = 3 seeds; citable. Test metrics" in fragment
    assert "Experiment partial: n = 2 seeds; NOT FOR CITING" in (reports / "tex" / "partial-grid.tex").read_text()


def test_the_reference_report_reads_only_reference_experiments(results: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    assert main(["--results", str(results), "--reports", str(tmp_path / "ref"), "--reference"]) == 0
    markdown = (tmp_path / "ref" / "summary.md").read_text()
    assert "## Experiment full" in markdown and "partial" not in markdown
    assert {p.name for p in (tmp_path / "ref" / "plots").iterdir()} == {"full"}
    capsys.readouterr()
    assert main(["--results", str(results / "partial"), "--reports", str(tmp_path / "none"), "--reference"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no reference experiment" in err and str(results / "partial") in err
    assert not (tmp_path / "none").exists()


def test_summary_csv_rows_say_where_each_cell_ran(tmp_path: Path) -> None:
    first, second = (trial_record("e", "batch-all", 0.2, 16, seed) for seed in (0, 1))
    second["provenance"] = {**second["provenance"], "date": "2026-01-03T10:00:00Z", "git_commit": "def456"}
    for record in (first, second):
        record["config"]["model"] = "mnist-net"
    write_experiment(tmp_path, "e", [first, second], {"dataset": ["mnist"], "loss": ["batch-all"], "margin": [0.2],
                                                     "batch_size": [16], "seed": [0, 1]})
    assert main(["--results", str(tmp_path / "e"), "--reports", str(tmp_path / "out")]) == 0
    row = _row(_rows(tmp_path / "out"), "e", "batch-all", "0.2", "16")
    assert (row["model"], row["precision"], row["device"], row["hardware"]) == (
        "mnist-net", "fp32", "cpu", "Test CPU (2 threads)")
    assert (row["commit"], row["date"]) == ("abc123;def456", "2026-01-01 to 2026-01-03")


def test_a_cell_whose_trial_shared_its_cores_has_its_throughput_marked(tmp_path: Path) -> None:
    """A trial with cpu_share below bench.engine.train.QUIET_SHARE marks its cell's samples/s "(shared)" in the full
    grid table and sets the cell's cpu_share_min; a cell of quiet trials and a cell of records without cpu_share
    carry none."""
    shared = trial_record("e", "batch-all", 0.2, 16, 1, values={"cpu_share": 0.45})
    quiet = [trial_record("e", "batch-all", 0.2, 16, 0), trial_record("e", "batch-all", 0.2, 32, 0),
             trial_record("e", "batch-all", 0.2, 32, 1)]
    old = [_old_format(trial_record("e", "batch-hard", 0.2, batch, seed)) for batch in (16, 32) for seed in (0, 1)]
    write_experiment(tmp_path, "e", [shared, *quiet, *old], {
        "dataset": ["mnist"], "loss": ["batch-all", "batch-hard"], "margin": [0.2], "batch_size": [16, 32],
        "seed": [0, 1]})
    assert main(["--results", str(tmp_path / "e"), "--reports", str(tmp_path / "out")]) == 0
    rows = _rows(tmp_path / "out")
    assert float(_row(rows, "e", "batch-all", "0.2", "16")["cpu_share_min"]) == 0.45
    assert float(_row(rows, "e", "batch-all", "0.2", "32")["cpu_share_min"]) == 0.98
    assert _row(rows, "e", "batch-hard", "0.2", "16")["cpu_share_min"] == ""
    markdown = (tmp_path / "out" / "summary.md").read_text()
    grid = markdown[markdown.index("### Full grid"):markdown.index("### Margin check")]
    marked = [line for line in grid.splitlines() if "(shared)" in line and line.startswith("| mnist")]
    assert len(marked) == 1 and "| batch-all | 0.2 | 16 |" in marked[0], grid
    assert 'less than 90% of its threads\' CPU time' in grid


def test_the_comparison_says_when_a_loss_is_in_the_grid_but_not_recorded_yet(tmp_path: Path) -> None:
    """An experiment under way: its loss without a single record is 'not recorded yet', not 'no validation metrics'."""
    axes = {"dataset": ["mnist"], "loss": ["batch-all", "batch-hard"], "margin": [0.2], "batch_size": [16],
            "seed": [0, 1]}
    write_experiment(tmp_path, "done", [trial_record("done", loss, 0.2, 16, seed) for loss in axes["loss"]
                                        for seed in (0, 1)], axes)
    untrained = {"map_at_r": 0.2, "knn_accuracy": 0.8, "precision_at_1": 0.8}
    baselines = [{**baseline_record("going", "untrained", 0, untrained), "trial_id": f"baseline-{normalize}"}
                 for normalize in (True, False)]
    for record, normalize in zip(baselines, (True, False), strict=True):
        record["config"] = {**record["config"], "normalize": normalize}
    write_experiment(tmp_path, "going", [trial_record("going", "batch-hard", 0.2, 16, 0), *baselines],
                     {**axes, "normalize": [True, False]})
    loaded = load_records(tmp_path)
    summary = stats.summarize(loaded.checkpoints, loaded.grids, tuple(LOSSES))
    rows = {row[2]: row[3:] for row in tables.comparison_table(summary, ["done", "going"]).rows}
    assert rows["batch-all"][1] == "not recorded yet" and rows["batch-hard"][1] == "no eligible cell"
    assert rows["batch-all"][0].startswith("0.") and ", m 0.2 B 16" in rows["batch-all"][0]
    assert rows["untrained"][1] == "0.2000 (n=1) [normalize off]; 0.2000 (n=1) [normalize on]"  # one per variant
    labels = [row[0] for row in tables.headline("h", summary[summary.experiment == "going"])[0].rows[:2]]
    assert labels == ["untrained [normalize off]", "untrained [normalize on]"]


def test_running_time_is_the_union_of_the_trials_spans() -> None:
    """Two overlapping trials (09:50-10:00, 09:55-10:05) and one after a pause (11:55-12:00): 20 minutes with a
    trial running; a baseline and a trial without its elapsed time are left out."""
    import pandas as pd

    from bench.reporting.tables import running_time

    final = pd.DataFrame({
        "kind": ["trial", "trial", "trial", "baseline", "trial"],
        "provenance_date": ["2026-12-06T10:00:00Z", "2026-12-06T10:05:00Z", "2026-12-06T12:00:00Z",
                            "2026-12-06T13:00:00Z", "2026-12-06T14:00:00Z"],
        "elapsed_seconds": [600.0, 600.0, 300.0, 5000.0, float("nan")],
    })
    assert running_time(final) == ("20 min of wall time with a trial running (3 trials, 0.4 trial-hours; pauses "
                                   "between sittings left out)")
    assert running_time(final[final.kind == "baseline"]) == "no trial with its times recorded"


def test_hardware_line_tells_two_cpus_of_one_name_apart_by_their_recorded_flags() -> None:
    """An 'AMD EPYC' with avx512_bf16 and one with avx2 alone run bf16 natively and emulated: the line names both;
    records older than the flags keep their name, and a GPU's name takes no host flags."""
    final = pd.DataFrame({"kind": ["trial"] * 4, "provenance_device": ["cpu", "cpu", "cpu", "cuda"],
                          "provenance_hardware": ["AMD EPYC (1 thread)"] * 3 + ["NVIDIA H100"],
                          "provenance_cpu_isa": ["avx2 avx512f avx512_bf16", "avx2", None, "avx2"]})
    assert list(tables.machines(final)) == ["AMD EPYC [avx2 avx512f avx512_bf16] (1 thread)",
                                            "AMD EPYC [avx2] (1 thread)", "AMD EPYC (1 thread)", "NVIDIA H100"]
    assert tables.hardware(final.iloc[:2]) == ("AMD EPYC [avx2 avx512f avx512_bf16] (1 thread), "
                                               "AMD EPYC [avx2] (1 thread) (cpu)")
    assert tables.hardware(final.iloc[2:3]) == "AMD EPYC (1 thread) (cpu)"
