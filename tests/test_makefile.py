"""`make install` on a fresh machine: a disk too full for the venv fails before pip, in one line, creating nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("need_gib, fails", [(10**9, True), (0, False)])
def test_the_free_space_check_runs_before_the_venv(tmp_path: Path, need_gib: int, fails: bool) -> None:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    # PYTHON=false: past the space check, creating the venv fails at once, so the passing case installs nothing.
    result = subprocess.run(["make", "--no-print-directory", "install", f"INSTALL_GIB={need_gib}", "PYTHON=false"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert ("GiB free on this disk" in errors[0]) is fails
    assert not (tmp_path / ".venv").exists()
