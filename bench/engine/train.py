"""The trial loop: train an embedding net with one loss under a sample budget, evaluate at checkpoints.

    from bench.engine.train import run_trial
    final = run_trial({"dataset": "mnist", "loss": "batch-hard", "batch_size": 256}, report=print)

The whole split lives on the device as uint8; each step gathers a batch from a precomputed index plan,
augments (CIFAR-10) and normalises it there. Training runs ⌈budget_samples / batch_size⌉ steps, at most
`budget_steps`, or fewer when `budget_seconds` of training time (evaluation excluded) run out first; it is evaluated
at `checkpoints` evenly spaced steps, the last one included. The lr is the configured one scaled by
(batch_size / lr_reference_batch) ** {none: 0, sqrt: 0.5, linear: 1} (config `lr_scaling`), and follows
config `lr_schedule` over the planned steps (constant, or cosine to 0 at the sample budget). The forward pass
runs under config `precision` (bench/engine/precision.py: bf16 autocast or fp32); the loss is computed in fp32.

Before the first update, the margin check (bench/engine/diagnostics.py) embeds the first INITIAL_BATCHES planned
batches, augmented exactly as training will augment them, in train mode as the first update sees them (a copy of
the model, without gradients): nothing of the model, its BatchNorm statistics, the optimiser or the random streams
of training changes.

The data is split by bench.engine.protocol (config `protocol`, `val_fraction`): training never sees the
validation or test images. Per checkpoint (see bench.engine.config.METRICS): the validation metrics (val_*) and
the test metrics of bench.engine.protocol.evaluate, with the gallery and query sizes used and the split sizes.
The last checkpoint evaluates the whole validation and test sets against the whole gallery; earlier ones
use fixed subsets (bench.engine.protocol.intermediate_sizes: `eval_gallery`, `eval_queries`, or by default the
whole sets on CUDA and budget-scaled subsets on the CPU). So that the plateau is read like for like, the last
checkpoint also evaluates validation on those subsets: `plateau_val_map_at_r`, and `plateau_gap` = that minus
the previous checkpoint's `val_map_at_r` (NaN with one checkpoint). Evaluation embeds under the trial's precision
(bf16 autocast where bench.engine.precision resolves it so), and the searched embeddings are float32.
`loss` is the mean training loss since the previous checkpoint; the mining statistics are those of the
last training batch; `elapsed_seconds` is the wall time since the trial started.
Systems columns:
- `train_seconds`: cumulative training time (device-synchronised), evaluation and data loading excluded.
- `samples_per_second`: samples of the steps after the first WARMUP_STEPS over their training time; at a
  checkpoint with no step after the warm-up yet, over all steps so far (`warmup_steps` says which: 0 or
  WARMUP_STEPS).
- `cpu_share` (CPU trials; NaN on CUDA): the process's CPU time in the same timed region over `train_seconds` ×
  `threads`: about 1 when the trial had its threads' cores to itself, lower when other work shared them (then its
  `samples_per_second` and `train_seconds` are not the training's own speed).
- `peak_memory_mib`: the training peak, read before each evaluation and reset after it (see TrainingPeak).
- `planned_steps`, `images_per_class` (mean over the plan's batches of B / distinct classes), `lr` (after
  lr_scaling), `precision` (what ran: fp32 or bf16), `threads` (torch's intra-op threads during the trial).
Diagnostics (bench/engine/diagnostics.py): the initial_* statistics and `effective_margin` of the margin check (the
same at every checkpoint), and, on the validation embeddings, `pinned_at_margin`, `collapsed`, `effective_rank`
and `spread`; at the last checkpoint, `intra_class_distance` and `inter_class_distance` of the whole test set
(NaN before it). Status:
- `diverged`: a training loss is not finite. Losses stay on the device and are inspected every
  CHECK_EVERY steps; the trial stops there, and `reason` names the first non-finite step.
- `collapsed`: the checkpoint's `collapsed` diagnostic (validation k-NN accuracy near chance, effective
  rank < 2, or a spread below a fifth of the margin check's initial spread).
- `ok` otherwise. The trial's status is its last checkpoint's.
On CPU the trial runs with torch.use_deterministic_algorithms, so at a fixed thread count (config `threads`,
set for the trial and restored afterwards) and precision a seed fixes every metric but the timings; on CUDA
it uses cudnn.benchmark and fused optimisers. Tensors are channels_last (faster on CPU as well).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.engine.config import planned_steps, resolve
from bench.engine.data import channel_stats, normalize
from bench.engine.datasets import DATASETS
from bench.engine.device import pick_device, sync
from bench.engine.diagnostics import (
    INITIAL_BATCHES,
    checkpoint_diagnostics,
    class_distances,
    images_per_class,
    initial_statistics,
)
from bench.engine.files import save_npz
from bench.engine.memory import TrainingPeak
from bench.engine.models import build_optimizer, import_model_code, initial_model, model_settings
from bench.engine.precision import autocast, resolve_precision
from bench.engine.protocol import EVAL_METRICS, EVAL_SIZE_KEYS, evaluate, intermediate_sizes, load_splits
from bench.engine.sampling import make_batches
from bench.engine.step import batch_input, train_step, training_loss
from losses import mining_stats

CHECK_EVERY = 50
# a trial's cpu_share below this: other work shared its cores (the grid says so; the report marks the cell)
QUIET_SHARE = 0.9
# steps left out of samples_per_second: the first steps pay for allocator growth, cudnn.benchmark's autotuning
# and cold caches (make bench likewise times after 5 warm-up steps)
WARMUP_STEPS = 5
LR_EXPONENTS = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
EVAL_BATCH = 1024
SAVED_EMBEDDINGS = 1000
MINING_KEYS = ("fraction_easy", "fraction_semihard", "fraction_hard", "mu_pos", "mu_neg")
CLASS_DISTANCE_KEYS = ("intra_class_distance", "inter_class_distance")

Report = Callable[[dict[str, Any]], None]


def checkpoint_steps(steps: int, checkpoints: int) -> list[int]:
    """The steps (1-based, increasing, last = steps) after which to evaluate: evenly spaced fractions."""
    return sorted({max(1, (steps * i + checkpoints // 2) // checkpoints) for i in range(1, checkpoints + 1)})


def embed(model: torch.nn.Module, images: Tensor, mean: Tensor, std: Tensor, precision: str = "fp32") -> Tensor:
    """Embeddings [N, D] float32 of uint8 images [N, C, H, W], in eval mode and batches of EVAL_BATCH,
    the forward pass under `precision` ('fp32' | 'bf16' autocast, bench.engine.precision)."""
    model.eval()
    parts = []
    with torch.inference_mode(), autocast(precision, images.device):
        for start in range(0, len(images), EVAL_BATCH):
            x = normalize(images[start:start + EVAL_BATCH], mean, std)
            parts.append(model(x.contiguous(memory_format=torch.channels_last)).float())
    model.train()
    return torch.cat(parts)


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, images: Tensor, mean: Tensor, std: Tensor,
                          precision: str = "fp32") -> None:
    """Re-estimate every BatchNorm's running statistics from uint8 images [N, C, H, W], without a gradient step: reset,
    then the cumulative average (momentum None) over batches of EVAL_BATCH in train mode (a last batch of one image
    is left out). What evaluating an untrained net needs: its fresh statistics (mean 0, variance 1) squeeze every
    embedding together in eval mode. Parameters do not change; a net without BatchNorm is left as it is."""
    norms = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    training = model.training
    model.train()
    with autocast(precision, images.device):
        for start in range(0, len(images) - 1, EVAL_BATCH):
            x = normalize(images[start:start + EVAL_BATCH], mean, std)
            model(x.contiguous(memory_format=torch.channels_last))
    model.train(training)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum


def scheduled_lr(lr: float, step: int, steps: int, schedule: str) -> float:
    """The lr of update step+1 of `steps` (0-based `step`): `lr` when constant, lr · (1 + cos(π·step/steps)) / 2
    when cosine."""
    return lr if schedule == "constant" else lr * (1 + math.cos(math.pi * step / steps)) / 2


def scaled_lr(lr: float, batch_size: int, rule: str, reference_batch: int) -> float:
    """lr × (batch_size / reference_batch) ** {none: 0, sqrt: 0.5, linear: 1}[rule]."""
    return lr * (batch_size / reference_batch) ** LR_EXPONENTS[rule]


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
    """bench.engine.diagnostics.initial_statistics of (images, labels) batches embedded as the first update sees
    them: in train mode (BatchNorm on the batch's own statistics, dropout as in training), one batch at a time, by a
    copy of the model under forked random streams, so that nothing of the model, its buffers, the optimiser or the
    random streams of training changes."""
    probe = copy.deepcopy(model).train()
    cuda = [torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), autocast(precision, device):
        embedded = [(probe(x).float(), labels) for x, labels in batches]
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
    import_model_code(settings["model"])
    memory = TrainingPeak(device)  # its baseline: the process once the data and the model's code are loaded

    seed, batch_size, margin = int(cfg["seed"]), int(cfg["batch_size"]), float(cfg["margin"])
    precision = resolve_precision(cfg["precision"], device)
    lr = scaled_lr(float(settings["lr"]), batch_size, cfg["lr_scaling"], int(cfg["lr_reference_batch"]))
    model = initial_model(cfg, tuple(x_train.shape[1:]), device)
    loss_fn, loss_parameters = training_loss(cfg, int(y_train.max()) + 1, device)
    optimizer = build_optimizer(settings["optimizer"], [*model.parameters(), *loss_parameters], lr, fused=cuda)
    steps = planned_steps(cfg)
    plan = make_batches(
        cfg["sampler"], y_train, batch_size, int(cfg["samples_per_class"]), steps,
        torch.Generator().manual_seed(seed),
    ).to(device)
    augmenting = DATASETS[cfg["dataset"]].augment

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
    train_cpu_seconds = 0.0
    memory.start()
    sync(device)
    resumed, resumed_cpu = time.perf_counter(), time.process_time()
    while True:
        batch = plan[step]
        x = batch_input(x_train, batch, mean, std, augment_generator, augmenting)
        embeddings, losses[step] = train_step(model, optimizer, loss_fn, x, y_train[batch], margin, precision,
                                              scheduled_lr(lr, step, steps, cfg["lr_schedule"]))
        step += 1
        if step == WARMUP_STEPS < steps:
            sync(device)
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
        sync(device)
        train_seconds += time.perf_counter() - resumed
        train_cpu_seconds += time.process_time() - resumed_cpu
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
            "cpu_share": math.nan if cuda else train_cpu_seconds / (train_seconds * fixed["threads"]),
            "peak_memory_mib": peak_memory,
            **fixed,
        }
        previous = step
        if len(bad):
            metrics.update(dict.fromkeys((*MINING_KEYS, *EVAL_METRICS, *CLASS_DISTANCE_KEYS), math.nan))
            metrics.update({**dict.fromkeys(EVAL_SIZE_KEYS, 0), **splits.sizes()})  # nothing evaluated
            metrics.update(pinned_at_margin=False, collapsed=False, effective_rank=math.nan, spread=math.nan)
            metrics.update(status="diverged", reason=f"non-finite loss at step {int(bad[0]) + 1}")
        else:
            stats = mining_stats(embeddings.detach(), y_train[batch], margin)
            metrics.update({key: stats[key] for key in MINING_KEYS})
            last = out_of_time or step == steps  # the last checkpoint evaluates the whole sets
            evaluation, embedded = evaluate(lambda images: embed(model, images, mean, std, precision),
                                            splits, *((0, 0, eval_sizes) if last else eval_sizes))
            metrics.update(evaluation)
            metrics.update(dict.fromkeys(CLASS_DISTANCE_KEYS, math.nan))
            if last:
                gap = evaluation["plateau_val_map_at_r"] - previous_val
                metrics["plateau_gap"] = gap if checkpoint > 1 else math.nan  # math.nan: equal to itself in a dict
                metrics.update(class_distances(embedded["test"], splits.y_test))  # the whole test set
            previous_val = evaluation["val_map_at_r"]
            metrics.update(checkpoint_diagnostics(
                cfg["loss"], margin, metrics["loss"], stats, metrics["val_knn_accuracy"],
                len(splits.y_val.unique()), embedded["val"],
                fixed["initial_spread"],
            ))
            metrics["status"] = "collapsed" if metrics["collapsed"] else "ok"
        metrics["elapsed_seconds"] = time.perf_counter() - started
        report(metrics)
        if len(bad) or out_of_time or step == steps:
            break
        memory.start()
        sync(device)
        resumed, resumed_cpu = time.perf_counter(), time.process_time()
    if cfg["save_embeddings"] and metrics["status"] != "diverged":
        save_npz(
            cfg["save_embeddings"],
            embeddings=embedded["test"][:SAVED_EMBEDDINGS].cpu().numpy().astype(np.float16),
            labels=splits.y_test[:SAVED_EMBEDDINGS].cpu().numpy(),  # the last evaluation embeds the whole test set
        )
    return metrics
