"""`make bench`, part 2: the trial's full training step timed in isolation, per dataset, loss and batch size.

    python -m bench.step_benchmark --preset cpu --data-dir datasets --out reports     # what `make bench` runs
    python -m bench.step_benchmark --smoke --out /tmp/s    # cpu-quick's points at B = 16 on generated data: seconds

A step is what the trial's loop does per batch: gather the batch's uint8 images from the split held on
the device, augment them (CIFAR-10), normalise, forward pass (under the precision's autocast, channels_last),
loss, backward pass and optimiser step. Batches come from the trial's own sampler plan (seed 0) and the
model and optimiser from its config (the preset's first margin and seed; neither changes the cost).
Each point runs `warmup` steps (default 5), then `steps` timed steps (default 20), each bracketed by a
device synchronisation; the time is their median, samples/s = batch size / median.

Memory is the step's peak above a baseline taken once the data set is loaded and before the model is
built, so that it counts the model, the optimiser state and the step's activations, not the data: measured by
bench.engine.memory.TrainingPeak, as the trial measures its training peak (CUDA: max_memory_allocated above the
baseline; CPU: the peak RSS above the baseline RSS, after glibc's malloc_trim has returned the memory that
earlier points freed, else their freed pages would hold this point's allocations unseen).
Points run one after the other in this process.

Precision: `trial` (default) is what the preset's config resolves to on this device (bench.engine.precision);
`fp32`, `bf16` or `both` override it. `--compile` adds torch.compile variants of the model: `default`
and `reduce-overhead` (CUDA graphs on CUDA). A point that runs out of memory is recorded as `OOM`, any
other failure as `error` with a one-line note; neither stops the run.

Outputs in --out: step_benchmark.csv (one row per point), step_benchmark.md (provenance: hardware, threads,
versions, commit, command; then a table per dataset) and step_benchmark.json (that provenance as a JSON object,
which bench.report's systems table states). Nothing else in the folder is touched.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.cli import Parser, int_list
from bench.engine.config import ConfigError, resolve
from bench.engine.data import DataError, channel_stats, load_dataset
from bench.engine.datasets import DATASETS
from bench.engine.device import is_oom, one_line, pick_device, release_cached, sync
from bench.engine.files import write_text
from bench.engine.memory import TrainingPeak
from bench.engine.models import build_optimizer, forward_flops, import_model_code, initial_model, model_settings
from bench.engine.precision import resolve_precision
from bench.engine.sampling import make_batches
from bench.engine.step import batch_input, train_step, training_loss
from bench.engine.synthetic import write_synthetic
from bench.experiment.gridspec import GridError
from bench.experiment.presets import default_preset, load_preset
from bench.experiment.provenance import provenance
from bench.reporting.markdown import table as markdown_table

PRECISIONS = ("trial", "fp32", "bf16", "both")
COMPILE_MODES = ("none", "default", "reduce-overhead")
COLUMNS = ("dataset", "model", "loss", "batch_size", "precision", "compile", "device", "status", "note",
           "median_ms", "samples_per_second", "peak_memory_mib", "steps", "warmup", "forward_gflops_per_sample")
PREFIX = "step_benchmark"
SMOKE = {"preset": "cpu-quick", "steps": 2, "warmup": 1, "batch_sizes": [16]}

Data = tuple[Tensor, Tensor, Tensor, Tensor]  # uint8 train images [N, C, H, W], labels [N], channel mean, std


class BenchError(ValueError):
    """Bad input for the step benchmark; the message is one line."""


@dataclass(frozen=True)
class StepPoint:
    """One measurement: a resolved trial config, run at one precision and compile mode."""

    config: tuple[tuple[str, Any], ...]  # the resolved trial config as sorted items (hashable)
    precision: str  # "fp32" | "bf16"
    compile: str  # one of COMPILE_MODES

    @property
    def cfg(self) -> dict[str, Any]:
        """The config as a dict."""
        return dict(self.config)


def make_point(config: dict[str, Any], precision: str, compile_mode: str = "none") -> StepPoint:
    """A StepPoint of a trial config (resolved here; ConfigError on a bad key or precision)."""
    if precision not in ("fp32", "bf16") or compile_mode not in COMPILE_MODES:
        raise ConfigError(f"precision must be fp32 or bf16 and compile one of {COMPILE_MODES}, got "
                          f"{precision!r}, {compile_mode!r}")
    return StepPoint(tuple(sorted(resolve(config).items())), precision, compile_mode)


def make_step(cfg: dict[str, Any], data: Data, device: torch.device, precision: str,
              compile_mode: str = "none") -> tuple[Callable[[int], Tensor], torch.nn.Module]:
    """The trial's training step for config `cfg` as step(i) → loss of batch i of its plan; and the model.

    The trial's own step (bench/engine/step.py: batch_input, then train_step), at the config's lr.
    """
    x_train, y_train, mean, std = data
    settings = model_settings(cfg)
    cuda = device.type == "cuda"
    model = initial_model(cfg, tuple(x_train.shape[1:]), device)
    lr = float(settings["lr"])
    loss_fn, loss_parameters = training_loss(cfg, int(y_train.max()) + 1, device)
    optimizer = build_optimizer(settings["optimizer"], [*model.parameters(), *loss_parameters], lr, fused=cuda)
    forward = model if compile_mode == "none" else torch.compile(model, mode=compile_mode)
    margin, batch_size = float(cfg["margin"]), int(cfg["batch_size"])
    plan = make_batches(cfg["sampler"], y_train.cpu(), batch_size, int(cfg["samples_per_class"]), 64,
                        torch.Generator().manual_seed(int(cfg["seed"]))).to(device)
    augment_generator = torch.Generator(device).manual_seed(int(cfg["seed"]) + 1)
    augmenting = DATASETS[cfg["dataset"]].augment

    def step(i: int) -> Tensor:
        if compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # a new training iteration: earlier graph outputs are free
        batch = plan[i % len(plan)]
        x = batch_input(x_train, batch, mean, std, augment_generator, augmenting)
        return train_step(forward, optimizer, loss_fn, x, y_train[batch], margin, precision, lr)[1]

    return step, model


def measure_step(point: StepPoint, data: Data, device: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    """The row of one point: median step time, samples/s and peak memory above the baseline (status ok),
    or status OOM / error with a one-line note."""
    cfg = point.cfg
    row: dict[str, Any] = {
        "dataset": cfg["dataset"], "model": model_settings(cfg)["model"], "loss": cfg["loss"],
        "batch_size": int(cfg["batch_size"]), "precision": point.precision, "compile": point.compile,
        "device": str(device), "status": "ok", "note": "", "steps": steps, "warmup": warmup,
    }
    import_model_code(row["model"])
    memory = TrainingPeak(device)  # baseline: the data and the model's code loaded, no model yet
    memory.start()
    try:
        step, model = make_step(cfg, data, device, point.precision, point.compile)
        row["forward_gflops_per_sample"] = forward_flops(model, tuple(data[0].shape[1:])) / 1e9
        times = []
        for i in range(warmup + steps):
            sync(device)
            tic = time.perf_counter()
            step(i)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - tic)
    except Exception as err:  # a failed point is a result, never the end of the run
        row.update(status="OOM" if is_oom(err) else "error", note=one_line(err, 200))
        release_cached()
        return row
    median = statistics.median(times)
    row.update(median_ms=1000 * median, samples_per_second=row["batch_size"] / median,
               peak_memory_mib=max(memory.stop(), 0.0))
    return row


def load_data(dataset: str, data_dir: str | Path, device: torch.device) -> Data:
    """The training split of `dataset` on `device` with its channel statistics (DataError when missing)."""
    x_train, y_train, _, _ = load_dataset(dataset, data_dir, device)
    return (x_train, y_train, *channel_stats(x_train))


def preset_points(preset: str, precision: str, device: torch.device, compile_modes: list[str],
                  batch_sizes: list[int] | None = None) -> list[StepPoint]:
    """Every (dataset, loss, batch size) of the preset × precisions × compile modes, in that order.

    The config is that of the preset's first point with the dataset and loss (its first margin and seed);
    `batch_sizes` replaces the preset's batch sizes.
    """
    try:
        grid = load_preset(preset)
    except GridError as err:
        raise BenchError(str(err)) from None
    first: dict[tuple[str, str], dict[str, Any]] = {}  # (dataset, loss) -> its first point
    sizes: dict[tuple[str, str], dict[int, None]] = {}  # (dataset, loss) -> its batch sizes, in order
    for point in grid.points():
        first.setdefault((point["dataset"], point["loss"]), point)
        sizes.setdefault((point["dataset"], point["loss"]), {})[point["batch_size"]] = None
    points = []
    for key, base in first.items():
        for batch_size in batch_sizes or list(sizes[key]):
            cfg = grid.config({**base, "batch_size": batch_size})
            try:
                trial_precision = resolve_precision(resolve(cfg)["precision"], device)
            except ConfigError as err:
                raise BenchError(f"preset {preset}: {err}") from None
            precisions = {"trial": [trial_precision], "both": ["fp32", "bf16"]}.get(precision, [precision])
            points += [make_point(cfg, p, mode) for p in precisions for mode in compile_modes]
    return points


def run_points(points: list[StepPoint], data_dir: str | Path, device: torch.device, steps: int, warmup: int,
               log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Measure every point, loading each data set once (BenchError when one cannot be loaded)."""
    rows, loaded = [], {}
    for point in points:
        dataset = point.cfg["dataset"]
        if dataset not in loaded:
            loaded.clear()  # one data set on the device at a time
            try:
                loaded[dataset] = load_data(dataset, data_dir, device)
            except DataError as err:
                raise BenchError(str(err)) from None
        row = measure_step(point, loaded[dataset], device, steps, warmup)
        rows.append(row)
        speed = f"{row['median_ms']:.1f} ms, {row['samples_per_second']:.0f} samples/s, " \
                f"{row['peak_memory_mib']:.0f} MiB" if row["status"] == "ok" else f"{row['status']} {row['note']}"
        log(f"{row['dataset']} {row['model']} {row['loss']} B={row['batch_size']} {row['precision']} "
            f"compile={row['compile']}: {speed}")
    return rows


