"""The experiment lock, with real processes: a live holder refuses a second run, a killed one is taken over."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.engine.synthetic import write_synthetic
from bench.experiment.lock import LOCK_NAME, LockError, acquire, release
from bench.grid import run_grid

ROOT = Path(__file__).resolve().parent.parent
HOLD = "import sys, time; from bench.experiment.lock import acquire; acquire(sys.argv[1], 'holder'); " \
       "print('held', flush=True); " \
       "time.sleep(600)"
PRESET = {"axes": {"dataset": ["mnist"], "loss": ["batch-all"], "margin": [0.2], "batch_size": [8], "seed": [0]},
          "fixed": {"budget_samples": 16, "checkpoints": 1, "threads": 1}}


def _hold(folder: Path) -> subprocess.Popen:
    """A process that takes the lock of `folder` and sleeps; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def trial(config: dict, report) -> dict:
    """A trial that only reports one checkpoint."""
    metrics = {"knn_accuracy": 0.5, "status": "ok"}
    report(metrics)
    return metrics


def test_a_second_run_is_refused_and_a_stale_lock_is_taken_over(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    preset = tmp_path / "one.json"
    preset.write_text(json.dumps(PRESET))
    write_synthetic(tmp_path / "data", "mnist", n_train=50, n_test=20)
    folder = tmp_path / "results" / "one"
    folder.mkdir(parents=True)
    holder = _hold(folder)
    try:
        lock = json.loads((folder / LOCK_NAME).read_text())
        assert lock["pid"] == holder.pid and lock["host"] == socket.gethostname() and lock["command"] == "holder"
        second = subprocess.run(
            [sys.executable, "-m", "bench.grid", "--preset", str(preset), "--data-dir", str(tmp_path / "data"),
             "--results", str(tmp_path / "results"), "--backend", "local"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and len(second.stderr.splitlines()) == 1, second.stderr
        assert f"is being run by pid {holder.pid} on {socket.gethostname()} since " in second.stderr
        assert sorted(path.name for path in folder.iterdir()) == [LOCK_NAME]  # nothing written
        with pytest.raises(LockError, match=f"pid {holder.pid}"):
            acquire(folder)
    finally:
        holder.kill()
        holder.wait()
    assert run_grid(str(preset), tmp_path / "data", tmp_path / "results", backend="local", trial_fn=trial) == 0
    out = capsys.readouterr().out
    assert f"taking over the stale lock of pid {holder.pid} on {socket.gethostname()}" in out
    assert not (folder / LOCK_NAME).exists() and len(list((folder / "records").glob("*.json"))) == 1


def test_a_lock_from_another_host_is_not_taken_and_release_keeps_others_locks(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "then"}))
    with pytest.raises(LockError, match=f"locked by pid 1 on elsewhere since then; if that run is gone, delete "
                       f"{tmp_path / LOCK_NAME}"):
        acquire(tmp_path)
    release(tmp_path / LOCK_NAME)
    assert (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).unlink()
    path = acquire(tmp_path)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    release(path)
    assert not path.exists()

