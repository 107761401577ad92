"""Provenance: the commit a record names is '-dirty' only when code changed, not when a run wrote its outputs."""

import subprocess
from pathlib import Path

import pytest
import torch

from bench.experiment.provenance import cpu_kind, git_commit, hardware


def test_a_rewritten_grid_json_is_not_dirty_code(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "results" / "cpu").mkdir(parents=True)
    (tmp_path / "results" / "cpu" / "grid.json").write_text("{}")
    (tmp_path / "trial.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-qm", "one")
    sha = git("rev-parse", "HEAD")
    assert git_commit(tmp_path) == sha
    (tmp_path / "results" / "cpu" / "grid.json").write_text('{"axes": {}}')  # a grown grid rewrites it
    (tmp_path / "notes.txt").write_text("untracked")
    assert git_commit(tmp_path) == sha
    (tmp_path / "trial.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == sha + "-dirty"
    assert git_commit(tmp_path / "nowhere") == "unknown"


def test_hardware_names_its_thread_count_in_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert hardware("cpu").endswith("(1 thread)")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert hardware("cpu").endswith("(2 threads)")
    assert hardware("cpu", threads=1).endswith("(1 thread)")  # a trial's own count wins over torch's now


def test_cpu_isa_names_the_flags_that_decide_kernels_and_native_bf16() -> None:
    """Two CPUs of one model name ("AMD EPYC") differ in these flags, and so in a trial's speed and rounding."""
    from bench.engine.precision import cpu_has_native_bf16, cpu_isa
    from bench.experiment.provenance import provenance

    native = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx512_bf16 avx2 avx512f\n"
    assert cpu_isa(native) == "avx2 avx512f avx512_bf16" and cpu_has_native_bf16(cpu_isa(native))
    assert cpu_isa(native.replace("avx512_bf16 ", "")) == "avx2 avx512f"
    assert not cpu_has_native_bf16("avx2 avx512f") and not cpu_has_native_bf16("")
    assert cpu_isa("flags\t\t: fpu sse2\n") == "" and cpu_isa("model name\t: M1\n") is None
    assert provenance()["cpu_isa"] == cpu_isa()


def test_cpu_kind_puts_the_flags_before_the_thread_count() -> None:
    """The one spelling of a CPU with its flags that the grid's refusal and the report's hardware line share."""
    assert cpu_kind("AMD EPYC (1 thread)", "avx2") == "AMD EPYC [avx2] (1 thread)"
    assert cpu_kind("AMD EPYC", "avx2 avx512f") == "AMD EPYC [avx2 avx512f]"
    assert cpu_kind("Old CPU (2 threads)", "") == "Old CPU [none of avx2, avx512f, avx512_bf16, amx_bf16] (2 threads)"
    assert cpu_kind("AMD EPYC (1 thread)", None) == "AMD EPYC (1 thread)"  # flags not recorded
