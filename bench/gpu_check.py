"""`make gpu-check`: everything the first CUDA GPU should measure, in one command, into one folder.

    python -m bench.gpu_check --data-dir datasets --out gpu-check     # what `make gpu-check` runs
    python -m bench.gpu_check --smoke --out /tmp/g                    # every step, tiny, on any device

It needs only PyTorch, torchvision and NumPy (a stock PyTorch image) and no network: no Ray (the grid
runs on the local backend), and pytorch-metric-learning, pandas and pytest only in the subprocesses of the
steps that use them (a step that stops on a missing package is recorded as skipped, naming it). Without
a CUDA GPU it prints one line and exits with code 2. The steps, each recorded with its command, status and
wall time; a failed step never stops the others:
1. tests: `pytest -m cuda tests/test_gpu.py` (CUDA losses equal the CPU's values and gradients, a CUDA
   trial runs and reports its peak memory, bf16 evaluation keeps fp32 embeddings);
2. throughput: the training step (bench.step_benchmark) of the MNIST net (MNIST) and ResNet-18 (CIFAR-10)
   with batch-all, at B = 64, 256 and 1024, in fp32 and bf16, eager, torch.compile and torch.compile with
   CUDA graphs (mode reduce-overhead);
3. the loss benchmark (bench.loss_benchmark) on CUDA, B = 128 … 8192;
4. the `gpu-check` preset (a reduced `paper` grid) on the local backend, on the real data.

The folder then holds 8 files, each far below 16 MiB: gpu_check.md (provenance, every step's command,
status and time, the pytest output, the throughput tables), step_benchmark.csv and .json, the loss
benchmark's four files (loss_benchmark*), and grid.tar.gz (the grid's experiment folder: grid.json and
the records, for `make report`). With --smoke everything runs at toy sizes on generated data, on the
CPU when there is no GPU; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.cli import Parser
from bench.engine.device import pick_device
from bench.engine.files import write_text
from bench.experiment.provenance import provenance
from bench.reporting.markdown import table as markdown_table

NO_GPU = "no CUDA GPU visible: make gpu-check measures the GPU path"
ROOT = Path(__file__).resolve().parent.parent
MAX_FILES, MAX_MIB = 8, 16
THROUGHPUT = {"models": {"mnist": "mnist-net", "cifar10": "resnet18"}, "loss": "batch-all",
              "batch_sizes": [64, 256, 1024], "precisions": ["fp32", "bf16"],
              "compile": ["none", "default", "reduce-overhead"], "steps": 20, "warmup": 5}
SMOKE_THROUGHPUT = {**THROUGHPUT, "models": {"mnist": "mnist-net", "cifar10": "cifar-net"}, "batch_sizes": [16],
                    "compile": ["none"], "steps": 2, "warmup": 1}
LOSS_BATCH_SIZES = "128,256,512,1024,2048,4096,8192"
GRID_PRESET = "gpu-check"
MISSING_MODULE = re.compile(r"No module named '([\w.]+)'")

Step = Callable[[Path, Path], tuple[str, str]]  # (out, work) → (status, details)


def throughput(out: Path, data_dir: str | Path, device: torch.device, settings: dict[str, Any]) -> tuple[str, str]:
    """Step 2: the training step of each model × B × precision × compile mode; step_benchmark.csv in `out`."""
    from bench.step_benchmark import make_point, run_points, write_outputs

    points = [
        make_point({"dataset": dataset, "model": model, "loss": settings["loss"], "margin": 0.2,
                    "batch_size": batch_size}, precision, mode)
        for dataset, model in settings["models"].items() for batch_size in settings["batch_sizes"]
        for precision in settings["precisions"] for mode in settings["compile"]
    ]
    rows = run_points(points, data_dir, device, settings["steps"], settings["warmup"], _log)
    write_outputs(rows, out, {**provenance(device), "steps": settings["steps"], "warmup": settings["warmup"]},
                  "python -m bench.gpu_check (throughput)")
    text = (out / "step_benchmark.md").read_text()
    (out / "step_benchmark.md").unlink()  # its tables go into gpu_check.md, its provenance is step_benchmark.json
    failed = sum(row["status"] != "ok" for row in rows)
    return ("ok" if not failed else f"failed ({failed} points)"), text[text.find("\n## ") + 1:].replace("## ", "### ")


def run_command(command: list[str], log_lines: int = 60) -> tuple[str, str]:
    """Run `command` from the repository root; (status, its last `log_lines` lines of output).

    Status: 'ok' (exit 0), 'skipped: needs X' when it stopped on a missing package X, else 'failed (exit N)'.
    """
    _log("$ " + shlex.join(command))
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "TRIPLETBENCH_DOWNLOAD"})
    output = result.stdout + result.stderr
    tail = "\n".join(output.strip().splitlines()[-log_lines:])
    absent = MISSING_MODULE.search(output)
    if result.returncode == 0:
        status = "ok"
    elif absent:
        status = f"skipped: needs {absent[1].split('.')[0]}"
    else:
        status = f"failed (exit {result.returncode})"
    return status, f"```\n{tail}\n```"


def pack_grid(results: Path, out: Path) -> None:
    """The grid's experiment folder as out/grid.tar.gz (grid.json, records, embeddings)."""
    with tarfile.open(out / "grid.tar.gz", "w:gz") as archive:
        archive.add(results / GRID_PRESET, arcname=GRID_PRESET)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def check_folder(out: Path) -> list[str]:
    """Problems with the folder's size: more than MAX_FILES files, or a file over MAX_MIB."""
    files = [path for path in out.rglob("*") if path.is_file()]
    problems = [f"{len(files)} files (at most {MAX_FILES})"] if len(files) > MAX_FILES else []
    return problems + [f"{path.name} is {path.stat().st_size / 2**20:.1f} MiB (at most {MAX_MIB})"
                       for path in files if path.stat().st_size > MAX_MIB * 2**20]


