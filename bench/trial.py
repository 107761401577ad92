"""One trial: train an embedding net with one loss under a sample budget, evaluate at checkpoints.

    from bench.trial import run_trial
    final = run_trial({"dataset": "mnist", "loss": "batch-hard", "batch_size": 256}, report=print)

The whole split lives on the device as uint8; each step gathers a batch from a precomputed index plan,
augments (CIFAR-10) and normalises it there. Training runs ⌈budget_samples / batch_size⌉ steps, or
fewer when `budget_seconds` of training time (evaluation excluded) run out first, and is evaluated at
`checkpoints` evenly spaced steps, the last one included.

Per checkpoint (see bench.config.METRICS): k-NN metrics of the eval queries (test set) against the
eval gallery (train set), both fixed subsets drawn with a seed of their own, so that every trial sees
the same ones; `loss` is the mean training loss since the previous checkpoint; the mining
statistics are those of the last training batch; `samples_per_second` counts training steps only;
`elapsed_seconds` is the wall time since the trial started. Status:
- `diverged`: a training loss is not finite. Losses stay on the device and are inspected every
  CHECK_EVERY steps; the trial stops there, and `reason` names the first non-finite step.
- `collapsed`: the eval queries' RMS distance to their centroid is below COLLAPSE_SPREAD times their
  RMS norm (with L2-normalised outputs: below 0.01), i.e. the embeddings have shrunk to a point.
- `ok` otherwise.
Eval sizes of None mean the device's default: everything on CUDA, CPU_EVAL on the CPU (a full MNIST
evaluation embeds all 70k images at every checkpoint, which would dominate a short CPU trial).
On CPU the trial runs with torch.use_deterministic_algorithms, so a seed fixes every metric but the
timings; on CUDA it uses bf16 autocast, cudnn.benchmark and fused optimisers. Tensors are channels_last
(faster on CPU as well).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
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
from bench.config import DATASETS, SAMPLERS, ConfigError, resolve
from bench.data import DataError, augment, channel_stats, load_dataset, normalize
from bench.evaluate import retrieval_metrics
from bench.models import build_model, build_optimizer, model_settings
from bench.sampling import make_batches
from bench.synthetic import write_synthetic
from losses import LOSSES, mining_stats

CPU_EVAL = {"eval_gallery": 10_000, "eval_queries": 0}  # 10k train images as gallery, the whole test set
CHECK_EVERY = 50
COLLAPSE_SPREAD = 0.01
EVAL_BATCH = 1024
SUBSET_SEED = 20170310  # fixed, so that eval and train subsets are the same in every trial
SAVED_EMBEDDINGS = 1000
REQUIRED = ("dataset", "loss", "margin", "batch_size", "budget_samples")
SMOKE = {"dataset": "mnist", "loss": "batch-all", "margin": 0.2, "batch_size": 32, "budget_samples": 256,
         "checkpoints": 2, "eval_gallery": 300, "eval_queries": 100}
MINING_KEYS = ("fraction_easy", "fraction_semihard", "fraction_hard", "mu_pos", "mu_neg")

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


def fixed_subset(n: int, size: int) -> Tensor:
    """Sorted indices of `size` of range(n) drawn with SUBSET_SEED (all of them when size is 0 or ≥ n)."""
    if not size or size >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    return torch.randperm(n, generator=generator)[:size].sort().values


def embed(model: torch.nn.Module, images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Embeddings [N, D] float32 of uint8 images [N, C, H, W], in eval mode and batches of EVAL_BATCH."""
    model.eval()
    cuda = images.device.type == "cuda"
    parts = []
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=cuda):
        for start in range(0, len(images), EVAL_BATCH):
            x = normalize(images[start:start + EVAL_BATCH], mean, std)
            parts.append(model(x.contiguous(memory_format=torch.channels_last)))
    model.train()
    return torch.cat(parts)


