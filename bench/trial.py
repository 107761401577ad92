"""One trial: train an embedding net with one loss under a sample budget, evaluate at checkpoints.

    from bench.trial import run_trial
    final = run_trial({"dataset": "mnist", "loss": "batch-hard", "batch_size": 256}, report=print)

The whole split lives on the device as uint8; each step gathers a batch from a precomputed index plan,
augments (CIFAR-10) and normalises it there. Training runs ⌈budget_samples / batch_size⌉ steps, or
fewer when `budget_seconds` of training time (evaluation excluded) run out first, and is evaluated at
`checkpoints` evenly spaced steps, the last one included. The lr is the configured one scaled by
(batch_size / lr_reference_batch) ** {none: 0, sqrt: 0.5, linear: 1} (config `lr_scaling`), and follows
config `lr_schedule` over the planned steps (constant, or cosine to 0 at the sample budget). The forward pass
runs under config `precision` (bench/precision.py: bf16 autocast or fp32); the loss is computed in fp32.

Before the first update, the margin check (bench/diagnostics.py) embeds the first INITIAL_BATCHES planned
batches, augmented exactly as training will augment them, in eval mode without gradients: nothing of the
model, its BatchNorm statistics, the optimiser or the random streams of training changes.

The data is split by bench.protocol (config `protocol`, `val_fraction`): training never sees the
validation or test images. Per checkpoint (see bench.config.METRICS): the validation metrics (val_*) and
the test metrics of bench.protocol.evaluate, with the gallery and query sizes used and the split sizes.
The last checkpoint evaluates the whole validation and test sets against the whole gallery; earlier ones
use fixed subsets (bench.protocol.intermediate_sizes: `eval_gallery`, `eval_queries`, or by default the
whole sets on CUDA and budget-scaled subsets on the CPU). So that the plateau is read like for like, the last
checkpoint also evaluates validation on those subsets: `plateau_val_map_at_r`, and `plateau_gap` = that minus
the previous checkpoint's `val_map_at_r` (NaN with one checkpoint). Evaluation embeds under the trial's precision
(bf16 autocast where bench.precision resolves it so), and the searched embeddings are float32.
`loss` is the mean training loss since the previous checkpoint; the mining statistics are those of the
last training batch; `elapsed_seconds` is the wall time since the trial started.
Systems columns:
- `train_seconds`: cumulative training time (device-synchronised), evaluation and data loading excluded.
- `samples_per_second`: samples of the steps after the first WARMUP_STEPS over their training time; at a
  checkpoint with no step after the warm-up yet, over all steps so far (`warmup_steps` says which: 0 or
  WARMUP_STEPS).
- `peak_memory_mib`: the training peak, read before each evaluation and reset after it (see TrainingPeak).
- `planned_steps`, `images_per_class` (mean over the plan's batches of B / distinct classes), `lr` (after
  lr_scaling), `precision` (what ran: fp32 or bf16), `threads` (torch's intra-op threads during the trial).
Diagnostics (bench/diagnostics.py): the initial_* statistics and `effective_margin` of the margin check (the
same at every checkpoint), and, on the validation embeddings, `pinned_at_margin`, `collapsed` and
`effective_rank`. Status:
- `diverged`: a training loss is not finite. Losses stay on the device and are inspected every
  CHECK_EVERY steps; the trial stops there, and `reason` names the first non-finite step.
- `collapsed`: the checkpoint's `collapsed` diagnostic (validation k-NN accuracy near chance, or effective
  rank < 2).
- `ok` otherwise. The trial's status is its last checkpoint's.
On CPU the trial runs with torch.use_deterministic_algorithms, so at a fixed thread count (config `threads`,
set for the trial and restored afterwards) and precision a seed fixes every metric but the timings; on CUDA
it uses cudnn.benchmark and fused optimisers. Tensors are channels_last (faster on CPU as well).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.cli import Parser
from bench.config import DATASETS, LR_SCALINGS, LR_SCHEDULES, PRECISIONS, SAMPLERS, ConfigError, resolve, trial_identity
from bench.data import DataError, channel_stats, normalize
from bench.diagnostics import (
    INITIAL_BATCHES,
    INITIAL_KEYS,
    checkpoint_diagnostics,
    images_per_class,
    initial_statistics,
)
from bench.jsonio import finite, write_json
from bench.memory import TrainingPeak
from bench.models import build_optimizer, initial_model, model_settings
from bench.precision import autocast, resolve_precision
from bench.protocol import EVAL_METRICS, EVAL_SIZE_KEYS, evaluate, intermediate_sizes, load_splits
from bench.provenance import provenance
from bench.sampling import make_batches
from bench.step import batch_input, train_step
from bench.synthetic import write_synthetic
from losses import LOSSES, mining_stats

CHECK_EVERY = 50
# steps left out of samples_per_second: the first steps pay for allocator growth, cudnn.benchmark's autotuning
# and cold caches (make bench likewise times after 5 warm-up steps)
WARMUP_STEPS = 5
LR_EXPONENTS = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
PROGRESS_SECONDS = 30.0  # plain progress lines: at every tenth of the steps, or after this long without one
EVAL_BATCH = 1024
SAVED_EMBEDDINGS = 1000
REQUIRED = ("dataset", "loss", "margin", "batch_size", "budget_samples")
SMOKE = {"dataset": "mnist", "loss": "batch-all", "margin": 0.2, "batch_size": 32, "budget_samples": 256,
         "checkpoints": 2, "eval_gallery": 300, "eval_queries": 100}
MINING_KEYS = ("fraction_easy", "fraction_semihard", "fraction_hard", "mu_pos", "mu_neg")
RECORDS_DIR = Path("results") / "trials"

Report = Callable[[dict[str, Any]], None]


def pick_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cpu', 'cuda' or 'cuda:N' as given (ConfigError if absent)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; valid: auto, cpu, cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for, but CUDA is not available here")
    return device


def checkpoint_steps(steps: int, checkpoints: int) -> list[int]:
    """The steps (1-based, increasing, last = steps) after which to evaluate: evenly spaced fractions."""
    return sorted({max(1, (steps * i + checkpoints // 2) // checkpoints) for i in range(1, checkpoints + 1)})


def embed(model: torch.nn.Module, images: Tensor, mean: Tensor, std: Tensor, precision: str = "fp32") -> Tensor:
    """Embeddings [N, D] float32 of uint8 images [N, C, H, W], in eval mode and batches of EVAL_BATCH,
    the forward pass under `precision` ('fp32' | 'bf16' autocast, bench.precision)."""
    model.eval()
    parts = []
    with torch.inference_mode(), autocast(precision, images.device):
        for start in range(0, len(images), EVAL_BATCH):
            x = normalize(images[start:start + EVAL_BATCH], mean, std)
            parts.append(model(x.contiguous(memory_format=torch.channels_last)).float())
    model.train()
    return torch.cat(parts)


def scheduled_lr(lr: float, step: int, steps: int, schedule: str) -> float:
    """The lr of update step+1 of `steps` (0-based `step`): `lr` when constant, lr · (1 + cos(π·step/steps)) / 2
    when cosine."""
    return lr if schedule == "constant" else lr * (1 + math.cos(math.pi * step / steps)) / 2


def scaled_lr(lr: float, batch_size: int, rule: str, reference_batch: int) -> float:
    """lr × (batch_size / reference_batch) ** {none: 0, sqrt: 0.5, linear: 1}[rule]."""
    return lr * (batch_size / reference_batch) ** LR_EXPONENTS[rule]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Progress:
    """What a running trial tells its caller besides the checkpoints; this one tells nothing (the grid's trials)."""

    def setup(self, info: dict[str, Any]) -> None:
        """The resolved setup, before anything is trained."""

    def step(self, step: int, steps: int, train_seconds: float) -> None:
        """After each training step: steps done, planned steps, training seconds so far (not synchronised)."""


def run_trial(
    config: dict[str, Any], report: Report | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Train and evaluate one config; call report(metrics) at each checkpoint; return the last metrics."""
    cfg = resolve(config)
    device = pick_device(cfg["device"])
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(device.type == "cpu" or deterministic)
    if cfg["threads"] is not None:
        torch.set_num_threads(int(cfg["threads"]))
    try:
        return _run(cfg, device, report or (lambda metrics: None), progress or Progress())
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


@torch.no_grad()
def initial_check(
    model: torch.nn.Module, batches: list[tuple[Tensor, Tensor]], loss: str, margin: float, precision: str,
    device: torch.device,
) -> dict[str, Any]:
    """bench.diagnostics.initial_statistics of (images, labels) batches embedded in eval mode, nothing updated."""
    model.eval()
    with autocast(precision, device):
        embedded = [(model(x).float(), labels) for x, labels in batches]
    model.train()
    return initial_statistics(embedded, loss, margin)


def _run(cfg: dict[str, Any], device: torch.device, report: Report, progress: Progress) -> dict[str, Any]:
    started = time.perf_counter()
    settings = model_settings(cfg)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    splits = load_splits(cfg, device)
    x_train, y_train = splits.x_train, splits.y_train
    eval_sizes = intermediate_sizes(cfg, device)
    mean, std = channel_stats(x_train)
    memory = TrainingPeak(device)  # its baseline: the process once the data is loaded

    seed, batch_size, margin = int(cfg["seed"]), int(cfg["batch_size"]), float(cfg["margin"])
    precision = resolve_precision(cfg["precision"], device)
    lr = scaled_lr(float(settings["lr"]), batch_size, cfg["lr_scaling"], int(cfg["lr_reference_batch"]))
    model = initial_model(cfg, tuple(x_train.shape[1:]), device)
    optimizer = build_optimizer(settings["optimizer"], model.parameters(), lr, fused=cuda)
    loss_fn = LOSSES[cfg["loss"]]
    steps = math.ceil(float(cfg["budget_samples"]) / batch_size)
    plan = make_batches(
        cfg["sampler"], y_train, batch_size, int(cfg["samples_per_class"]), steps,
        torch.Generator().manual_seed(seed),
    ).to(device)
    augmenting = cfg["dataset"] == "cifar10"

    budget_seconds = float("inf") if cfg["budget_seconds"] is None else float(cfg["budget_seconds"])
    evaluate_at = checkpoint_steps(steps, int(cfg["checkpoints"]))
    fixed = {
        "planned_steps": steps,
        "images_per_class": images_per_class(y_train[plan]),
        "lr": lr,
        "precision": precision,
        "threads": torch.get_num_threads(),
    }
    progress.setup({
        "dataset": cfg["dataset"], "loss": cfg["loss"], "margin": margin, "batch_size": batch_size, "seed": seed,
        "model": settings["model"], "optimizer": settings["optimizer"],
        "lr": lr, "lr_scaling": cfg["lr_scaling"], "lr_schedule": cfg["lr_schedule"], "precision": precision,
        "device": str(device),
        "threads": fixed["threads"], "steps": steps, "checkpoints at steps": evaluate_at,
        "protocol": cfg["protocol"], **splits.sizes(), "eval gallery": eval_sizes[0] or "all",
        "eval queries": eval_sizes[1] or "all", "last checkpoint": "the whole sets",
    })
    # the first planned batches with the augmentations training will draw for them (a fresh generator, same seed)
    initial_generator = torch.Generator(device).manual_seed(seed + 1)
    fixed |= initial_check(
        model, [(batch_input(x_train, batch, mean, std, initial_generator, augmenting), y_train[batch])
                for batch in plan[:INITIAL_BATCHES]],
        cfg["loss"], margin, precision, device,
    )
    augment_generator = torch.Generator(device).manual_seed(seed + 1)
    losses = torch.full((steps,), math.nan, device=device)

    train_seconds, warmup_seconds, step, previous, checkpoint, previous_val = 0.0, 0.0, 0, 0, 0, math.nan
    memory.start()
    _sync(device)
    resumed = time.perf_counter()
    while True:
        batch = plan[step]
        x = batch_input(x_train, batch, mean, std, augment_generator, augmenting)
        embeddings, losses[step] = train_step(model, optimizer, loss_fn, x, y_train[batch], margin, precision,
                                              scheduled_lr(lr, step, steps, cfg["lr_schedule"]))
        step += 1
        if step == WARMUP_STEPS < steps:
            _sync(device)
            warmup_seconds = train_seconds + time.perf_counter() - resumed
        trained = train_seconds + time.perf_counter() - resumed
        progress.step(step, steps, trained)
        out_of_time = trained >= budget_seconds
        at_checkpoint = step == evaluate_at[checkpoint] or out_of_time
        if not (at_checkpoint or step % CHECK_EVERY == 0):
            continue
        bad = torch.nonzero(~torch.isfinite(losses[:step]))
        if not at_checkpoint and not len(bad):
            continue
        _sync(device)
        train_seconds += time.perf_counter() - resumed
        peak_memory = memory.stop()  # before the evaluation: the training peak
        checkpoint += 1
        warm = WARMUP_STEPS if step > WARMUP_STEPS else 0
        metrics: dict[str, Any] = {
            "checkpoint": checkpoint,
            "step": step,
            "loss": float(losses[previous:step].mean()),
            "samples_seen": step * batch_size,
            "train_seconds": train_seconds,
            "samples_per_second": (step - warm) * batch_size / (train_seconds - (warmup_seconds if warm else 0.0)),
            "warmup_steps": warm,
            "peak_memory_mib": peak_memory,
            **fixed,
        }
        previous = step
        if len(bad):
            metrics.update(dict.fromkeys((*MINING_KEYS, *EVAL_METRICS), math.nan))
            metrics.update({**dict.fromkeys(EVAL_SIZE_KEYS, 0), **splits.sizes()})  # nothing evaluated
            metrics.update(pinned_at_margin=False, collapsed=False, effective_rank=math.nan)
            metrics.update(status="diverged", reason=f"non-finite loss at step {int(bad[0]) + 1}")
        else:
            stats = mining_stats(embeddings.detach(), y_train[batch], margin)
            metrics.update({key: stats[key] for key in MINING_KEYS})
            last = out_of_time or step == steps  # the last checkpoint evaluates the whole sets
            evaluation, embedded = evaluate(lambda images: embed(model, images, mean, std, precision),
                                            splits, *((0, 0, eval_sizes) if last else eval_sizes))
            metrics.update(evaluation)
            if last:
                gap = evaluation["plateau_val_map_at_r"] - previous_val
                metrics["plateau_gap"] = gap if checkpoint > 1 else math.nan  # math.nan: equal to itself in a dict
            previous_val = evaluation["val_map_at_r"]
            metrics.update(checkpoint_diagnostics(
                cfg["loss"], margin, metrics["loss"], stats, metrics["val_knn_accuracy"],
                len(splits.y_val.unique()), embedded["val"],
            ))
            metrics["status"] = "collapsed" if metrics["collapsed"] else "ok"
        metrics["elapsed_seconds"] = time.perf_counter() - started
        report(metrics)
        if len(bad) or out_of_time or step == steps:
            break
        memory.start()
        _sync(device)
        resumed = time.perf_counter()
    if cfg["save_embeddings"] and metrics["status"] != "diverged":
        path = Path(cfg["save_embeddings"])
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            embeddings=embedded["test"][:SAVED_EMBEDDINGS].cpu().numpy().astype(np.float16),
            labels=splits.y_test[:SAVED_EMBEDDINGS].cpu().numpy(),  # the last evaluation embeds the whole test set
        )
    return metrics


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The CLI's arguments; every config key has a flag (dashes for underscores)."""
    p = Parser(prog="python -m bench.trial", description="Train and evaluate one trial.")
    p.add_argument("--dataset", help=f"one of {', '.join(DATASETS)} (required)")
    p.add_argument("--loss", help=f"one of {', '.join(LOSSES)} (required)")
    p.add_argument("--margin", type=float, help="(required)")
    p.add_argument("--batch-size", type=int, help="(required)")
    p.add_argument("--budget-samples", type=int, help="(required)")
    p.add_argument("--budget-seconds", type=float, help="training time limit (default: none)")
    p.add_argument("--sampler", help=f"one of {', '.join(SAMPLERS)} (default pk)")
    p.add_argument("--samples-per-class", type=int, help="K of the pk sampler (default 4)")
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoints", type=int, help="evaluations, evenly spaced (default 4)")
    p.add_argument("--embedding-dim", type=int, help="default: 50 (mnist), 128 (cifar10)")
    p.add_argument("--no-normalize", dest="normalize", action="store_false", default=None)
    p.add_argument("--model", help="mnist-net, resnet18 or cifar-net (default: mnist-net for mnist, resnet18 for "
                   "cifar10; see bench/models.py)")
    p.add_argument("--optimizer", help="adam, adamw or sgd (default: the dataset's, see bench/models.py)")
    p.add_argument("--lr", type=float, help="default: the dataset's, see bench/models.py")
    p.add_argument("--lr-scaling", help=f"one of {', '.join(LR_SCALINGS)}: lr × (batch size / reference batch) "
                   "** 0, 0.5 or 1 (default none)")
    p.add_argument("--lr-schedule", help=f"one of {', '.join(LR_SCHEDULES)}: over the planned steps (default "
                   "constant)")
    p.add_argument("--lr-reference-batch", type=int, help="the batch size at which the lr is as given (default 256)")
    p.add_argument("--precision", help=f"one of {', '.join(PRECISIONS)} (default auto: bf16 on CUDA and on CPUs "
                   "with native bf16, else fp32)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: as the process has)")
    p.add_argument("--protocol", help="seen (k-NN classification, the default) or unseen (held-out classes)")
    p.add_argument("--val-fraction", type=float, help="validation part of each class's training images "
                   "(default 0.1; seen only)")
    p.add_argument("--eval-gallery", type=int, help="gallery images (unseen: images per searched set) at the "
                   "checkpoints before the last (0 = all; default: all on CUDA, budget-scaled on CPU)")
    p.add_argument("--eval-queries", type=int, help="validation and test queries at the checkpoints before the "
                   "last (0 = all; default as --eval-gallery); the last checkpoint evaluates everything")
    p.add_argument("--train-subset", type=int, help="train on a fixed subset of this size (0 = all)")
    p.add_argument("--data-dir", help="default datasets/")
    p.add_argument("--device", help="auto, cpu or cuda (default auto)")
    p.add_argument("--save-embeddings", help="write the first ≤1000 test embeddings and labels to this .npz")
    p.add_argument("--out", help=f"write the trial's record to this .json (default {RECORDS_DIR}/"
                   "<dataset>-<loss>-m<margin>-b<batch size>-seed<seed>-<hash of the config>.json)")
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON line on stdout")
    p.add_argument("--smoke", action="store_true", help="a few steps on generated data in a temporary folder "
                   f"(ignores --data-dir); other flags override {SMOKE}")
    args = p.parse_args(argv)
    missing = [f"--{key.replace('_', '-')}" for key in REQUIRED if getattr(args, key) is None]
    if missing and not args.smoke:
        p.error(f"the following arguments are required: {', '.join(missing)}")
    return args


class Console(Progress):
    """The CLI's progress on stderr: the resolved setup, then a tqdm bar on a terminal (when tqdm is installed)
    or plain lines at every tenth of the steps or PROGRESS_SECONDS, each with the training time left at the
    pace so far (evaluation not included), and one line per checkpoint."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.last_line = time.perf_counter()
        self.tenths = 0

    def write(self, line: str) -> None:
        """One line on stderr, above the bar if there is one."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def setup(self, info: dict[str, Any]) -> None:
        """Print the resolved setup; open the bar on a terminal."""
        self.write("trial: " + ", ".join(f"{key} {value}" for key, value in info.items()))
        if sys.stderr.isatty():
            with contextlib.suppress(ImportError):
                from tqdm import tqdm

                self.bar = tqdm(total=info["steps"], unit="step", file=sys.stderr, dynamic_ncols=True)

    def step(self, step: int, steps: int, train_seconds: float) -> None:
        """Advance the bar, or print a line at a new tenth of the steps or after PROGRESS_SECONDS."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            return
        tenths, now = step * 10 // steps, time.perf_counter()
        if step < steps and (tenths > self.tenths or now - self.last_line >= PROGRESS_SECONDS):
            self.tenths, self.last_line = tenths, now
            left = train_seconds / step * (steps - step)
            self.write(f"step {step}/{steps} ({100 * step / steps:.0f}%), {train_seconds:.1f} s of training, "
                       f"about {left:.0f} s of training left")

    def checkpoint(self, metrics: dict[str, Any]) -> None:
        """One line per checkpoint."""
        self.write(
            f"checkpoint {metrics['checkpoint']}: step {metrics['step']}, {metrics['samples_seen']} samples, "
            f"loss {metrics['loss']:.4f}, knn {metrics['knn_accuracy']:.4f}, p@1 {metrics['precision_at_1']:.4f}, "
            f"MAP@R {metrics['map_at_r']:.4f}, {metrics['samples_per_second']:.0f} samples/s, "
            f"{metrics['train_seconds']:.1f} s training, {metrics['elapsed_seconds']:.1f} s elapsed, "
            f"{metrics['status']} {metrics.get('reason', '')}".rstrip()
        )

    def close(self) -> None:
        """Close the bar, if any."""
        if self.bar is not None:
            self.bar.close()


def default_out(config: dict[str, Any]) -> Path:
    """RECORDS_DIR/<dataset>-<loss>-m<margin>-b<batch size>-seed<seed>-<8 hex of the trial identity>.json."""
    cfg = trial_identity(config)
    digest = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]
    name = f"{cfg['dataset']}-{cfg['loss']}-m{float(cfg['margin']):g}-b{cfg['batch_size']}-seed{cfg['seed']}"
    return RECORDS_DIR / f"{name}-{digest}.json"


def check_out(path: Path) -> None:
    """Raise ConfigError unless a record can be written at `path` (before the trial runs, so nothing is lost)."""
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; give the path of a .json file")
    existing = next(folder for folder in path.absolute().parents if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ConfigError(f"--out {path}: cannot write under {existing}")


def write_record(path: Path, config: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """The trial's record, shaped like the grid's: config, status, reason, history, final, initial, provenance."""
    cfg = resolve(config)
    final = history[-1]
    record = {
        "trial_id": default_out(cfg).stem,
        "config": cfg,
        "status": final["status"],
        "reason": final.get("reason"),
        "history": history,
        "final": final,
        "initial": {key.removeprefix("initial_"): final[key] for key in INITIAL_KEYS},
        "provenance": {**provenance(pick_device(cfg["device"]), final.get("threads")),  # the trial's threads
                       "command": shlex.join(["python", "-m", "bench.trial", *sys.argv[1:]])},
    }
    write_json(path, record)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: exit code 0 after a trial (whatever its status), 2 on bad input or data."""
    args = vars(parse_args(argv))
    as_json, smoke, out = args.pop("json"), args.pop("smoke"), args.pop("out")
    config = {key: value for key, value in args.items() if value is not None}
    console, history = Console(), []

    def on_checkpoint(metrics: dict[str, Any]) -> None:
        history.append(dict(metrics))
        console.checkpoint(metrics)

    try:
        with contextlib.ExitStack() as stack:
            stack.callback(console.close)
            if smoke:
                data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="tripletbench-trial-smoke-"))
                config = {**SMOKE, **config, "data_dir": data_dir}
                write_synthetic(data_dir, config["dataset"])
            path = Path(out) if out else default_out(config)
            check_out(path)
            metrics = run_trial(config, on_checkpoint, console)
            write_record(path, config, history)
    except (ConfigError, DataError) as err:
        print(f"python -m bench.trial: error: {err}", file=sys.stderr)
        return 2
    console.write(f"record: {path}")
    if as_json:
        print(json.dumps(finite(metrics), allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
