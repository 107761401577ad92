"""The grid runner: presets, records, Ray and local backends, failures, resume and bad input."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch

from bench.config import METRICS
from bench.grid import (
    AXES,
    Context,
    GridError,
    is_oom,
    load_preset,
    main,
    pick_backend,
    preset_names,
    ray_failure,
    read_record,
    run_grid,
    trial_id,
)
from bench.synthetic import write_synthetic

ROOT = Path(__file__).resolve().parent.parent
RECORD_KEYS = {"trial_id", "experiment", "preset", "config", "status", "reason", "history", "final", "provenance",
               "embeddings"}
FAKE_GRID = {
    "doc": "fake trials: margin 0.5 raises OOM, batch size 16 raises a NaN error, batch-hard diverges",
    "axes": {"dataset": ["mnist"], "loss": ["batch-all", "batch-hard"], "margin": [0.2, 0.5],
             "batch_size": [8, 16], "seed": [0, 1]},
    "fixed": {"budget_samples": 64, "checkpoints": 2},
}


def fake_trial(config: dict, report) -> dict:
    """Logs its call in data_dir, fails on purpose, and stops like Ctrl-C while data_dir/INTERRUPT exists."""
    data_dir = Path(config["data_dir"])
    with open(data_dir / "calls.log", "a") as log:
        log.write(json.dumps({axis: config[axis] for axis in AXES}) + "\n")
    if (data_dir / "INTERRUPT").exists() and (config["seed"], config["margin"], config["batch_size"]) == (1, 0.2, 8):
        raise KeyboardInterrupt
    if config["margin"] == 0.5:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
    if config["batch_size"] == 16:
        raise ValueError("loss is NaN\nat step 3")
    for checkpoint in (1, 2):
        metrics = {**dict.fromkeys(METRICS, 0.5), "checkpoint": checkpoint, "step": checkpoint, "status": "ok",
                   "knn_accuracy": 0.4 + checkpoint / 10 + config["seed"] / 100}
        if config["loss"] == "batch-hard" and checkpoint == 2:
            metrics.update(status="diverged", reason="non-finite loss at step 2", knn_accuracy=math.nan)
        report(metrics)
    if metrics["status"] == "ok":
        Path(config["save_embeddings"]).write_bytes(b"npz")
    return metrics


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray instance with 2 CPUs for this module, its temp folder under pytest's, shut down after."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp_path_factory.mktemp("ray")),
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}})
    yield
    ray.shutdown()


@pytest.fixture
def fake_setup(tmp_path: Path) -> tuple[Path, Path]:
    """(preset path, data folder with a tiny mnist.npz) for the fake grid."""
    preset = tmp_path / "fake.json"
    preset.write_text(json.dumps(FAKE_GRID))
    data_dir = tmp_path / "data"
    write_synthetic(data_dir, "mnist", n_train=50, n_test=20)
    return preset, data_dir


def records(folder: Path) -> dict[str, dict]:
    """trial_id → record of every record file in an experiment folder."""
    return {path.stem: json.loads(path.read_text()) for path in sorted((folder / "records").glob("*.json"))}


def calls(data_dir: Path) -> list[dict]:
    """The grid points the fake trial was called with, in order."""
    log = data_dir / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_shipped_presets_are_valid_and_budgets_equal_per_dataset() -> None:
    assert preset_names() == ["cpu", "cpu-quick", "gpu-check", "paper", "smoke"]
    four = {"batch-all", "batch-hard", "adaptive-mu", "quadruplet"}
    for name in preset_names():
        grid = load_preset(name)
        assert four <= set(grid.axes["loss"])
        budgets = {(p["dataset"], grid.config(p).get("budget_samples")) for p in grid.points()}
        assert len(budgets) == len(grid.axes["dataset"]), (name, budgets)
        assert len({trial_id(grid.config(p)) for p in grid.points()}) == len(grid.points())
    paper = load_preset("paper")
    assert paper.axes["dataset"] == ["mnist", "cifar10"] and len(paper.axes["seed"]) == 3
    assert len(paper.axes["margin"]) >= 3 and len(paper.axes["batch_size"]) >= 3
    cpu = load_preset("cpu")
    assert cpu.axes["dataset"] == ["mnist", "cifar10"] and len(cpu.axes["seed"]) == 3
    assert all(isinstance(margin, float) for margin in cpu.axes["margin"])
    assert len(load_preset("smoke").points()) <= 8


def test_smoke_preset_through_ray_with_real_trials(
    ray_session: None, tiny_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["--preset", "smoke", "--data-dir", str(tiny_data_dir), "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "smoke"
    grid = load_preset("smoke")
    spec = json.loads((folder / "grid.json").read_text())
    assert spec == {"preset": "smoke", "experiment": "smoke", "axes": grid.axes, "fixed": grid.fixed,
                    "per_dataset": grid.per_dataset}
    found = records(folder)
    assert set(found) == {trial_id(grid.config(p)) for p in grid.points()}
    for tid, record in found.items():
        assert set(record) == RECORD_KEYS and record["trial_id"] == tid
        assert record["status"] in ("ok", "collapsed") and record["reason"] is None, record
        assert len(record["history"]) == record["config"]["checkpoints"] == 2
        assert record["final"] == record["history"][-1] and set(METRICS) <= set(record["final"])
        assert record["config"]["data_dir"] == str(tiny_data_dir.resolve())
        assert (folder / "records" / record["embeddings"]).is_file() and record["embeddings"] == f"{tid}.npz"
        assert record["provenance"]["command"].startswith("python -m bench.grid --preset smoke")
        assert record["provenance"]["ray"] == ray.__version__
    assert sum(line.startswith("[") for line in out.splitlines()) == len(found) == 8
    assert "grid smoke: 8 trials: " in out and "unfinished" not in out


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


def test_interrupted_grid_resumes_without_rerunning_finished_trials(
    ray_session: None, fake_setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    preset, data_dir = fake_setup
    (data_dir / "INTERRUPT").touch()
    assert run_grid(str(preset), data_dir, tmp_path, backend="ray", trial_fn=fake_trial) == 1
    assert "2 unfinished; re-run the same command to resume" in capsys.readouterr().out
    first = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in (tmp_path / "fake/records").glob("*")}
    assert sorted(path.suffix for path in first) == [".json"] * 14 + [".npz"]
    assert (tmp_path / "fake" / "tuner.pkl").is_file()
    ran_before = len(calls(data_dir))

    (data_dir / "INTERRUPT").unlink()
    assert run_grid(str(preset), data_dir, tmp_path, backend="ray", trial_fn=fake_trial) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "16 trials:" in out and "unfinished" not in out
    rerun = calls(data_dir)[ran_before:]
    assert sorted(point["loss"] for point in rerun) == ["batch-all", "batch-hard"]
    assert all((point["seed"], point["margin"], point["batch_size"]) == (1, 0.2, 8) for point in rerun)
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in first} == first
    assert len(records(tmp_path / "fake")) == 16


def test_local_backend_resumes_and_refuses_a_changed_grid(fake_setup: tuple[Path, Path], tmp_path: Path) -> None:
    preset, data_dir = fake_setup
    (data_dir / "INTERRUPT").touch()
    with pytest.raises(KeyboardInterrupt):
        run_grid(str(preset), data_dir, tmp_path, backend="local", trial_fn=fake_trial)
    before = {tid: (tmp_path / "fake/records" / f"{tid}.json").stat().st_mtime_ns for tid in records(tmp_path / "fake")}
    assert len(before) == 1
    (data_dir / "INTERRUPT").unlink()
    assert run_grid(str(preset), data_dir, tmp_path, backend="local", trial_fn=fake_trial) == 0
    assert len(records(tmp_path / "fake")) == 16 and len(calls(data_dir)) == 17
    assert all((tmp_path / "fake/records" / f"{tid}.json").stat().st_mtime_ns == ns for tid, ns in before.items())

    changed = json.loads(preset.read_text())
    changed["axes"]["margin"] = [0.2, 0.3]
    preset.write_text(json.dumps(changed))
    with pytest.raises(GridError, match=r"different grid \(axes.margin: \[0.2, 0.5\] there, \[0.2, 0.3\] now\)"):
        run_grid(str(preset), data_dir, tmp_path, backend="local", trial_fn=fake_trial)
    assert len(records(tmp_path / "fake")) == 16 and len(calls(data_dir)) == 17
    assert run_grid(str(preset), data_dir, tmp_path, experiment="fake2", backend="local", trial_fn=fake_trial) == 0
    assert len(records(tmp_path / "fake2")) == 16


def _bad(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(text)
    return str(path)


def test_bad_presets_and_missing_data_fail_with_one_line(tmp_path: Path) -> None:
    good = json.dumps(FAKE_GRID)
    data_dir = tmp_path / "data"
    write_synthetic(data_dir, "mnist", n_train=50, n_test=20)
    cases = {
        "unknown preset 'nope'; valid: cpu, cpu-quick, gpu-check, paper, smoke": ["--preset", "nope"],
        "cannot be read as JSON": ["--preset", _bad(tmp_path, "broken", good[:-3])],
        "unknown config key(s) ['learning_rate']": ["--preset", _bad(tmp_path, "key", good.replace(
            '"checkpoints"', '"learning_rate"'))],
        "margin must be >= 0, got -1.0": ["--preset", _bad(tmp_path, "margin", good.replace("0.5]", "-1]"))],
        "budget_samples must be int, got '64'": ["--preset", _bad(tmp_path, "type", good.replace("64", '"64"'))],
        'axis "seed" must be a non-empty list': ["--preset", _bad(tmp_path, "axis", good.replace("[0, 1]", "[]"))],
        "no mnist.npz": ["--preset", _bad(tmp_path, "ok", good), "--data-dir", str(tmp_path / "missing")],
        "no preset given: using 'cpu'": ["--preset", "", "--data-dir", str(tmp_path / "missing")],
    }
    env = {**os.environ, "TRIPLETBENCH_OFFLINE": "1"}
    procs = {
        expected: subprocess.Popen(
            [sys.executable, "-m", "bench.grid", "--results", str(tmp_path / "results"), "--data-dir", str(data_dir),
             *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for expected, argv in cases.items()
    }
    for expected, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (expected, out, err)
        assert len(err.splitlines()) == 1 and err.startswith("python -m bench.grid: error: "), (expected, err)
        assert expected in out + err, (expected, out, err)
    assert not (tmp_path / "results").exists()


def test_a_worker_killed_for_memory_is_recorded_as_oom_and_other_losses_are_not(
    fake_setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    preset, data_dir = fake_setup
    grid = load_preset(str(preset))
    ctx = Context(grid, "fake", str(tmp_path / "fake"), str(data_dir), "cmd")
    oom, lost = grid.points()[:2]
    ray_failure(ctx, oom, RuntimeError("Task was killed due to the node running low on memory.\nMemory on the node"))
    ray_failure(ctx, lost, RuntimeError("The actor died unexpectedly before finishing this task."))
    record = read_record(ctx, oom)
    assert record["status"] == "OOM" and record["reason"].startswith("RuntimeError: Task was killed due to the node")
    assert record["history"] == [] and record["provenance"]["command"] == "cmd" and record["embeddings"] is None
    assert read_record(ctx, lost) is None and "re-run the same command" in capsys.readouterr().out
    assert is_oom(RuntimeError("CUDA error: out of memory")) and is_oom(MemoryError())
    assert not is_oom(ValueError("loss is NaN"))


def test_without_ray_auto_falls_back_to_local(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "ray.tune", None)
    assert pick_backend("auto") == "local" and "(--backend local)" in capsys.readouterr().out
    assert pick_backend("local") == "local"
    with pytest.raises(GridError, match="Ray Tune cannot be imported"):
        pick_backend("ray")