def spread(embeddings: Tensor) -> float:
    """RMS distance of embeddings [N, D] to their centroid over their RMS norm (0 when collapsed)."""
    centred = embeddings - embeddings.mean(dim=0)
    norm = embeddings.square().sum(dim=1).mean().sqrt()
    return float(centred.square().sum(dim=1).mean().sqrt() / norm.clamp_min(1e-12))


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or on Linux the process's RSS high-water mark (VmHWM).

    Without the reset a trial would inherit the peak of whatever ran before it in the same process (the
    local backend's earlier trials, or an earlier trial in a reused Ray actor).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux ≥ 4.0: VmHWM := current RSS


def peak_memory_mib(device: torch.device) -> float:
    """CUDA peak allocated memory on a GPU, else peak RSS since reset_peak_memory (VmHWM), in MiB.

    Where /proc is missing (macOS), the process's lifetime peak RSS (ru_maxrss) is the fallback.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_trial(config: dict[str, Any], report: Report | None = None) -> dict[str, Any]:
    """Train and evaluate one config; call report(metrics) at each checkpoint; return the last metrics."""
    cfg = resolve(config)
    device = pick_device(cfg["device"])
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(device.type == "cpu" or deterministic)
    try:
        return _run(cfg, device, report or (lambda metrics: None))
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _run(cfg: dict[str, Any], device: torch.device, report: Report) -> dict[str, Any]:
    started = time.perf_counter()
    settings = model_settings(cfg)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    reset_peak_memory(device)
    x_train, y_train, x_test, y_test = load_dataset(cfg["dataset"], cfg["data_dir"], device)
    if 0 < int(cfg["train_subset"]) < len(x_train):
        train = fixed_subset(len(x_train), int(cfg["train_subset"])).to(device)
        x_train, y_train = x_train[train], y_train[train]
    eval_sizes = {key: CPU_EVAL[key] if cfg[key] is None and not cuda else int(cfg[key] or 0) for key in CPU_EVAL}
    gallery = fixed_subset(len(x_train), eval_sizes["eval_gallery"]).to(device)
    queries = fixed_subset(len(x_test), eval_sizes["eval_queries"]).to(device)
    mean, std = channel_stats(x_train)

    seed, batch_size, margin = int(cfg["seed"]), int(cfg["batch_size"]), float(cfg["margin"])
    torch.manual_seed(seed)
    model = build_model(settings["model"], tuple(x_train.shape[1:]), int(settings["embedding_dim"]), cfg["normalize"])
    # channels_last on CPU too: an MNIST step at B = 256 on 2 cores took 291-297 ms vs 308-363 ms contiguous
    # (median of 6 steps after 2 warm-ups, two alternating runs each, commit 7f30cd4)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(settings["optimizer"], model.parameters(), float(settings["lr"]), fused=cuda)
    loss_fn = LOSSES[cfg["loss"]]
    steps = math.ceil(float(cfg["budget_samples"]) / batch_size)
    plan = make_batches(
        cfg["sampler"], y_train, batch_size, int(cfg["samples_per_class"]), steps,
        torch.Generator().manual_seed(seed),
    ).to(device)
    augment_generator = torch.Generator(device).manual_seed(seed + 1)
    augmenting = cfg["dataset"] == "cifar10"
    budget_seconds = float("inf") if cfg["budget_seconds"] is None else float(cfg["budget_seconds"])
    evaluate_at = checkpoint_steps(steps, int(cfg["checkpoints"]))
    losses = torch.full((steps,), math.nan, device=device)

    train_seconds, step, previous, checkpoint = 0.0, 0, 0, 0
    _sync(device)
    resumed = time.perf_counter()
    while True:
        batch = plan[step]
        x = x_train[batch]
        x = normalize(augment(x, augment_generator) if augmenting else x, mean, std)
        with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
            embeddings = model(x.contiguous(memory_format=torch.channels_last))
        loss = loss_fn(embeddings, y_train[batch], margin, check_finite=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[step] = loss.detach()
        step += 1
        out_of_time = train_seconds + time.perf_counter() - resumed >= budget_seconds
        at_checkpoint = step == evaluate_at[checkpoint] or out_of_time
        if not (at_checkpoint or step % CHECK_EVERY == 0):
            continue
        bad = torch.nonzero(~torch.isfinite(losses[:step]))
        if not at_checkpoint and not len(bad):
            continue
        _sync(device)
        train_seconds += time.perf_counter() - resumed
        checkpoint += 1
        metrics: dict[str, Any] = {
            "checkpoint": checkpoint,
            "step": step,
            "loss": float(losses[previous:step].mean()),
            "samples_seen": step * batch_size,
            "samples_per_second": step * batch_size / train_seconds,
        }
        previous = step
        if len(bad):
            metrics.update(dict.fromkeys((*MINING_KEYS, "knn_accuracy", "precision_at_1", "map_at_r"), math.nan))
            metrics.update(status="diverged", reason=f"non-finite loss at step {int(bad[0]) + 1}")
        else:
            stats = mining_stats(embeddings.detach(), y_train[batch], margin)
            metrics.update({key: stats[key] for key in MINING_KEYS})
            query_embeddings = embed(model, x_test[queries], mean, std)
            metrics.update(retrieval_metrics(
                embed(model, x_train[gallery], mean, std), y_train[gallery], query_embeddings, y_test[queries],
            ))
            metrics["status"] = "collapsed" if spread(query_embeddings) < COLLAPSE_SPREAD else "ok"
        metrics["peak_memory_mib"] = peak_memory_mib(device)
        metrics["elapsed_seconds"] = time.perf_counter() - started
        report(metrics)
        if len(bad) or out_of_time or step == steps:
            break
        _sync(device)
        resumed = time.perf_counter()
    if cfg["save_embeddings"] and metrics["status"] != "diverged":
        path = Path(cfg["save_embeddings"])
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            embeddings=query_embeddings[:SAVED_EMBEDDINGS].cpu().numpy().astype(np.float16),
            labels=y_test[queries][:SAVED_EMBEDDINGS].cpu().numpy(),
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
    p.add_argument("--optimizer", help="adam, adamw or sgd (default: the dataset's, see bench/models.py)")
    p.add_argument("--lr", type=float, help="default: the dataset's, see bench/models.py")
    p.add_argument("--eval-gallery", type=int, help="train images searched (0 = all; default: all on CUDA, "
                   f"{CPU_EVAL['eval_gallery']} on CPU)")
    p.add_argument("--eval-queries", type=int, help="test images queried (0 = all, the default)")
    p.add_argument("--train-subset", type=int, help="train on a fixed subset of this size (0 = all)")
    p.add_argument("--data-dir", help="default datasets/")
    p.add_argument("--device", help="auto, cpu or cuda (default auto)")
    p.add_argument("--save-embeddings", help="write ≤1000 test embeddings and labels to this .npz")
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON line on stdout")
    p.add_argument("--smoke", action="store_true", help="a few steps on generated data in a temporary folder "
                   f"(ignores --data-dir); other flags override {SMOKE}")
    args = p.parse_args(argv)
    missing = [f"--{key.replace('_', '-')}" for key in REQUIRED if getattr(args, key) is None]
    if missing and not args.smoke:
        p.error(f"the following arguments are required: {', '.join(missing)}")
    return args


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _progress(metrics: dict[str, Any]) -> None:
    print(
        f"checkpoint {metrics['checkpoint']}: step {metrics['step']}, {metrics['samples_seen']} samples, "
        f"loss {metrics['loss']:.4f}, knn {metrics['knn_accuracy']:.4f}, p@1 {metrics['precision_at_1']:.4f}, "
        f"MAP@R {metrics['map_at_r']:.4f}, {metrics['samples_per_second']:.0f} samples/s, "
        f"{metrics['elapsed_seconds']:.1f} s, {metrics['status']} {metrics.get('reason', '')}".rstrip(),
        file=sys.stderr, flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: exit code 0 after a trial (whatever its status), 2 on bad input or data."""
    args = vars(parse_args(argv))
    as_json, smoke = args.pop("json"), args.pop("smoke")
    config = {key: value for key, value in args.items() if value is not None}
    try:
        if smoke:
            with tempfile.TemporaryDirectory(prefix="tripletbench-trial-smoke-") as data_dir:
                config = {**SMOKE, **config, "data_dir": data_dir}
                write_synthetic(data_dir, config["dataset"])
                metrics = run_trial(config, _progress)
        else:
            metrics = run_trial(config, _progress)
    except (ConfigError, DataError) as err:
        print(f"python -m bench.trial: error: {err}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps({key: _json_value(value) for key, value in metrics.items()}, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
