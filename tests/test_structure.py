"""The folder tree is the architecture: the commands on top, wings below them that import only downward."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {"trial", "grid", "report", "loss_benchmark", "step_benchmark", "gpu_check"}
# a wing may import the wings before it in this order, never one after it, and never a command
LAYERS = ("losses", "bench.engine", "bench.experiment", "bench.reporting")


def layer(module: str) -> int | None:
    """The index in LAYERS of the wing a module belongs to, None for anything else."""
    return next((i for i, wing in enumerate(LAYERS) if module == wing or module.startswith(wing + ".")), None)


def imports(path: Path) -> set[str]:
    """Every module a source file imports (top level or inside functions), absolute names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def modules() -> dict[str, Path]:
    """Module name -> file of everything under losses/ and bench/."""
    out = {}
    for path in [*ROOT.glob("losses/**/*.py"), *ROOT.glob("bench/**/*.py")]:
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def test_the_commands_are_the_only_modules_directly_in_bench() -> None:
    """bench/ holds the six commands, cli.py (their shared argparse) and the wings' folders."""
    top = {path.stem for path in (ROOT / "bench").glob("*.py")} - {"__init__"}
    assert top == COMMANDS | {"cli"}
    assert {path.name for path in (ROOT / "bench").iterdir() if path.is_dir() and path.name != "__pycache__"} == {
        "engine", "experiment", "reporting", "presets"}


def test_wings_import_only_downward_and_never_a_command() -> None:
    """No module in a wing imports a command, bench.cli, or a module of a wing above its own."""
    commands = {f"bench.{name}" for name in COMMANDS} | {"bench.cli"}
    problems = []
    for name, path in modules().items():
        own = layer(name)
        if own is None:
            continue
        for target in imports(path):
            if target in commands or any(target.startswith(c + ".") for c in commands):
                problems.append(f"{name} imports the command {target}")
            elif (other := layer(target)) is not None and other > own:
                problems.append(f"{name} imports {target}, a wing above it")
    assert not problems, problems


def test_the_structure_test_catches_an_upward_import(tmp_path: Path) -> None:
    """The rule above, applied to a file that breaks it, finds the break (the test can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from bench.grid import run_grid\nfrom bench.reporting import stats\n")
    found = imports(bad)
    assert "bench.grid" in found and layer("bench.reporting.stats") > layer("bench.engine.train")


def test_the_module_graph_has_no_cycle() -> None:
    """Among the project's own modules, imports form no circle (the old config ↔ models one included)."""
    graph = {name: {t for t in imports(path) if t in modules() and t != name} for name, path in modules().items()}
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, " -> ".join((*path, node))
        if node in done:
            return
        for nxt in graph[node]:
            visit(nxt, (*path, node))
        done.add(node)

    for node in graph:
        visit(node, ())


@pytest.mark.slow
def test_a_built_wheel_holds_every_subpackage_and_the_presets(tmp_path: Path) -> None:
    """`pip wheel` of the project (no editable install) packs the wings, the losses and bench/presets/*.json."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, text=True)
    wheel = next(tmp_path.glob("tripletbench-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in [*ROOT.glob("bench/**/*.py"), *ROOT.glob("losses/**/*.py"), *ROOT.glob("bench/presets/*.json")]:
        assert path.relative_to(ROOT).as_posix() in names, path
