"""The grid runner: presets, records, Ray and local backends, failures, resume and bad input."""

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import torch

from bench.engine.config import METRICS
from bench.engine.device import is_oom, one_line
from bench.engine.precision import cpu_isa
from bench.engine.synthetic import write_synthetic
from bench.experiment.fingerprint import fingerprint
from bench.experiment.gridspec import AXES, Grid, GridError
from bench.experiment.identity import trial_id
from bench.experiment.lock import LOCK_NAME
from bench.experiment.presets import load_preset, preset_names
from bench.grid import MAX_NODE_FAILURES, eta_seconds, pick_backend, quiet_ray, ray_param_space, run_grid
from bench.grid import main as grid_main
from losses import CONTROLS, LOSSES

ROOT = Path(__file__).resolve().parent.parent
RECORD_KEYS = {"trial_id", "kind", "experiment", "preset", "config", "status", "reason", "history", "final",
               "provenance", "embeddings", "data", "initial"}
FAKE_GRID = {
    "doc": "fake trials: margin 0.5 raises OOM, batch size 16 raises a NaN error, batch-hard diverges",
    "axes": {"dataset": ["mnist"], "loss": ["batch-all", "batch-hard"], "margin": [0.2, 0.5],
             "batch_size": [8, 16], "seed": [0, 1]},
    "fixed": {"budget_samples": 64, "checkpoints": 2, "threads": 1},
}


INITIAL = {"initial_fraction_easy": 0.25, "initial_fraction_semihard": 0.5, "initial_fraction_hard": 0.25,
           "initial_active_anchors": None, "effective_margin": 0.2}


def fake_trial(config: dict, report) -> dict:
    """Logs its call in data_dir, fails on purpose, stops like Ctrl-C while data_dir/INTERRUPT exists, and kills
    its own (Ray worker) process at one grid point while data_dir/KILL exists."""
    data_dir = Path(config["data_dir"])
    with open(data_dir / "calls.log", "a") as log:
        log.write(json.dumps({axis: config[axis] for axis in AXES}) + "\n")
    if (data_dir / "INTERRUPT").exists() and (config["seed"], config["margin"], config["batch_size"]) == (1, 0.2, 8):
        raise KeyboardInterrupt
    if (data_dir / "KILL").exists() and (config["loss"], config["seed"], config["margin"], config["batch_size"]) == (
            "batch-all", 1, 0.2, 8):
        os.kill(os.getpid(), signal.SIGKILL)
    if config["margin"] == 0.5:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
    if config["batch_size"] == 16:
        raise ValueError("loss is NaN\nat step 3")
    for checkpoint in (1, 2):
        metrics = {**dict.fromkeys(METRICS, 0.5), "checkpoint": checkpoint, "step": checkpoint, "status": "ok",
                   "knn_accuracy": 0.4 + checkpoint / 10 + config["seed"] / 100, "threads": 3, **INITIAL,
                   "cpu_share": 0.5 if config["seed"] == 1 else 1.0}  # seed 1 shared its cores
        if config["loss"] == "batch-hard" and checkpoint == 2:
            metrics.update(status="diverged", reason="non-finite loss at step 2", knn_accuracy=math.nan)
        report(metrics)
    if metrics["status"] == "ok":
        Path(config["save_embeddings"]).write_bytes(b"npz")
    return metrics


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray instance with 2 CPUs for this module, its temp folder under pytest's, shut down after."""
    quiet_ray()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")),
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}})
    yield
    ray.shutdown()