def run_checks(out: Path, data_dir: str, device: torch.device, smoke: bool) -> list[dict[str, Any]]:
    """Run the four steps into `out`; return [{step, command, status, seconds, details}]."""
    python = sys.executable
    pytest_cmd = [python, "-m", "pytest", "-m", "cuda", "-q", "-rs", "tests/test_gpu.py"]
    loss_cmd = [python, "-m", "bench.loss_benchmark", "--device", device.type, "--out", str(out)]
    loss_cmd += ["--smoke"] if smoke else ["--batch-sizes", LOSS_BATCH_SIZES]
    steps: list[tuple[str, str, Callable[[], tuple[str, str]]]] = [
        ("tests (pytest -m cuda)", shlex.join(pytest_cmd), lambda: run_command(pytest_cmd)),
        ("throughput", "bench.step_benchmark points: " + " ".join(
            f"{key}={value}" for key, value in (SMOKE_THROUGHPUT if smoke else THROUGHPUT).items()),
         lambda: throughput(out, data_dir, device, SMOKE_THROUGHPUT if smoke else THROUGHPUT)),
        ("loss benchmark", shlex.join(loss_cmd), lambda: run_command(loss_cmd)),
    ]
    with tempfile.TemporaryDirectory(prefix="tripletbench-gpu-check-") as work:
        grid_cmd = [python, "-m", "bench.grid", "--backend", "local", "--no-report", "--results", work]
        grid_cmd += ["--smoke"] if smoke else ["--preset", GRID_PRESET, "--experiment", GRID_PRESET,
                                               "--data-dir", str(Path(data_dir).resolve())]
        if smoke:
            grid_cmd += ["--experiment", GRID_PRESET]

        def grid() -> tuple[str, str]:
            status, details = run_command(grid_cmd, log_lines=20)
            if (Path(work) / GRID_PRESET).is_dir():
                pack_grid(Path(work), out)
            return status, details

        steps.append(("reduced paper grid (local backend)", shlex.join(grid_cmd), grid))
        results = []
        for name, command, run in steps:
            _log(f"gpu-check: {name}")
            started = time.perf_counter()
            try:
                status, details = run()
            except Exception as err:  # a failed step is a result, never the end of the check
                status, details = "failed", f"{type(err).__name__}: {' '.join(str(err).split())}"[:500]
            results.append({"step": name, "command": command, "status": status,
                            "seconds": time.perf_counter() - started, "details": details})
    return results


def write_report(out: Path, results: list[dict[str, Any]], device: torch.device, command: str) -> None:
    """gpu_check.md: provenance, a status table of the steps, then each step's command and output."""
    info = {**provenance(device), "command": command}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    lines = ["# GPU check", "", *(f"- {key}: {value}" for key, value in info.items()), "",
             *markdown_table(["step", "status", "time (s)"],
                             [[r["step"], r["status"], f"{r['seconds']:.0f}"] for r in results])]
    for r in results:
        lines += ["", f"## {r['step']}", "", f"Command: `{r['command']}`", "", r["details"]]
    write_text(out / "gpu_check.md", "\n".join(lines) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The CLI's arguments."""
    p = Parser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="datasets", help="folder of mnist.npz and cifar10.npz (default datasets/)")
    p.add_argument("--out", type=Path, default=Path("gpu-check"), help="output folder (default gpu-check/)")
    p.add_argument("--smoke", action="store_true", help="every step at toy sizes on generated data, any device")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """0 when every step passed or was skipped for a missing package, 1 when one failed, 2 without a CUDA GPU
    (outside --smoke) or with bad input."""
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "bench.gpu_check", *(sys.argv[1:] if argv is None else argv)])
    if not args.smoke and not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    device = pick_device("auto")
    from bench.engine.data import DataError, load_dataset
    from bench.engine.synthetic import write_synthetic

    with tempfile.TemporaryDirectory(prefix="tripletbench-gpu-check-data-") as generated:
        data_dir = args.data_dir
        if args.smoke:
            data_dir = generated
            for dataset in ("mnist", "cifar10"):
                write_synthetic(generated, dataset)
        os.environ.pop("TRIPLETBENCH_DOWNLOAD", None)  # offline: never a download on the GPU machine
        for dataset in ("mnist", "cifar10"):
            try:
                load_dataset(dataset, data_dir, "cpu")
            except DataError as err:
                print(f"python -m bench.gpu_check: error: {err}", file=sys.stderr)
                return 2
        args.out.mkdir(parents=True, exist_ok=True)
        results = run_checks(args.out, data_dir, device, args.smoke)
    write_report(args.out, results, device, command)
    problems = check_folder(args.out)
    for problem in problems:
        _log(f"gpu-check: warning: {args.out} has {problem}")
    _log(f"gpu-check: wrote {args.out}/gpu_check.md; " + ", ".join(f"{r['step']}: {r['status']}" for r in results))
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in results) and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
