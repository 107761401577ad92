"""Injected faults: a damaged record, a full disk, a kill between the temporary file and its rename."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

import bench.engine.files
from bench.engine.files import write_atomic, write_json
from bench.engine.synthetic import write_synthetic
from bench.experiment.gridspec import GridError
from bench.grid import main as grid_main
from bench.grid import run_grid
from tests.test_grid import fake_trial

ROOT = Path(__file__).resolve().parent.parent
PRESET = {"axes": {"dataset": ["mnist"], "loss": ["batch-all"], "margin": [0.2], "batch_size": [8], "seed": [0, 1, 2]},
          "fixed": {"budget_samples": 64, "checkpoints": 2, "threads": 1}}


@pytest.fixture
def grid(tmp_path: Path) -> tuple[str, Path, Path]:
    """(preset path, data folder, results folder) of a 3-trial local grid of fake trials."""
    preset = tmp_path / "faults.json"
    preset.write_text(json.dumps(PRESET))
    write_synthetic(tmp_path / "data", "mnist")
    return str(preset), tmp_path / "data", tmp_path / "results"


def records(results: Path) -> dict[str, int]:
    """Record file name -> mtime (ns) under results/faults/records."""
    return {p.name: p.stat().st_mtime_ns for p in sorted((results / "faults" / "records").glob("*.json"))}


def test_a_damaged_record_stops_the_grid_in_one_line_naming_it(grid: tuple[str, Path, Path], capsys) -> None:
    preset, data, results = grid
    assert run_grid(preset, data, results, backend="local", trial_fn=fake_trial) == 0
    before = records(results)
    damaged = results / "faults" / "records" / sorted(before)[1]
    damaged.write_text(damaged.read_text()[:40])  # truncated, as a storage crash leaves it
    with pytest.raises(GridError, match=f"{damaged}: not valid JSON .*; move it aside"):
        run_grid(preset, data, results, backend="local", trial_fn=fake_trial)
    assert {name: mtime for name, mtime in records(results).items() if name != damaged.name} == {
        name: mtime for name, mtime in before.items() if name != damaged.name}  # no other record touched
    damaged.rename(damaged.with_suffix(".json.damaged"))  # the recovery the message names
    assert run_grid(preset, data, results, backend="local", trial_fn=fake_trial) == 0
    assert set(records(results)) == set(before)


def test_a_full_disk_ends_the_grid_in_one_line_and_loses_nothing(
    grid: tuple[str, Path, Path], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """ENOSPC from the writer after the first record: one line naming the file, no temporary file left, the first
    record intact; once space is free the same command completes without rewriting it."""
    preset, data, results = grid
    original = bench.engine.files.write_atomic
    written: list[Path] = []

    def full_after_one_record(path: Path, write) -> Path:
        if Path(path).parent.name == "records" and Path(path).suffix == ".json":
            written.append(Path(path))
            if len(written) > 1:  # the disk fills while the second record is written
                def partial(file) -> None:
                    file.write(b'{"trial_id": ')
                    raise OSError(errno.ENOSPC, "No space left on device")

                return original(path, partial)
        return original(path, write)

    monkeypatch.setattr(bench.engine.files, "write_atomic", full_after_one_record)
    monkeypatch.setattr("bench.grid.run_trial", fake_trial)
    argv = ["--preset", preset, "--data-dir", str(data), "--results", str(results), "--backend", "local",
            "--no-report"]
    monkeypatch.setattr("bench.grid.record_baselines", lambda ctx, points: None)
    assert grid_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "records/" in err and "re-run" in err
    folder = results / "faults" / "records"
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    first = records(results)
    assert len(first) == 1 and json.loads((folder / next(iter(first))).read_text())["status"] == "ok"
    monkeypatch.setattr(bench.engine.files, "write_atomic", original)
    assert grid_main(argv) == 0
    after = records(results)
    assert len(after) == 3 and {name: after[name] for name in first} == first


def test_a_kill_between_the_temporary_file_and_the_rename_leaves_the_old_record(tmp_path: Path) -> None:
    """SIGKILL after the new content is on disk but before os.replace: the target keeps its old, whole content."""
    target = tmp_path / "records" / "r.json"
    write_json(target, {"status": "ok", "n": 1})
    script = ("import os, signal, sys; from bench.engine.files import write_atomic; "
              "write_atomic(sys.argv[1], lambda f: (f.write(b'{\"status\": \"ok\", \"n\": 2'), f.flush(), "
              "os.kill(os.getpid(), signal.SIGKILL)))")
    proc = subprocess.run([sys.executable, "-c", script, str(target)], cwd=ROOT)
    assert proc.returncode == -9
    assert json.loads(target.read_text()) == {"status": "ok", "n": 1}
    leftovers = [p.name for p in target.parent.iterdir() if p.name != "r.json"]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")  # never read as a record: *.json skips it


def test_a_failed_write_names_the_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    def fail(file) -> None:
        file.write(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left on device") as caught:
        write_atomic(tmp_path / "x.json", fail)
    assert caught.value.filename == str(tmp_path / "x.json") and list(tmp_path.iterdir()) == []