@pytest.fixture
def no_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tune retries a trial that raised KeyboardInterrupt (INTERRUPT) as it does a lost worker, MAX_NODE_FAILURES
    times, each on a new worker process: for tests of an interrupt, not of the retries (the killed-worker test's)."""
    monkeypatch.setattr("bench.grid.MAX_NODE_FAILURES", 0)


@pytest.fixture
def fake_setup(tmp_path: Path) -> tuple[Path, Path]:
    """(preset path, data folder with a tiny mnist.npz) for the fake grid."""
    preset = tmp_path / "fake.json"
    preset.write_text(json.dumps(FAKE_GRID))
    data_dir = tmp_path / "data"
    write_synthetic(data_dir, "mnist", n_train=50, n_test=20)
    return preset, data_dir


def snapshot(folder: Path) -> dict[Path, tuple[int, bytes]]:
    """(mtime_ns, bytes) of every file in an experiment's records/."""
    return {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in (folder / "records").glob("*")}


def records(folder: Path) -> dict[str, dict]:
    """trial_id → record of every record file in an experiment folder."""
    return {path.stem: json.loads(path.read_text()) for path in sorted((folder / "records").glob("*.json"))}


def calls(data_dir: Path) -> list[dict]:
    """The grid points the fake trial was called with, in order."""
    log = data_dir / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# issue 24: one question each, on cpu's cells; the budget question also in fp32 (CPUs without native bf16)
QUESTIONS = ("cpu-batch", "cpu-budget", "cpu-budget-fp32", "cpu-budget-fp32-200k", "cpu-seeds", "cpu-sampler")
FP32 = {"cpu-budget-fp32": 1_000_000, "cpu-budget-fp32-200k": 200_000}  # cpu-budget in fp32: its two budgets


def test_the_question_presets_run_the_cells_that_the_cpu_grid_selected() -> None:
    """cpu-budget, cpu-seeds and cpu-sampler name exactly cpu's validation-selected CIFAR-10 cells of the losses
    that learn (reports/summary.csv, made from the committed records); cpu-batch, batch-all's."""
    import pandas as pd

    summary = pd.read_csv(ROOT / "reports" / "summary.csv")
    chosen = summary[(summary.experiment == "cpu") & (summary.dataset == "cifar10") & (summary.selected == True)  # noqa: E712
                     & (summary.n_collapsed == 0)]
    cells = {(row.loss, row.margin, int(row.batch_size)) for row in chosen.itertuples()}
    assert len(cells) == 3
    # cpu-losses, on the machine that runs these presets, selected the same cells at their lr: the budget and seeds
    # claims compare with it (bench.reporting.claims.SAME_MACHINE)
    again = summary[(summary.experiment == "cpu-losses") & (summary.selected == True)]  # noqa: E712
    from bench.engine.config import resolve
    from bench.engine.models import model_settings

    configs = [resolve(load_preset(name).config(p)) for name in ("cpu-budget", "cpu-seeds")
               for p in load_preset(name).points()]
    lrs = {model_settings(cfg)["lr"] for cfg in configs if cfg["lr_scaling"] == "none"}
    assert len(lrs) == 1 and all(cfg["lr_scaling"] == "none" for cfg in configs)
    assert {(row.loss, row.margin, int(row.batch_size), row.lr) for row in again.itertuples()
            if (row.loss, row.margin, int(row.batch_size)) in cells} == {(*cell, *lrs) for cell in cells}
    for name in QUESTIONS:
        points = load_preset(name).points()
        named = {(p["loss"], p["margin"], p["batch_size"]) for p in points}
        if name == "cpu-batch":  # one cell's loss and margin, at every batch size
            assert {(loss, margin) for loss, margin, _ in named} == {("batch-all", 0.2)} <= {c[:2] for c in cells}
        else:
            assert named == cells, name
        precision = "fp32" if name in FP32 else "bf16"
        assert all(load_preset(name).config(p)["precision"] == precision for p in points), name
    budget = load_preset("cpu-budget")
    for name, samples in FP32.items():  # cpu-budget's trials but for precision, budget and checkpoints
        grid = load_preset(name)
        assert grid.points() == budget.points(), name
        for p in grid.points():
            ours, theirs = grid.config(p), budget.config(p)
            assert (ours["precision"], ours["budget_samples"]) == ("fp32", samples), name
            same = set(ours) - {"precision", "budget_samples", "checkpoints"}
            assert {k: ours[k] for k in same} == {k: theirs.get(k) for k in same}, name


def test_shipped_presets_are_valid_and_budgets_equal_per_dataset() -> None:
    assert preset_names() == ["cpu", "cpu-batch", "cpu-budget", "cpu-budget-fp32", "cpu-budget-fp32-200k", "cpu-losses",
                              "cpu-quick", "cpu-sampler", "cpu-seeds", "cpu-unseen", "gpu-check", "paper", "smoke"]
    four = {"batch-all", "batch-hard", "adaptive-mu", "quadruplet"}
    for name in preset_names():
        grid = load_preset(name)
        assert four <= set(grid.axes["loss"]) or name in QUESTIONS
        budgets = {(p["dataset"], grid.config(p).get("budget_samples")) for p in grid.points()}
        assert len(budgets) == len(grid.axes["dataset"]) or name == "cpu-batch", (name, budgets)  # equal steps too
        assert len({trial_id(grid.config(p), "0" * 16) for p in grid.points()}) == len(grid.points())
    paper = load_preset("paper")
    assert paper.axes["dataset"] == ["mnist", "cifar10"] and len(paper.axes["seed"]) == 3
    assert len(paper.axes["margin"]) >= 3 and len(paper.axes["batch_size"]) >= 3
    cpu = load_preset("cpu")
    assert cpu.axes["dataset"] == ["mnist", "cifar10"] and len(cpu.axes["seed"]) == 3
    assert all(isinstance(margin, float) for margin in cpu.axes["margin"])
    unseen = load_preset("cpu-unseen")  # cpu's CIFAR-10 cells under the other protocol, and the control

    def cells(grid: Grid, dataset: str, losses: Any = LOSSES) -> set[tuple]:
        return {tuple(v for k, v in p.items() if k not in ("protocol", "temperature")) for p in grid.points()
                if p["dataset"] == dataset and p["loss"] in losses}

    # B = 256 cut on cpu's validation (the preset's doc)
    assert cells(unseen, "cifar10") == {cell for cell in cells(cpu, "cifar10") if cell[3] == 64}
    assert len(cells(cpu, "mnist")) == 114
    control = [p for p in unseen.points() if p["loss"] in CONTROLS]
    assert len(control) == 6 and {p["temperature"] for p in control} == {0.05, 0.1} and unseen.fresh_seeds
    # cpu's settings but for the protocol and precision (fp32: bf16 is native on few CPUs; compared by rank)
    assert {k: v for k, v in unseen.config(unseen.points()[0]).items()
            if k not in (*AXES, "protocol", "temperature", "precision")} \
        == {k: v for k, v in cpu.config(cpu.points()[-1]).items() if k not in (*AXES, "protocol", "precision")}
    assert {unseen.config(p)["precision"] for p in unseen.points()} == {"fp32"}
    assert len(load_preset("smoke").points()) <= 8
    losses = load_preset("cpu-losses")  # issue 24: every loss gets the same tuning budget
    configs = Counter((p["loss"], p["margin"], p["lr"], p["normalize"], p["temperature"]) for p in losses.points())
    assert set(configs.values()) == {3} and set(Counter(loss for loss, *_ in configs).values()) == {6}
    assert set(losses.axes["loss"]) == {*LOSSES, *CONTROLS} and not set(losses.fresh_seeds) & set(losses.seeds())


def test_ray_starts_the_points_in_the_grid_order_dataset_by_dataset_seeds_innermost() -> None:
    """So that a long run completes whole cells (all seeds) of one dataset before it starts the next."""
    grid = load_preset("cpu")
    points = grid.points()
    assert ray_param_space(grid) == {"point": {"grid_search": points}}
    assert [p["seed"] for p in points[:6]] == [0, 1, 2, 0, 1, 2]
    datasets = [p["dataset"] for p in points]
    assert datasets == ["mnist"] * 114 + ["cifar10"] * 84
    margins = [p["margin"] for p in points if p["dataset"] == "cifar10" and p["loss"] == "batch-all"]
    assert margins == sorted(margins)  # the axis's order, whichever block named a value first


PROTOCOL_GRID = {  # seen for both datasets, unseen too for cifar10: 2 + 4 trials
    "doc": "fake trials over a protocol axis that cifar10 widens",
    "axes": {"dataset": ["mnist", "cifar10"], "protocol": ["seen"], "loss": ["batch-all"], "margin": [0.2],
             "batch_size": [8], "seed": [0, 1]},
    "fixed": {"budget_samples": 64, "checkpoints": 2, "threads": 1},
    "per_dataset": {"cifar10": {"budget_samples": 32, "axes": {"protocol": ["seen", "unseen"]}}},
}


@pytest.fixture
def protocol_setup(tmp_path: Path) -> tuple[Path, Path]:
    """(preset path, data folder with tiny mnist.npz and cifar10.npz) for PROTOCOL_GRID."""
    preset = tmp_path / "protocols.json"
    preset.write_text(json.dumps(PROTOCOL_GRID))
    data_dir = tmp_path / "data"
    for dataset in ("mnist", "cifar10"):
        write_synthetic(data_dir, dataset, n_train=50, n_test=20)
    return preset, data_dir


def _cells(folder: Path) -> list[tuple]:
    """(dataset, protocol, seed) of every trial record in an experiment folder, sorted."""
    return sorted((r["config"]["dataset"], r["config"]["protocol"], r["config"]["seed"])
                  for r in records(folder).values())


PROTOCOL_CELLS = [("cifar10", "seen", 0), ("cifar10", "seen", 1), ("cifar10", "unseen", 0), ("cifar10", "unseen", 1),
                  ("mnist", "seen", 0), ("mnist", "seen", 1)]


def test_protocol_is_an_optional_axis_that_a_dataset_may_widen(protocol_setup: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    from bench.experiment.baselines import baseline_configs
    from bench.reporting.stats import expected_cells

    preset, data_dir = protocol_setup
    grid = load_preset(str(preset))
    assert list(grid.axes) == ["dataset", "protocol", "loss", "margin", "batch_size", "seed"]
    assert len(grid.points()) == 6
    assert grid.per_dataset == {"cifar10": {"budget_samples": 32}}
    assert sorted((p["dataset"], p["protocol"], p["seed"]) for p in grid.points()) == PROTOCOL_CELLS
    assert grid.point({"point": grid.points()[0]}) == grid.point({**grid.points()[0], "x": 1}) == grid.points()[0]

    assert run_grid(str(preset), data_dir, tmp_path / "results", backend="local", trial_fn=fake_trial) == 0
    folder = tmp_path / "results" / "protocols"
    assert _cells(folder) == PROTOCOL_CELLS
    assert {r["config"]["budget_samples"] for r in records(folder).values() if r["config"]["dataset"] == "cifar10"} \
        == {32}
    spec = json.loads((folder / "grid.json").read_text())
    assert spec["axes"] == PROTOCOL_GRID["axes"] and spec["per_dataset"] == PROTOCOL_GRID["per_dataset"]
    expected = expected_cells(spec, "protocols")  # the report's cells: the grid's points
    assert sorted(zip(expected.dataset, expected.protocol, expected.seed, strict=True)) == PROTOCOL_CELLS
    assert run_grid(str(preset), data_dir, tmp_path / "results", backend="local", trial_fn=fake_trial) == 0
    assert len(calls(data_dir)) == 6  # resumed: nothing ran again

    square = {**PROTOCOL_GRID, "axes": {**PROTOCOL_GRID["axes"], "protocol": ["seen", "unseen"]}, "per_dataset": {}}
    square_grid = load_preset(_bad(tmp_path, "square", json.dumps(square)))
    assert len(square_grid.points()) == 8
    assert sorted({(b["baseline"], b["dataset"], b["protocol"]) for b in baseline_configs(
        square_grid.config(p) for p in square_grid.points())}) == [
        (b, d, p) for b in ("pixels", "untrained") for d in ("cifar10", "mnist") for p in ("seen", "unseen")]

    bad = {
        "sets ['protocol'], which the axes": {**PROTOCOL_GRID, "fixed": {"protocol": "seen"}},
        "may only replace the values of axes that \"axes\" lists": {
            **PROTOCOL_GRID, "axes": {k: v for k, v in PROTOCOL_GRID["axes"].items() if k != "protocol"}},
        "(not dataset)": {**PROTOCOL_GRID, "per_dataset": {"mnist": {"axes": {"dataset": ["mnist"]}}}},
        'per_dataset.cifar10 axis "protocol" must be a non-empty list': {
            **PROTOCOL_GRID, "per_dataset": {"cifar10": {"axes": {"protocol": []}}}},
        '"axes" must give a list of values': {**PROTOCOL_GRID, "axes": {**PROTOCOL_GRID["axes"], "optimizer": ["sgd"]}},
        "unknown protocol 'open'; valid: seen, unseen": {
            **PROTOCOL_GRID, "per_dataset": {"cifar10": {"axes": {"protocol": ["open"]}}}},
        "batch_size 4 with samples_per_class 4 gives 1 class per batch": {
            **PROTOCOL_GRID, "axes": {**PROTOCOL_GRID["axes"], "batch_size": [8, 4]}},
    }
    for message, raw in bad.items():
        with pytest.raises(GridError, match=re.escape(message)):
            load_preset(_bad(tmp_path, "bad", json.dumps(raw)))


@pytest.mark.slow
def test_a_widened_protocol_axis_runs_and_resumes_through_ray(
    ray_session: None, no_retries: None, protocol_setup: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    preset, data_dir = protocol_setup
    (data_dir / "INTERRUPT").touch()  # the seed-1 trials stop like Ctrl-C
    assert run_grid(str(preset), data_dir, tmp_path, backend="ray", trial_fn=fake_trial) == 1
    assert "3 unfinished; re-run the same command to resume" in capsys.readouterr().out
    assert [cell for cell in _cells(tmp_path / "protocols") if cell[2] == 1] == []
    first = snapshot(tmp_path / "protocols")
    ran_before = len(calls(data_dir))

    (data_dir / "INTERRUPT").unlink()
    assert run_grid(str(preset), data_dir, tmp_path, backend="ray", trial_fn=fake_trial) == 0
    out = capsys.readouterr().out
    print(out)
    assert "resuming" in out and "6 trials:" in out and "unfinished" not in out
    assert "] cifar10 unseen batch-all margin 0.2 B 8 seed 1: ok" in out
    rerun = calls(data_dir)[ran_before:]
    assert sorted(point["dataset"] for point in rerun) == ["cifar10", "cifar10", "mnist"]
    assert all(point["seed"] == 1 for point in rerun)
    assert {path: snapshot(tmp_path / "protocols")[path] for path in first} == first
    assert _cells(tmp_path / "protocols") == PROTOCOL_CELLS


@pytest.mark.slow
def test_smoke_grid_as_a_subprocess_on_ray_with_real_trials(tiny_data_dir: Path, tmp_path: Path) -> None:
    """The smoke grid through Ray into a git checkout's results/: its records, Tune's outputs, its own report
    (not for citing), and git status clean afterwards, as after any quick run."""
    repo = tmp_path / "clone"
    repo.mkdir()
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    results = repo / "results"
    proc = subprocess.run([sys.executable, "-m", "bench.grid", "--smoke", "--backend", "ray", "--results",
                           str(results)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    folder = results / "smoke"
    grid = load_preset("smoke")
    spec = json.loads((folder / "grid.json").read_text())
    prints = {name: fingerprint(name, tiny_data_dir) for name in ("mnist", "cifar10")}  # the same generated data
    assert spec == {"preset": "smoke", "experiment": "smoke", "doc": grid.doc, "citable": False, "axes": grid.axes,
                    "fixed": grid.fixed, "per_dataset": grid.per_dataset, "threads": 1, "data": prints}
    found = {tid: record for tid, record in records(folder).items() if not tid.startswith("baseline-")}
    assert set(found) == {trial_id({**grid.config(p), "threads": 1}, prints[p["dataset"]]) for p in grid.points()}
    baselines = [record["baseline"] for tid, record in records(folder).items() if tid.startswith("baseline-")]
    assert sorted(baselines) == ["pixels", "pixels", "untrained", "untrained"]  # per data set (one seed)
    for tid, record in found.items():
        assert set(record) == RECORD_KEYS and record["trial_id"] == tid
        assert record["status"] in ("ok", "collapsed") and record["reason"] is None, record
        assert len(record["history"]) == record["config"]["checkpoints"] == 2
        assert record["final"] == record["history"][-1] and set(METRICS) <= set(record["final"])
        assert record["data"] == {"fingerprint": prints[record["config"]["dataset"]]}
        assert record["config"]["threads"] == 1 and record["config"]["data_dir"].startswith(tempfile.gettempdir())
        assert (folder / "records" / record["embeddings"]).is_file() and record["embeddings"] == f"{tid}.npz"
        provenance = record["provenance"]
        assert provenance["command"] == f"python -m bench.grid --smoke --backend ray --results {results}"
        assert provenance["ray"] == ray.__version__ and provenance["resources"] == {"cpu": 1.0, "gpu": 0.0}
        assert provenance["concurrent_trials"] == os.cpu_count()
        assert re.fullmatch(r"[0-9a-f]{56}", provenance["node"]["node_id"])
        assert provenance["node"]["hostname"] == socket.gethostname()
    assert sum(line.startswith("[") for line in out.splitlines()) == len(found) == 8
    assert "grid smoke: 8 trials: " in out and "unfinished" not in out
    assert sorted(path.name for path in folder.iterdir()) == ["grid.json", "ray", "records", "report"]
    assert "report of smoke: " in out and str(folder / "report") in out
    markdown = (folder / "report" / "summary.md").read_text()
    assert "NOT FOR CITING (preset smoke is not a reference design). The preset's note: " + grid.doc in markdown
    assert markdown.count("## Experiment ") == 1 and (folder / "report" / "plots" / "smoke").is_dir()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo, capture_output=True,
                            text=True, check=True).stdout
    assert status == "?? .gitignore\n"  # a quick run leaves nothing for git to see
    tune_folders = [path for path in (folder / "ray").iterdir() if (path / "params.json").is_file()]
    assert len(tune_folders) == 8  # Tune's own outputs, for Ray users: a line per checkpoint, ours in "record"
    for path in tune_folders:
        lines = [json.loads(line) for line in (path / "result.json").read_text().splitlines()]
        assert [line["checkpoint"] for line in lines] == [1, 2] and lines[-1]["record"] in found
        assert len((path / "progress.csv").read_text().splitlines()) == 3  # a header and two checkpoints
    for noise in ("Token authentication", "tensorboard", "Tuner.restore", "Failed to fetch metrics"):
        assert noise not in proc.stdout + proc.stderr, noise


@pytest.mark.slow
def test_sigterm_stops_a_ray_grid_in_one_line_and_the_rerun_completes(tiny_data_dir: Path, tmp_path: Path) -> None:
    """`kill` (SIGTERM) during the smoke grid on Ray: exit 130 and one line, no stack trace (Ray's own handler
    prints one); the records already written stay, and the same command then completes the grid."""
    argv = [sys.executable, "-m", "bench.grid", "--smoke", "--backend", "ray", "--no-report", "--results",
            str(tmp_path)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # the first finished trial
        if line.startswith("[1/"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted; re-run the same command to resume"], err
    kept = {path.name: path.read_bytes() for path in (tmp_path / "smoke" / "records").iterdir()}
    assert any(name.endswith(".npz") for name in kept)
    rerun = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "grid smoke: 8 trials: " in rerun.stdout and "unfinished" not in rerun.stdout
    assert {name: (tmp_path / "smoke" / "records" / name).read_bytes() for name in kept} == kept


@pytest.mark.slow
def test_failures_are_recorded_and_local_backend_writes_the_same_files(
    ray_session: None, fake_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    preset, data_dir = fake_setup
    assert run_grid(str(preset), data_dir, tmp_path / "ray", trial_fn=fake_trial) == 0
    assert run_grid(str(preset), data_dir, tmp_path / "local", backend="local", trial_fn=fake_trial) == 0
    by_ray, by_local = records(tmp_path / "ray" / "fake"), records(tmp_path / "local" / "fake")
    assert len(by_ray) == 16 and set(by_ray) == set(by_local)
    assert (tmp_path / "ray/fake/grid.json").read_text() == (tmp_path / "local/fake/grid.json").read_text()
    for tid, record in by_ray.items():
        other = by_local[tid]
        assert set(record) == set(other) == RECORD_KEYS
        for key in ("status", "reason", "history", "final", "embeddings", "preset", "experiment"):
            assert record[key] == other[key], key
        cfg = record["config"]
        assert {**cfg, "save_embeddings": ""} == {**other["config"], "save_embeddings": ""}
        assert record["data"] == other["data"] == {"fingerprint": fingerprint("mnist", data_dir)}
        assert record["provenance"]["resources"] == {"cpu": 1.0, "gpu": 0.0}
        assert other["provenance"]["resources"] == {"cpu": os.cpu_count(), "gpu": 0}
        assert (record["provenance"]["concurrent_trials"], other["provenance"]["concurrent_trials"]) == (2, 1)
        assert other["provenance"]["node"] == {"node_id": socket.gethostname(), "hostname": socket.gethostname()}
        # the hardware names the threads the trial reported running with, not the worker's or driver's count
        threads = r"\(3 threads\)" if record["history"] else r"\(\d+ threads?\)"
        assert all(re.search(threads + "$", r["provenance"]["hardware"]) for r in (record, other)), threads
        if cfg["margin"] == 0.5:
            assert record["status"] == "OOM" and record["reason"].startswith("OutOfMemoryError: CUDA out of memory")
            assert record["history"] == [] and record["final"] == {}
        elif cfg["batch_size"] == 16:
            assert record["status"] == "error" and record["reason"] == "ValueError: loss is NaN at step 3"
        elif cfg["loss"] == "batch-hard":
            assert record["status"] == "diverged" and record["reason"] == "non-finite loss at step 2"
            assert record["final"]["knn_accuracy"] is None and len(record["history"]) == 2
        else:
            assert record["status"] == "ok" and record["embeddings"] == f"{tid}.npz"
            assert record["final"]["knn_accuracy"] == pytest.approx(0.6 + cfg["seed"] / 100)
        lifted = {"fraction_easy": 0.25, "fraction_semihard": 0.5, "fraction_hard": 0.25, "active_anchors": None,
                  "effective_margin": 0.2, "spread": None}  # the fake trial reports no initial_spread
        assert record["initial"] == (lifted if record["history"] else None)


@pytest.mark.slow
def test_interrupted_grid_resumes_without_rerunning_finished_trials(
    ray_session: None, no_retries: None, fake_setup: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    preset, data_dir = fake_setup
    (data_dir / "INTERRUPT").touch()
    assert run_grid(str(preset), data_dir, tmp_path, backend="ray", trial_fn=fake_trial) == 1
    out = capsys.readouterr().out
    assert "2 unfinished; re-run the same command to resume" in out
    # the line names what the trial raised in its worker (Ray cancels the task), without Ray's coloured traceback
    assert out.count("failed in Ray (TaskCancelledError: ") == 2 and "\x1b" not in out and "ImplicitFunc" not in out
    first = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in (tmp_path / "fake/records").glob("*")}
    assert sorted(path.suffix for path in first) == [".json"] * 14 + [".npz"]
    assert (tmp_path / "fake" / "ray" / "tuner.pkl").is_file() and not (tmp_path / "fake" / "tuner.pkl").exists()
    ran_before = len(calls(data_dir))

    (data_dir / "INTERRUPT").unlink()
    assert run_grid(str(preset), data_dir, tmp_path, backend="ray", trial_fn=fake_trial) == 0
    out = capsys.readouterr().out
    print(out)
    assert "resuming" in out and "16 trials:" in out and "unfinished" not in out
    rerun = calls(data_dir)[ran_before:]
    assert sorted(point["loss"] for point in rerun) == ["batch-all", "batch-hard"]
    assert all((point["seed"], point["margin"], point["batch_size"]) == (1, 0.2, 8) for point in rerun)
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in first} == first
    assert len(records(tmp_path / "fake")) == 16


def test_local_backend_resumes_and_refuses_a_changed_grid(fake_setup: tuple[Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    preset, data_dir = fake_setup
    (data_dir / "INTERRUPT").touch()
    with pytest.raises(KeyboardInterrupt):
        run_grid(str(preset), data_dir, tmp_path, backend="local", trial_fn=fake_trial)
    assert not (tmp_path / "fake" / LOCK_NAME).exists()
    before = {tid: (tmp_path / "fake/records" / f"{tid}.json").stat().st_mtime_ns for tid in records(tmp_path / "fake")}
    assert len(before) == 1
    (data_dir / "INTERRUPT").unlink()
    assert run_grid(str(preset), data_dir, tmp_path, backend="local", trial_fn=fake_trial) == 0
    assert len(records(tmp_path / "fake")) == 16 and len(calls(data_dir)) == 17
    ok = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[") and ": ok, " in line]
    assert ["0 s (shared CPU: cpu_share 0.50);" in line for line in ok] == [False, True], ok  # seeds 0, 1
    assert not (tmp_path / "fake" / LOCK_NAME).exists()
    assert all((tmp_path / "fake/records" / f"{tid}.json").stat().st_mtime_ns == ns for tid, ns in before.items())

    changed = json.loads(preset.read_text())
    changed["axes"]["margin"] = [0.2, 0.3]
    preset.write_text(json.dumps(changed))
    with pytest.raises(GridError, match=r"different grid \(axes.margin: \[0.2, 0.5\] there, \[0.2, 0.3\] now\)"):
        run_grid(str(preset), data_dir, tmp_path, backend="local", trial_fn=fake_trial)
    assert len(records(tmp_path / "fake")) == 16 and len(calls(data_dir)) == 17
    assert run_grid(str(preset), data_dir, tmp_path, experiment="fake2", backend="local", trial_fn=fake_trial) == 0
    assert len(records(tmp_path / "fake2")) == 16


def test_a_changed_grid_must_keep_every_recorded_trial(fake_setup: tuple[Path, Path], tmp_path: Path) -> None:
    preset, data_dir = fake_setup
    assert run_grid(str(preset), data_dir, tmp_path, backend="local", trial_fn=fake_trial) == 0
    before = snapshot(tmp_path / "fake")
    (tmp_path / "fake" / "ray").mkdir()  # stands for Ray's state of the smaller grid

    grown = json.loads(preset.read_text())  # an added margin, for one dataset's batch-all only
    grown["blocks"] = [{}, {"loss": ["batch-all"], "margin": [0.8]}]
    preset.write_text(json.dumps(grown))
    assert run_grid(str(preset), data_dir, tmp_path, backend="local", trial_fn=fake_trial) == 0
    new_calls = calls(data_dir)[16:]
    assert len(new_calls) == 4 and {(point["loss"], point["margin"]) for point in new_calls} == {("batch-all", 0.8)}
    assert {path: snapshot(tmp_path / "fake")[path] for path in before} == before
    assert len(records(tmp_path / "fake")) == 20 and not (tmp_path / "fake" / "ray").exists()
    stored = json.loads((tmp_path / "fake" / "grid.json").read_text())
    assert stored["blocks"] == grown["blocks"] and stored["data"]["mnist"] == fingerprint("mnist", data_dir)
    assert run_grid(str(preset), data_dir, tmp_path, backend="local", trial_fn=fake_trial) == 0  # the same grid now
    assert len(calls(data_dir)) == 20

    dropped = {**grown, "blocks": [{"margin": [0.2]}, {"loss": ["batch-all"], "margin": [0.8]}]}  # margin 0.5 gone
    budget = {**grown, "fixed": {**grown["fixed"], "budget_samples": 128}}
    for other, lost in ((dropped, 8), (budget, 20)):
        preset.write_text(json.dumps(other))
        with pytest.raises(GridError, match=rf"holds a different grid .* that would drop {lost} of its recorded"):
            run_grid(str(preset), data_dir, tmp_path, backend="local", trial_fn=fake_trial)
    assert len(calls(data_dir)) == 20 and len(records(tmp_path / "fake")) == 20


def test_a_point_without_a_record_may_leave_the_grid(fake_setup: tuple[Path, Path], tmp_path: Path) -> None:
    preset, data_dir = fake_setup
    (data_dir / "INTERRUPT").touch()  # stops the run after its first trial: batch-all, margin 0.2, B 8, seed 0
    with pytest.raises(KeyboardInterrupt):
        run_grid(str(preset), data_dir, tmp_path, backend="local", trial_fn=fake_trial)
    (data_dir / "INTERRUPT").unlink()
    assert len(records(tmp_path / "fake")) == 1
    narrow = json.loads(preset.read_text())
    narrow["axes"]["margin"] = [0.2, 0.3]  # 0.5 had no record yet
    preset.write_text(json.dumps(narrow))
    assert run_grid(str(preset), data_dir, tmp_path, backend="local", trial_fn=fake_trial) == 0
    assert len(records(tmp_path / "fake")) == 16 and {point["margin"] for point in calls(data_dir)} == {0.2, 0.3}


def test_blocks_make_a_grid_a_union_of_products_in_the_grid_order() -> None:
    from bench.experiment.gridspec import parse_grid

    raw = {"axes": {"dataset": ["mnist", "cifar10"], "loss": ["batch-all", "adaptive-mu"], "margin": [0.2],
                    "batch_size": [64], "seed": [0, 1]},
           "per_dataset": {"cifar10": {"axes": {"batch_size": [256]}}},
           "blocks": [{"loss": ["batch-all"], "margin": [0.2, 0.8]}, {"loss": ["adaptive-mu"], "margin": [0.05, 0.2]},
                      {"dataset": ["mnist"], "loss": ["batch-all"], "margin": [0.2]}]}
    grid = parse_grid(raw)
    cells = [(p["dataset"], p["loss"], p["margin"], p["batch_size"], p["seed"]) for p in grid.points()]
    assert cells == [(d, loss, m, b, s) for d, b in (("mnist", 64), ("cifar10", 256))
                     for loss, margins in (("batch-all", (0.2, 0.8)), ("adaptive-mu", (0.2, 0.05)))
                     for m in margins for s in (0, 1)]
    assert parse_grid({**raw, "blocks": None}).points() == parse_grid({**raw, "blocks": [{}]}).points() == [
        p for p in grid.points() if p["margin"] == 0.2]
    for blocks, message in (([], "non-empty list"), ([{"lr": [0.1]}], "names ['lr']"),
                            ([{"dataset": ["svhn"]}], "datasets outside"), ([{"margin": []}], "non-empty list")):
        with pytest.raises(GridError, match=re.escape(message)):
            parse_grid({**raw, "blocks": blocks})


def _bad(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(text)
    return str(path)


def test_bad_presets_and_missing_data_fail_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    good = json.dumps(FAKE_GRID)
    data_dir = tmp_path / "data"
    write_synthetic(data_dir, "mnist", n_train=50, n_test=20)
    cases = {
        f"unknown preset 'nope'; valid: {', '.join(preset_names())}": ["--preset", "nope"],
        "cannot be read as JSON": ["--preset", _bad(tmp_path, "broken", good[:-3])],
        "unknown config key(s) ['learning_rate']": ["--preset", _bad(tmp_path, "key", good.replace(
            '"checkpoints"', '"learning_rate"'))],
        "margin must be >= 0, got -1.0": ["--preset", _bad(tmp_path, "margin", good.replace("0.5]", "-1]"))],
        "budget_samples must be int, got '64'": ["--preset", _bad(tmp_path, "type", good.replace("64", '"64"'))],
        'axis "seed" must be a non-empty list': ["--preset", _bad(tmp_path, "axis", good.replace("[0, 1]", "[]"))],
        "no mnist.npz": ["--preset", _bad(tmp_path, "ok", good), "--data-dir", str(tmp_path / "missing")],
        '"fresh_seeds" [1, 2] overlap the selection seeds [0, 1] (seed 1)': ["--preset", _bad(
            tmp_path, "fresh", good[:-1] + ', "fresh_seeds": [1, 2]}')],
        "no preset given: using 'cpu'": ["--preset", "", "--data-dir", str(tmp_path / "missing")],
    }
    monkeypatch.delenv("TRIPLETBENCH_DOWNLOAD", raising=False)
    common = ["--results", str(tmp_path / "results"), "--data-dir", str(data_dir)]
    in_process = [expected for expected in cases if not expected.startswith(("unknown preset", "no mnist.npz"))]
    procs = {  # an unknown preset and missing data at the process level too, beside the in-process cases
        expected: subprocess.Popen([sys.executable, "-m", "bench.grid", *common, *argv], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for expected, argv in cases.items() if expected not in in_process
    }
    ended: dict[str, tuple[int, str, str]] = {}
    for expected in in_process:
        code = grid_main([*common, *cases[expected]])
        ended[expected] = (code, *capsys.readouterr())
    for expected, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        ended[expected] = (proc.returncode, out, err)
    assert len(ended) == len(cases) and len(procs) == 2
    for expected, (code, out, err) in ended.items():
        assert code == 2, (expected, out, err)
        assert len(err.splitlines()) == 1 and err.startswith("python -m bench.grid: error: "), (expected, err)
        assert expected in out + err, (expected, out, err)
    assert not (tmp_path / "results").exists()


def test_out_of_memory_errors_are_recognised() -> None:
    assert is_oom(RuntimeError("CUDA error: out of memory")) and is_oom(MemoryError())
    assert is_oom(RuntimeError("Task was killed due to the node running low on memory.\nMemory on the node"))
    assert not is_oom(ValueError("loss is NaN")) and not is_oom(RuntimeError("The actor died unexpectedly"))


def test_one_line_drops_rays_colour_codes_and_collapses_whitespace() -> None:
    coloured = RuntimeError("\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1)\n  File \"x.py\"")
    assert one_line(coloured) == 'RuntimeError: ray::ImplicitFunc.train() (pid=1) File "x.py"'
    assert one_line(ValueError("a" * 50), limit=10) == "ValueErro…"


def test_the_estimate_of_the_time_left_counts_the_trials_that_run_at_once() -> None:
    """Ten 600 s trials two at a time: when the first pair finishes, 8 are left, 2400 s of work. The first
    line of the pair must not say twice that (elapsed / trials finished alone: 600 / 1 × 9 = 5400 s)."""
    truth = 4 * 600.0
    first, second = eta_seconds(600.0, 1, 2, 9), eta_seconds(600.0, 2, 2, 8)
    assert second == truth and abs(first - truth) / truth < 0.15
    assert eta_seconds(1800.0, 6, 2, 4) == 1200.0  # past the first wave, the rate is the trials finished
    assert eta_seconds(600.0, 1, 1, 9) == 5400.0  # one at a time: each trial takes what the first took


def test_without_ray_auto_falls_back_to_local(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "ray.tune", None)
    assert pick_backend("auto") == "local" and "(--backend local)" in capsys.readouterr().out
    assert pick_backend("local") == "local"
    with pytest.raises(GridError, match="Ray Tune cannot be imported"):
        pick_backend("ray")


def test_data_is_part_of_the_experiment_same_data_resumes_other_data_is_refused(
    fake_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    preset, data_dir = fake_setup
    unfixed = json.loads(preset.read_text())
    del unfixed["fixed"]["threads"]
    preset.write_text(json.dumps(unfixed))
    results = tmp_path / "results"
    assert run_grid(str(preset), data_dir, results, backend="local", trial_fn=fake_trial) == 0
    first = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in (results / "fake/records").glob("*")}
    print_a = fingerprint("mnist", data_dir)
    spec = json.loads((results / "fake/grid.json").read_text())
    assert spec["data"] == {"mnist": print_a} and spec["threads"] == os.cpu_count()
    assert all(record["config"]["threads"] == os.cpu_count() for record in records(results / "fake").values())

    same = tmp_path / "same"  # the same images at another path, written anew: a new mtime, the same content
    write_synthetic(same, "mnist", n_train=50, n_test=20)
    assert run_grid(str(preset), same, results, backend="local", trial_fn=fake_trial) == 0
    assert len(calls(data_dir)) == 16 and not calls(same)
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in first} == first

    other = tmp_path / "other"  # the same arrays but one pixel
    arrays = dict(np.load(same / "mnist.npz"))
    arrays["x_test"][0, 0, 0] ^= 1
    other.mkdir()
    np.savez(other / "mnist.npz", **arrays)
    print_b = fingerprint("mnist", other)
    assert print_b != print_a
    argv = [sys.executable, "-m", "bench.grid", "--preset", str(preset), "--data-dir", str(other),
            "--results", str(results), "--backend", "local"]
    for env, hint in (({}, "--experiment NAME"), ({"MAKELEVEL": "1"}, "EXPERIMENT=NAME")):
        outside_make = {key: value for key, value in os.environ.items() if key != "MAKELEVEL"}  # make test sets it
        proc = subprocess.run(argv, cwd=ROOT, env={**outside_make, **env}, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert f"was run on other data (fingerprint mnist {print_a} there, {print_b} now" in proc.stderr
        assert f"pass {hint} to start a new experiment" in proc.stderr
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in first} == first
    assert sorted(p.name for p in (results / "fake").iterdir()) == ["grid.json", "records"]

    assert run_grid(str(preset), other, results, experiment="other", backend="local", trial_fn=fake_trial) == 0
    by_a, by_b = records(results / "fake"), records(results / "other")
    assert len(by_b) == 16 and not set(by_a) & set(by_b)
    assert {record["data"]["fingerprint"] for record in by_b.values()} == {print_b}


def test_the_different_grid_refusal_names_the_make_variable_under_make(fake_setup: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    preset, data_dir = fake_setup
    assert run_grid(str(preset), data_dir, tmp_path, backend="local", trial_fn=fake_trial) == 0
    changed = json.loads(preset.read_text())
    changed["axes"]["seed"] = [0, 2]
    preset.write_text(json.dumps(changed))
    argv = [sys.executable, "-m", "bench.grid", "--preset", str(preset), "--data-dir", str(data_dir),
            "--results", str(tmp_path), "--backend", "local"]
    proc = subprocess.run(argv, cwd=ROOT, env={**os.environ, "MAKELEVEL": "1"}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert ("holds a different grid (axes.seed: [0, 1] there, [0, 2] now) that would drop 8 of its recorded trials; "
            "pass EXPERIMENT=NAME") in proc.stderr


def test_argparse_abbreviations_are_refused(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.grid", "--smok", "--results", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unrecognized arguments: --smok" in proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_killed_worker_is_reported_rerun_finishes_it_and_a_resume_without_rays_state_runs_nothing(
    ray_session: None, fake_setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    preset, data_dir = fake_setup
    narrow = json.loads(preset.read_text())
    narrow["axes"]["margin"] = [0.2]  # 8 trials
    preset.write_text(json.dumps(narrow))
    (data_dir / "KILL").touch()
    assert run_grid(str(preset), data_dir, tmp_path, backend="ray", trial_fn=fake_trial) == 1
    out = capsys.readouterr().out
    print(out)
    assert "'loss': 'batch-all', 'margin': 0.2, 'batch_size': 8, 'seed': 1} failed in Ray (" in out, out
    assert out.count("failed in Ray") == 1 and "re-run the same command to resume it" in out, out
    assert "1 unfinished" in out, out
    first = snapshot(tmp_path / "fake")
    assert len([path for path in first if path.suffix == ".json"]) == 7
    killed = {"dataset": "mnist", "loss": "batch-all", "margin": 0.2, "batch_size": 8, "seed": 1}
    assert calls(data_dir).count(killed) == 1 + MAX_NODE_FAILURES  # a lost worker is retried, then reported

    (data_dir / "KILL").unlink()
    assert run_grid(str(preset), data_dir, tmp_path, backend="ray", trial_fn=fake_trial) == 0
    assert calls(data_dir).count(killed) == 2 + MAX_NODE_FAILURES and len(calls(data_dir)) == 9 + MAX_NODE_FAILURES
    assert {path: snapshot(tmp_path / "fake")[path] for path in first} == first
    done = snapshot(tmp_path / "fake")
    assert len(records(tmp_path / "fake")) == 8

    shutil.rmtree(tmp_path / "fake" / "ray")  # Ray's state gone: a fresh Tune run must skip every record
    capsys.readouterr()
    assert run_grid(str(preset), data_dir, tmp_path, backend="ray", trial_fn=fake_trial) == 0
    assert "8 trials, 8 already recorded" in capsys.readouterr().out
    assert len(calls(data_dir)) == 9 + MAX_NODE_FAILURES and snapshot(tmp_path / "fake") == done


def test_a_changed_model_default_is_another_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    """lr None means the model's default: when the default moves, an old record must not pass for the new trial."""
    import bench.engine.models

    config = {"dataset": "mnist", "loss": "batch-all", "margin": 0.2, "batch_size": 64, "seed": 0}
    before = trial_id(config, "f" * 16)
    assert trial_id({**config, "lr": bench.engine.models.MODEL_DEFAULTS["mnist-net"]["lr"]}, "f" * 16) == before
    moved = {**bench.engine.models.MODEL_DEFAULTS["mnist-net"], "lr": 1.0}
    monkeypatch.setitem(bench.engine.models.MODEL_DEFAULTS, "mnist-net", moved)
    assert trial_id(config, "f" * 16) != before


def test_the_tracked_experiments_are_the_citable_presets() -> None:
    """.gitignore tracks results/<preset>/ (grid.json and records/) exactly for the citable presets, and never
    an experiment's own report or Ray's folders."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode == 0

    for name in preset_names():
        citable = load_preset(name).citable
        assert ignored(f"results/{name}/records/0123456789ab.json") != citable, name
        assert ignored(f"results/{name}/grid.json") != citable, name
        assert ignored(f"results/{name}/report/summary.md") and ignored(f"results/{name}/ray/state.json"), name
    assert ignored("results/cpu-mine/records/0123456789ab.json")  # a user's own run of a citable preset
    citable = {name for name in preset_names() if load_preset(name).citable}
    assert citable == {"cpu", "cpu-losses", "cpu-unseen", "paper", *QUESTIONS}



def test_fresh_seeds_rerun_the_selected_cells_once_the_grid_is_complete(fake_setup: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    """The selected cell of each loss runs again on the fresh seeds (the fake grid: only batch-all m 0.2 B 8 is
    eligible); a resume runs nothing; the report shows those trials as experiment fake-fresh, apart from
    the selection."""
    from bench.reporting.frame import load_records

    preset, data_dir = fake_setup
    preset.write_text(json.dumps({**FAKE_GRID, "fresh_seeds": [5, 6]}))
    results = tmp_path / "results"
    assert run_grid(str(preset), data_dir, results, backend="local", trial_fn=fake_trial) == 0
    ran = calls(data_dir)
    assert len(ran) == 18 and ran[16:] == [{"dataset": "mnist", "loss": "batch-all", "margin": 0.2, "batch_size": 8,
                                            "seed": seed} for seed in (5, 6)]
    assert json.loads((results / "fake" / "grid.json").read_text())["fresh_seeds"] == [5, 6]
    assert run_grid(str(preset), data_dir, results, backend="local", trial_fn=fake_trial) == 0
    assert len(calls(data_dir)) == 18  # nothing rerun
    loaded = load_records(results)
    assert sorted(loaded.grids) == ["fake", "fake-fresh"]
    final = loaded.checkpoints.groupby("trial_id").tail(1)
    assert sorted(final[final.experiment == "fake-fresh"].seed) == [5, 6]
    assert sorted(set(final[final.experiment == "fake"].seed)) == [0, 1]
    assert len(load_records(results, fresh=False).grids) == 1
    report = tmp_path / "report"
    assert run_grid(str(preset), data_dir, results, backend="local", trial_fn=fake_trial, reports=str(report)) == 0
    markdown = (report / "summary.md").read_text()
    assert ("- **fresh seeds:** selection used seeds 0, 1; the test numbers to cite are experiment fake-fresh's "
            "(seeds 5, 6)") in markdown
    assert ("## Experiment fake-fresh" in markdown and "- **fresh seeds:** fake's validation-selected cells re-run on "
            "seeds 5, 6, which took no part in selection (the best loss, too, is fake's): these are the test numbers "
            "to cite") in markdown


def lr_trial(config: dict, report) -> dict:
    """A fake trial whose validation and test MAP@R rise with the lr, logging its (seed, lr) in data_dir."""
    with open(Path(config["data_dir"]) / "calls.log", "a") as log:
        log.write(json.dumps({"seed": config["seed"], "lr": config["lr"]}) + "\n")
    quality = 0.3 + 1000 * config["lr"] + config["seed"] / 1000
    metrics = {**dict.fromkeys(METRICS, 0.5), "checkpoint": 1, "step": 1, "status": "ok", "threads": 1, **INITIAL,
               "val_map_at_r": quality, "map_at_r": quality, "knn_accuracy": quality}
    report(metrics)
    Path(config["save_embeddings"]).write_bytes(b"npz")
    return metrics


def test_a_variant_axis_is_one_more_configuration_selection_chooses_among(fake_setup: tuple[Path, Path],
                                                                          tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """An lr axis: each lr is a cell of its own (the report's variant), selection picks the better lr on validation,
    the fresh seeds rerun that lr, and the headline states the tuning budget (2 configurations per loss)."""
    preset, data_dir = fake_setup
    preset.write_text(json.dumps({"axes": {"dataset": ["mnist"], "loss": ["batch-all"], "margin": [0.2],
                                           "batch_size": [8], "lr": [1e-4, 3e-4], "seed": [0, 1]},
                                  "fixed": {"budget_samples": 64, "checkpoints": 1, "threads": 1},
                                  "fresh_seeds": [5]}))
    results, report = tmp_path / "results", tmp_path / "report"
    assert run_grid(str(preset), data_dir, results, backend="local", trial_fn=lr_trial, reports=str(report)) == 0
    assert "batch-all margin 0.2 B 8 [lr 0.0003] seed 1: ok" in capsys.readouterr().out
    assert calls(data_dir)[-1] == {"seed": 5, "lr": 3e-4} and len(calls(data_dir)) == 5
    import pandas as pd

    summary = pd.read_csv(report / "summary.csv", keep_default_na=False)
    cells = summary[(summary.experiment == "fake") & (summary.loss == "batch-all")]
    assert sorted(cells.variant) == ["lr 0.0001", "lr 0.0003"] and set(cells.n_configs) == {2}
    fresh = summary[(summary.experiment == "fake-fresh") & (summary.loss == "batch-all")]
    assert list(fresh.variant) == ["lr 0.0003"] and list(fresh.n_configs) == [2]  # selected among the parent's 2
    assert list(cells[cells.selected.astype(str) == "True"].variant) == ["lr 0.0003"]
    markdown = (report / "summary.md").read_text()
    assert markdown.count("Tuning budget: 2 configurations (margin × batch size × variant) per loss") == 2
    assert "| batch-all [lr 0.0003] |" in markdown


def test_a_normalize_axis_gets_an_untrained_baseline_per_normalisation_each_named(
        fake_setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The untrained net's embeddings depend on `normalize`: one baseline per value, and the grid's line says which."""
    preset, data_dir = fake_setup
    preset.write_text(json.dumps({"axes": {"dataset": ["mnist"], "loss": ["batch-all"], "margin": [0.2],
                                           "batch_size": [8], "normalize": [True, False], "seed": [0]},
                                  "fixed": {"budget_samples": 16, "checkpoints": 1, "threads": 1}}))
    assert run_grid(str(preset), data_dir, tmp_path / "results", backend="local", reports=None) == 0  # real trials
    out = capsys.readouterr().out
    assert out.count("baseline untrained mnist seen seed 0: ") == 1
    assert out.count("baseline untrained mnist seen seed 0 [normalize off]: ") == 1
    untrained = [r["config"]["normalize"] for r in records(tmp_path / "results" / "fake").values()
                 if r.get("baseline") == "untrained"]
    assert sorted(untrained) == [False, True]


def one_cell_preset(path: Path, precision: str, seeds: list[int], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A preset at `path` of one tiny real cell (batch-all m 0.2, B 8, 16 samples) on `seeds` in `precision`, run
    here as on a single machine under no make (RAY_ADDRESS and MAKELEVEL unset)."""
    axes = {**FAKE_GRID["axes"], "loss": ["batch-all"], "margin": [0.2], "batch_size": [8], "seed": seeds}
    fixed = {"budget_samples": 16, "checkpoints": 1, "threads": 1, "precision": precision}
    path.write_text(json.dumps({**FAKE_GRID, "axes": axes, "fixed": fixed}))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MAKELEVEL", raising=False)
    return path


def test_a_bf16_grid_is_refused_on_a_cpu_without_native_bf16_unless_allowed(
        fake_setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Emulated bf16 is an order of magnitude slower and rounds unlike a native run: the grid refuses the trials it
    would run, before any of them, naming the flag (the make variable under make); the flag runs them; a grid with
    every trial recorded runs nothing and passes."""
    import bench.grid as grid_module

    _, data_dir = fake_setup
    preset = one_cell_preset(tmp_path / "bf16.json", "bf16", [0], monkeypatch)
    monkeypatch.setattr(grid_module, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(grid_module, "cpu_isa", lambda: "avx2 avx512f")
    results = tmp_path / "results"
    refused = (r"preset bf16 asks for precision bf16, but this CPU \(.+; flags avx2 avx512f\) has neither "
               r"avx512_bf16 nor amx_bf16: bf16 would run emulated.+pass --allow-emulated-bf16 to run it anyway")
    with pytest.raises(GridError, match=refused):
        run_grid(str(preset), data_dir, results, backend="local", device="cpu", reports=None)
    assert not list((results / "bf16" / "records").glob("*.json"))  # refused before any trial or baseline
    monkeypatch.setenv("MAKELEVEL", "1")
    with pytest.raises(GridError, match="pass GRID_ARGS=--allow-emulated-bf16"):
        run_grid(str(preset), data_dir, results, backend="local", device="cpu", reports=None)
    assert run_grid(str(preset), data_dir, results, backend="local", device="cpu", reports=None,
                    allow_emulated_bf16=True) == 0
    trials = [r for f in (results / "bf16" / "records").glob("*.json") if (r := json.loads(f.read_text()))["kind"]
              == "trial"]
    assert len(trials) == 1 and trials[0]["final"]["precision"] == "bf16"
    assert trials[0]["provenance"]["cpu_isa"] == cpu_isa()  # the record names this host's flags
    assert run_grid(str(preset), data_dir, results, backend="local", device="cpu", reports=None) == 0  # all recorded


def test_an_experiment_recorded_on_one_kind_of_cpu_is_not_continued_on_another_unless_allowed(
        fake_setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A seed pairs trials only on one kind of CPU: the rest of an experiment is refused, before any trial, on a CPU
    of other flags or another model than its records name, with the flag under make too; the flag runs them."""
    import bench.grid as grid_module

    _, data_dir = fake_setup
    preset = one_cell_preset(tmp_path / "one.json", "fp32", [0], monkeypatch)
    results = tmp_path / "results"
    assert run_grid(str(preset), data_dir, results, backend="local", device="cpu", reports=None) == 0
    one_cell_preset(preset, "fp32", [0, 1], monkeypatch)  # a seed more
    records_dir = results / "one" / "records"
    before = sorted(path.name for path in records_dir.iterdir())
    here = grid_module.cpu_isa()
    other = "" if here else "avx2"  # flags this host has not
    monkeypatch.setattr(grid_module, "cpu_isa", lambda: other)
    refused = (r"experiment one: its recorded trials ran on another kind of CPU \(1 on .+ \[.*\]\) than this one "
               r".+another experiment here \(--experiment NAME\), or pass --allow-mixed-cpus to mix them")
    with pytest.raises(GridError, match=refused):
        run_grid(str(preset), data_dir, results, backend="local", device="cpu", reports=None)
    assert sorted(path.name for path in records_dir.iterdir()) == before  # refused before any trial or baseline
    monkeypatch.setattr(grid_module, "cpu_isa", lambda: here)
    monkeypatch.setattr(grid_module, "cpu_model", lambda: "Another CPU")  # same flags, another model
    monkeypatch.setenv("MAKELEVEL", "1")
    under_make = r"than this one \(Another CPU.*\(EXPERIMENT=NAME\).*pass GRID_ARGS=--allow-mixed-cpus"
    with pytest.raises(GridError, match=under_make):
        run_grid(str(preset), data_dir, results, backend="local", device="cpu", reports=None)
    assert run_grid(str(preset), data_dir, results, backend="local", device="cpu", reports=None,
                    allow_mixed_cpus=True) == 0
    trials = [r for f in records_dir.glob("*.json") if (r := json.loads(f.read_text()))["kind"] == "trial"]
    assert sorted(r["config"]["seed"] for r in trials) == [0, 1]
