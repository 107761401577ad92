"""`make gpu-check`: one line and exit 2 without a GPU; its smoke run end to end without Ray or pml in process."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from bench.gpu_check import MAX_FILES, MAX_MIB, NO_GPU, run_command

ROOT = Path(__file__).resolve().parent.parent
# Hide the in-process imports that a stock PyTorch image lacks: importing any of them then fails.
WITHOUT = ("import sys\nfor name in ('ray', 'pytorch_metric_learning', 'pandas', 'sklearn'):\n"
           "    sys.modules[name] = None\n")


def run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT + code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env})


def test_without_a_gpu_it_says_so_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check"
    result = run(f"from bench.gpu_check import main; sys.exit(main(['--out', {str(out)!r}]))", CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 2
    assert result.stderr.strip() == NO_GPU and result.stdout == ""
    assert not out.exists()


def test_smoke_runs_every_step_into_one_small_folder(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check"
    result = run(f"from bench.gpu_check import main; sys.exit(main(['--smoke', '--out', {str(out)!r}]))")
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted(path.name for path in out.rglob("*") if path.is_file())
    assert files == ["gpu_check.md", "grid.tar.gz", "loss_benchmark.csv", "loss_benchmark.md", "loss_benchmark.png",
                     "loss_benchmark_overhead.csv", "step_benchmark.csv", "step_benchmark.json"]
    assert len(files) <= MAX_FILES and all((out / name).stat().st_size < MAX_MIB * 2**20 for name in files)
    report = (out / "gpu_check.md").read_text()
    for step in ("tests (pytest -m cuda)", "throughput", "loss benchmark", "reduced paper grid (local backend)"):
        assert f"| {step} | ok |" in report, report
    assert "git_commit" in report and "hardware" in report
    assert "needs a CUDA GPU" in report or "passed" in report  # the pytest output, skipped here without CUDA
    with tarfile.open(out / "grid.tar.gz") as archive:
        names = archive.getnames()
    trials = [name for name in names if name.endswith(".json") and "/records/" in name and "baseline-" not in name]
    assert "gpu-check/grid.json" in names and len(trials) == 8
    assert any("/records/baseline-" in name for name in names)  # the grid's baselines travel with it


def test_a_step_that_lacks_a_package_is_skipped_naming_it_and_a_failure_is_failed() -> None:
    status, details = run_command([sys.executable, "-c", "import tripletbench_absent_module.sub"])
    assert status == "skipped: needs tripletbench_absent_module" and "No module named" in details
    assert run_command([sys.executable, "-c", "print('x'); raise SystemExit(3)"]) == ("failed (exit 3)", "```\nx\n```")
    assert run_command([sys.executable, "-c", "print('fine')"]) == ("ok", "```\nfine\n```")