def _cell(value: Any, fmt: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def write_outputs(rows: list[dict[str, Any]], out: Path, info: dict[str, Any], command: str) -> None:
    """step_benchmark.csv, step_benchmark.md and step_benchmark.json (the provenance: `info` and the command, which
    bench.report reads) in `out`, each written atomically."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(row.get(key), "{:.6g}") if isinstance(row.get(key), float) else row.get(key, "")
                         for key in COLUMNS})
    lines = [
        "# Training step in isolation", "",
        f"Command: `{command}`", "",
        *(f"- {key}: {value}" for key, value in info.items()), "",
        "Median of the timed steps after the warm-up steps, each synchronised; samples/s = B / median. Memory: "
        "the step's peak above the memory in use once the data set was loaded (CUDA: max_memory_allocated; "
        "CPU: peak RSS), so model, optimiser state and activations, not the data. One point at a time.",
    ]
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        lines += ["", f"## {dataset}", "", *markdown_table(
            ["model", "loss", "B", "precision", "compile", "step (ms)", "samples/s", "peak memory (MiB)", "status"],
            [[r["model"], r["loss"], r["batch_size"], r["precision"], r["compile"], _cell(r.get("median_ms"), "{:.1f}"),
              _cell(r.get("samples_per_second"), "{:.0f}"), _cell(r.get("peak_memory_mib"), "{:.0f}"),
              (r["status"] + " " + r["note"]).strip()] for r in rows if r["dataset"] == dataset])]
    meta = json.dumps({"command": command, **info}, indent=2, sort_keys=True) + "\n"
    for name, text in ((f"{PREFIX}.csv", buffer.getvalue()), (f"{PREFIX}.md", "\n".join(lines) + "\n"),
                       (f"{PREFIX}.json", meta)):
        write_text(out / name, text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The CLI's arguments."""
    p = Parser(prog="python -m bench.step_benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="", help="preset name or .json path (default: paper with a CUDA GPU, else cpu)")
    p.add_argument("--data-dir", default="datasets", help="folder of mnist.npz / cifar10.npz (default datasets/)")
    p.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default reports)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto: CUDA if present")
    p.add_argument("--precision", default="trial", choices=PRECISIONS,
                   help="trial (the preset's config on this device; default), fp32, bf16 or both")
    p.add_argument("--compile", default="none", help=f"comma-separated of {', '.join(COMPILE_MODES)} (default none)")
    p.add_argument("--batch-sizes", type=int_list, help="comma-separated; replaces the preset's batch_size axis")
    p.add_argument("--steps", type=int, default=None, help="timed steps per point (default 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before them (default 5)")
    p.add_argument("--smoke", action="store_true",
                   help=f"the {SMOKE['preset']} preset's points at B = {SMOKE['batch_sizes'][0]} on generated data, "
                   f"{SMOKE['steps']} steps after {SMOKE['warmup']}")
    return p.parse_args(argv)


@contextmanager
def _smoke_data(smoke: bool, data_dir: str) -> Iterator[str]:
    """Generated MNIST and CIFAR-10 in a temporary folder under --smoke, else data_dir."""
    if not smoke:
        yield data_dir
        return
    with tempfile.TemporaryDirectory(prefix="tripletbench-step-smoke-") as folder:
        for dataset in DATASETS:
            write_synthetic(folder, dataset)
        yield folder


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its CSV and Markdown into --out; 2 on bad input, with nothing written."""
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "bench.step_benchmark", *(sys.argv[1:] if argv is None else argv)])
    try:
        device = pick_device(args.device)
        modes = [mode.strip() for mode in args.compile.split(",") if mode.strip()]
        if not modes or set(modes) - set(COMPILE_MODES):
            raise BenchError(f"--compile {args.compile!r}: expected comma-separated of {', '.join(COMPILE_MODES)}")
        steps = args.steps if args.steps is not None else SMOKE["steps"] if args.smoke else 20
        warmup = args.warmup if args.warmup is not None else SMOKE["warmup"] if args.smoke else 5
        if steps < 1 or warmup < 0:
            raise BenchError(f"need --steps >= 1 and --warmup >= 0, got {steps} and {warmup}")
        if args.smoke and args.preset not in ("", SMOKE["preset"]):
            raise BenchError(f"--smoke runs the {SMOKE['preset']} preset; drop --preset {args.preset}")
        preset = SMOKE["preset"] if args.smoke else args.preset or default_preset()
        batch_sizes = args.batch_sizes or (SMOKE["batch_sizes"] if args.smoke else None)
        points = preset_points(preset, args.precision, device, modes, batch_sizes)
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(device.type == "cpu" or deterministic)  # as the trial does
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        started = time.perf_counter()
        try:
            with _smoke_data(args.smoke, args.data_dir) as data_dir:
                rows = run_points(points, data_dir, device, steps, warmup,
                                  lambda line: print(line, file=sys.stderr, flush=True))
        finally:
            torch.use_deterministic_algorithms(deterministic)
    except (BenchError, ConfigError) as err:
        print(f"python -m bench.step_benchmark: error: {err}", file=sys.stderr)
        return 2
    info = {**provenance(device), "threads": torch.get_num_threads(), "preset": preset,
            "steps": steps, "warmup": warmup, "run_seconds": round(time.perf_counter() - started, 1)}
    write_outputs(rows, args.out, info, command)
    print(f"wrote {args.out / PREFIX}.csv, {PREFIX}.md and {PREFIX}.json ({len(rows)} points)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
