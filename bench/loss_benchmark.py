"""`make bench`: forward+backward time and peak memory of every loss vs batch size, against its peers.

    python -m bench.loss_benchmark --out reports           # what `make bench` runs
    python -m bench.loss_benchmark --smoke --out /tmp/b    # seconds: tiny sizes and a tiny memory cap

Implementations, all on the same seeded inputs (unit-norm random embeddings [B, D], labels in balanced
classes, margin 0.2), each called as the trial calls a loss (no finiteness check of the inputs):
- `tripletbench/<loss>`: the five losses of `losses.LOSSES`, and any that `--plugins` files add (docs/own-loss.md);
- `dense/<loss>`: the B³ / B⁴ references of `losses.dense`, run until they fail;
- `pml-all-triplets`: pytorch-metric-learning's TripletMarginLoss over all triplets (batch-all's peer);
- `pml-batch-hard`: BatchHardMiner + TripletMarginLoss (batch-hard's peer); both with
  LpDistance(normalize_embeddings=False), the same Euclidean distance as ours;
- `sentence-transformers/<loss>`: sentence-transformers' BatchAllTripletLoss, BatchHardTripletLoss and
  BatchSemiHardTripletLoss (their loss functions on the embeddings; Euclidean, not squared, as ours), when the
  package is installed (`make bench` installs the `peers` extra; `make test` does not). Their batch-all and
  batch-hard are ours by definition; their semi-hard is TF Addons' (every positive pair, the hardest negative as
  fallback), not ours (docs/pml.md).

Each point (implementation × B × classes) runs in a process of its own, forked from a server that has
the libraries imported. It makes the inputs, starts the thread pool, calls the implementation once on
an 8-sample batch (which loads its code pages) and reads the baseline; then one warm-up call and up
to `repeats` timed calls follow, fewer when they would take more than half the time cap. Time is the
median forward+backward wall time (synchronised on CUDA). Memory is the peak above the baseline: on
the CPU peak RSS (ru_maxrss) minus the RSS at the baseline, on CUDA max_memory_allocated minus
memory_allocated. The absolute peak is reported too; every ratio and target uses the above-baseline peak.
The workers run with OMP_WAIT_POLICY=PASSIVE unless it is set (see `_context`).

A failure never stops the run. `OOM`: the largest tensor alone would exceed the memory cap (estimated
up front, not run), or an allocation failed under the cap (RLIMIT_AS on the CPU, the per-process
memory fraction on CUDA), or the measured peak exceeds the cap, or the kernel killed the process.
`timeout`: the warm-up and timed calls ran past the time cap. `error`: anything else. An
implementation that failed at some B is `skipped` at every larger B of the same class count.

Defaults. CPU: B = 128…4096, 8 GiB memory cap, 120 s time cap, 5 repeats; the whole run took 10.1 min
on 2 quiet cores (reports/loss_benchmark.md); B = 8192 is left out to keep it short (ask for it with
--batch-sizes). CUDA: B = 128…8192, the GPU's memory as the cap, 20 repeats.

The loss overhead is measured with the trial's own step (bench.engine.models' MNIST net and optimiser, the
trial's normalisation and channels-last layout, bf16 autocast on CUDA) on random 28×28 images at B = 512: the median
training step (forward, loss, backward, optimiser step) against the median forward+backward of the loss
alone on that step's embeddings.

Outputs in --out: loss_benchmark.csv (one row per point, ratio columns vs each peer),
loss_benchmark_overhead.csv, loss_benchmark.md (provenance, command, targets, headline, tables) and
loss_benchmark.png (log-log time and memory vs B). Each file is written atomically; nothing else in the
folder is touched.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import multiprocessing
import os
import re
import resource
import shlex
import signal
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_metric_learning
import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import BatchHardMiner
from torch import Tensor

from bench.cli import Parser, int_list
from bench.engine import plugins
from bench.engine.config import ConfigError, resolve
from bench.engine.data import normalize
from bench.engine.device import is_oom, one_line, pick_device, sync
from bench.engine.files import write_atomic, write_text
from bench.engine.models import build_model, build_optimizer, model_settings
from bench.experiment.provenance import provenance
from bench.reporting.markdown import table as markdown_table
from losses import LOSSES
from losses.dense import DENSE_LOSSES

MARGIN = 0.2
SEED = 0
OURS, DENSE, PML_ALL, PML_HARD = "tripletbench", "dense", "pml-all-triplets", "pml-batch-hard"
ST = "sentence-transformers"
ST_LOSSES = {"batch-all": ("BatchAllTripletLoss", "batch_all_triplet_loss"),
             "batch-hard": ("BatchHardTripletLoss", "batch_hard_triplet_loss"),
             "semi-hard": ("BatchSemiHardTripletLoss", "batch_semi_hard_triplet_loss")}
HAS_ST = importlib.util.find_spec("sentence_transformers") is not None
PEERS = (PML_ALL, PML_HARD, DENSE, ST)  # ST and DENSE are compared loss by loss, the pml peers at every loss
IMPLS: tuple[tuple[str, str], ...] = (
    *((OURS, loss) for loss in LOSSES),
    (PML_ALL, "batch-all"),
    (PML_HARD, "batch-hard"),
    *((DENSE, loss) for loss in DENSE_LOSSES),
    *(((ST, loss) for loss in ST_LOSSES) if HAS_ST else ()),
)  # the built-in series; a plugin's loss adds (OURS, its name) after the built-in losses (impls)
CPU_BATCH_SIZES = (128, 256, 512, 1024, 2048, 4096)
CUDA_BATCH_SIZES = (*CPU_BATCH_SIZES, 8192)
OVERHEAD_BATCH = 512
MNIST_SHAPE = (1, 28, 28)
SMOKE = {"batch_sizes": [16, 32], "classes": [4, 8], "dim": 16, "repeats": 2, "time_cap": 60.0,
         "memory_cap_mib": 3.75, "overhead_batch": 16}
STARTUP_SECONDS = 300.0  # for a point's process to import, make its inputs and read its baseline
RLIMIT_SLACK_MIB = 256  # address space beyond the cap for thread stacks and malloc arenas (CPU)
COLUMNS = ("impl", "loss", "label", "batch_size", "classes", "dim", "device", "status", "note", "median_ms",
           "repeats", "peak_memory_mib", "peak_absolute_mib", "baseline_mib")
OVERHEAD_COLUMNS = ("loss", "batch_size", "status", "note", "step_ms", "loss_ms", "loss_share", "steps")
PREFIX = "loss_benchmark"

Result = dict[str, Any]
Ready = Callable[[], None]

# Under `python -m bench.loss_benchmark`, every worker re-runs the main module as __mp_main__ (multiprocessing's
# preparation) although the forkserver's preload already imported it; runpy warns about that, harmlessly.
warnings.filterwarnings("ignore", message=r"'bench\.loss_benchmark' found in sys\.modules", category=RuntimeWarning)


@dataclass(frozen=True)
class Point:
    """One measurement: an implementation of a loss at one batch size and class count."""

    impl: str
    loss: str
    batch_size: int
    classes: int
    dim: int
    device: str
    repeats: int
    time_cap: float
    memory_cap_mib: float
    seed: int = SEED
    plugins: str = ""  # the plugins (bench.engine.plugins) the point's process imports first


@dataclass(frozen=True)
class OverheadPoint:
    """One loss-overhead measurement: the trial's MNIST step with one loss."""

    loss: str
    batch_size: int
    device: str
    steps: int
    seed: int = SEED
    plugins: str = ""


def label(impl: str, loss: str) -> str:
    """The series name: the pml peers by name, the others as implementation/loss."""
    return impl if impl.startswith("pml") else f"{impl}/{loss}"


def make_inputs(batch_size: int, classes: int, dim: int, seed: int, device: str) -> tuple[Tensor, Tensor]:
    """Seeded unit-norm embeddings [B, D] (a leaf that requires grad) and labels [B] in balanced classes."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.nn.functional.normalize(torch.randn(batch_size, dim, generator=generator), dim=1)
    labels = (torch.arange(batch_size) % classes)[torch.randperm(batch_size, generator=generator)]
    return embeddings.to(device).requires_grad_(), labels.to(device)


def loss_function(impl: str, loss: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The implementation as a function (embeddings, labels) → scalar loss at margin MARGIN."""
    if impl == OURS:
        ours = LOSSES[loss]
        return lambda embeddings, labels: ours(embeddings, labels, MARGIN, check_finite=False)
    if impl == DENSE:
        dense = DENSE_LOSSES[loss]
        return lambda embeddings, labels: dense(embeddings, labels, MARGIN)
    if impl == ST:
        return st_loss(loss)
    distance = LpDistance(normalize_embeddings=False)
    triplet = TripletMarginLoss(margin=MARGIN, distance=distance)
    if impl == PML_ALL:
        return triplet
    miner = BatchHardMiner(distance=distance)
    return lambda embeddings, labels: triplet(embeddings, labels, miner(embeddings, labels))


def st_loss(loss: str) -> Callable[[Tensor, Tensor], Tensor]:
    """sentence-transformers' loss function of `loss` at margin MARGIN, on embeddings as given (no model)."""
    try:
        from sentence_transformers.sentence_transformer import losses as st_losses
    except ImportError:  # before 6.0 the losses lived one level up
        from sentence_transformers import losses as st_losses
    name, method = ST_LOSSES[loss]
    function = getattr(getattr(st_losses, name)(None, margin=MARGIN), method)
    return lambda embeddings, labels: function(labels, embeddings)


def estimate_mib(impl: str, loss: str, batch_size: int, classes: int) -> float:
    """A lower bound on the memory of one call: its largest tensor (dense B³/B⁴ float32; pml's triplet indices;
    sentence-transformers' B³ float32 triplet tensor in batch-all and semi-hard)."""
    if impl == DENSE:
        return 4 * batch_size ** LOSSES[loss].order / 2**20
    if impl == ST and loss != "batch-hard":
        return 4 * batch_size**3 / 2**20
    if impl == PML_ALL:
        sizes = [batch_size // classes + (c < batch_size % classes) for c in range(classes)]
        return 3 * 8 * sum(n * (n - 1) * (batch_size - n) for n in sizes) / 2**20
    return 0.0


def _size(mib: float) -> str:
    """A memory size for humans: GiB from 1 GiB up, else MiB."""
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.3g} MiB"


def _proc_status_kib(key: str) -> int:
    """A 'kB' field of /proc/self/status (Linux), e.g. VmRSS or VmSize."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def _oom_note(err: BaseException) -> str:
    """'allocating 4.0 GiB failed under the cap' from a CPU or CUDA allocator error."""
    found = re.search(r"allocate (\d+) bytes", str(err))
    if found:
        return f"allocating {_size(int(found[1]) / 2**20)} failed under the cap"
    found = re.search(r"allocate ([\d.]+ [KMGT]iB)", str(err))
    return f"allocating {found[1]} failed under the cap" if found else f"failed under the cap ({one_line(err, 200)})"


def _cap_memory(device: torch.device, baseline_mib: float, cap_mib: float) -> None:
    """Make allocations beyond the cap fail: a memory fraction on CUDA, RLIMIT_AS (cap + slack) on the CPU."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**20
        torch.cuda.set_per_process_memory_fraction(min(1.0, (baseline_mib + cap_mib) / total), device)
        return
    limit = _proc_status_kib("VmSize") * 2**10 + int((cap_mib + RLIMIT_SLACK_MIB) * 2**20)
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def measure(point: Point, ready: Ready) -> Result:
    """Median forward+backward time and peak memory of one point (run in a process of its own)."""
    plugins.load(plugins.split(point.plugins))
    device = torch.device(point.device)
    cuda = device.type == "cuda"
    torch.manual_seed(point.seed)
    function = loss_function(point.impl, point.loss)
    embeddings, labels = make_inputs(point.batch_size, point.classes, point.dim, point.seed, point.device)
    few_embeddings, few_labels = make_inputs(8, 2, point.dim, point.seed, point.device)
    try:
        torch.ones(1 << 20).exp_()  # starts the intra-op thread pool, whose stacks belong to the baseline
        function(few_embeddings, few_labels).backward()
        sync(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device) / 2**20
        else:
            baseline = _proc_status_kib("VmRSS") / 2**10
        _cap_memory(device, baseline, point.memory_cap_mib)
        ready()
        started = time.perf_counter()
        times: list[float] = []
        for call in range(point.repeats + 1):  # call 0 is the warm-up
            if len(times) and time.perf_counter() - started + statistics.median(times) > point.time_cap / 2:
                break
            sync(device)
            tic = time.perf_counter()
            function(embeddings, labels).backward()
            sync(device)
            if call:
                times.append(time.perf_counter() - tic)
            embeddings.grad = None
    except Exception as err:
        if is_oom(err):
            return {"status": "OOM", "note": _oom_note(err)}
        raise
    # ru_maxrss lags the RSS by a few pages, so a peak no higher than the baseline can read just below it
    peak = max(torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _peak_rss_mib(), baseline)
    above = peak - baseline
    result = {"status": "ok", "note": "", "median_ms": 1000 * statistics.median(times), "repeats": len(times),
              "peak_memory_mib": above, "peak_absolute_mib": peak, "baseline_mib": baseline}
    if above > point.memory_cap_mib:
        result.update(status="OOM", note=f"peak {_size(above)} > cap {_size(point.memory_cap_mib)}")
    return result


def measure_overhead(point: OverheadPoint, ready: Ready) -> Result:
    """Median trial step (MNIST net, this loss) and median loss-alone forward+backward on its embeddings."""
    plugins.load(plugins.split(point.plugins))
    device = torch.device(point.device)
    cuda = device.type == "cuda"
    torch.use_deterministic_algorithms(not cuda)  # as the trial does
    torch.manual_seed(point.seed)
    settings = model_settings(resolve({"dataset": "mnist"}))
    model = build_model("mnist-net", MNIST_SHAPE, int(settings["embedding_dim"]), normalize=True)
    model = model.to(device, memory_format=torch.channels_last)  # as the trial does, on every device
    optimizer = build_optimizer(settings["optimizer"], model.parameters(), float(settings["lr"]), fused=cuda)
    generator = torch.Generator().manual_seed(point.seed)
    images = torch.randint(0, 256, (point.batch_size, *MNIST_SHAPE), dtype=torch.uint8, generator=generator)
    images = images.to(device)
    labels = (torch.arange(point.batch_size) % 10).to(device)
    mean, std = torch.full((1,), 0.13, device=device), torch.full((1,), 0.31, device=device)
    loss_fn = LOSSES[point.loss]
    ready()
    step_times: list[float] = []
    loss_times: list[float] = []
    for step in range(point.steps + 1):  # step 0 is the warm-up
        sync(device)
        tic = time.perf_counter()
        x = normalize(images, mean, std)
        with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
            embeddings = model(x.contiguous(memory_format=torch.channels_last))
        loss = loss_fn(embeddings, labels, MARGIN, check_finite=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        middle = time.perf_counter()
        leaf = embeddings.detach().requires_grad_()
        loss_fn(leaf, labels, MARGIN, check_finite=False).backward()
        sync(device)
        if step:
            step_times.append(middle - tic)
            loss_times.append(time.perf_counter() - middle)
    step_ms, loss_ms = 1000 * statistics.median(step_times), 1000 * statistics.median(loss_times)
    return {"status": "ok", "note": "", "step_ms": step_ms, "loss_ms": loss_ms, "loss_share": loss_ms / step_ms,
            "steps": point.steps}


def _child(target: Callable[[Any, Ready], Result], arg: Any, conn: Any) -> None:
    """Process body: run target(arg, ready) and send its result; an exception becomes an `error` result."""
    try:
        result = target(arg, lambda: conn.send("ready"))
    except Exception as err:
        result = {"status": "error", "note": one_line(err, 200)}
    conn.send(result)
    conn.close()


def _context() -> Any:
    """A forkserver context whose server has torch, the losses and pytorch-metric-learning imported.

    The server, started on first use, inherits OMP_WAIT_POLICY=PASSIVE unless the variable is set: with
    libgomp's default spin-waiting, a parallel region on a CPU that other processes also use waits for a
    scheduler time slice, which can multiply the time of a millisecond-scale call.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["bench.loss_benchmark"])
    return context


def run_isolated(target: Callable[[Any, Ready], Result], arg: Any, time_cap: float) -> Result:
    """target(arg, ready) in a fresh process; `timeout` when it runs time_cap s past ready(), killed if need be."""
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(target, arg, sender), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(STARTUP_SECONDS):
            return {"status": "error", "note": f"not ready after {STARTUP_SECONDS:g} s"}
        message = receiver.recv()
        if message != "ready":
            return message
        if not receiver.poll(time_cap):
            return {"status": "timeout", "note": f"> {time_cap:g} s"}
        return receiver.recv()
    except EOFError:
        process.join()
        if process.exitcode == -signal.SIGKILL:
            return {"status": "OOM", "note": "killed by SIGKILL (the kernel's OOM killer?)"}
        return {"status": "error", "note": f"process died with exit code {process.exitcode}"}
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        receiver.close()


def impls() -> tuple[tuple[str, str], ...]:
    """The series: IMPLS, then ours of every loss a plugin added to LOSSES (it has no dense reference)."""
    built_in = [loss for impl, loss in IMPLS if impl == OURS]
    count = len(built_in)
    return (*IMPLS[:count], *((OURS, loss) for loss in LOSSES if loss not in built_in), *IMPLS[count:])


def grid(settings: dict[str, Any]) -> list[Point]:
    """Every point of the run, by class count, then batch size, then implementation."""
    return [
        Point(impl, loss, batch_size, classes, settings["dim"], settings["device"], settings["repeats"],
              settings["time_cap"], settings["memory_cap_mib"], plugins=settings["plugins"])
        for classes in settings["classes"]
        for batch_size in settings["batch_sizes"]
        for impl, loss in impls()
    ]


def run_grid(points: list[Point], log: Callable[[str], None] = lambda line: None) -> list[Result]:
    """Measure every point; after a failure, the same implementation and class count is skipped at larger B."""
    failed_at: dict[tuple[str, str, int], int] = {}
    rows = []
    for number, point in enumerate(points, 1):
        key = (point.impl, point.loss, point.classes)
        estimate = estimate_mib(point.impl, point.loss, point.batch_size, point.classes)
        if key in failed_at:
            result = {"status": "skipped", "note": f"failed at B={failed_at[key]}"}
        elif estimate > point.memory_cap_mib:
            result = {"status": "OOM",
                      "note": f"est. ≥ {_size(estimate)} > cap {_size(point.memory_cap_mib)} (not run)"}
        else:
            result = run_isolated(measure, point, point.time_cap)
        if result["status"] != "ok":
            failed_at.setdefault(key, point.batch_size)
        row = {"impl": point.impl, "loss": point.loss, "label": label(point.impl, point.loss),
               "batch_size": point.batch_size, "classes": point.classes, "dim": point.dim, "device": point.device,
               **result}
        rows.append(row)
        figures = (f" {row['median_ms']:.1f} ms, {row['peak_memory_mib']:.0f} MiB ({row['repeats']} repeats)"
                   if row["status"] == "ok" else "")
        log(f"[{number}/{len(points)}] B={point.batch_size} classes={point.classes} {row['label']}: "
            f"{row['status']}{figures} {row.get('note', '')}".rstrip())
    return rows


def run_overhead(settings: dict[str, Any], log: Callable[[str], None] = lambda line: None) -> list[Result]:
    """The loss overhead of the trial's MNIST step for every loss, each in a process of its own."""
    rows = []
    for loss in LOSSES:
        point = OverheadPoint(loss, settings["overhead_batch"], settings["device"], settings["repeats"],
                              plugins=settings["plugins"])
        row = {"loss": loss, "batch_size": point.batch_size, **run_isolated(measure_overhead, point,
                                                                             settings["time_cap"])}
        rows.append(row)
        share = (f" {row['loss_ms']:.1f} / {row['step_ms']:.1f} ms = {row['loss_share']:.1%}"
                 if row["status"] == "ok" else "")
        log(f"overhead B={point.batch_size} {loss}: {row['status']}{share} {row.get('note', '')}".rstrip())
    return rows


def add_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Add speedup_vs_<peer> (peer time / ours) and memory_ratio_vs_<peer> (ours / peer) where both ran."""
    table = table.copy()
    ok = table[table["status"] == "ok"]
    ours = ((table["impl"] == OURS) & (table["status"] == "ok")).to_numpy()
    for peer in PEERS:
        keys = ["batch_size", "classes"] + (["loss"] if peer in (DENSE, ST) else [])
        peer_rows = ok[ok["impl"] == peer][[*keys, "median_ms", "peak_memory_mib"]]
        matched = table[keys].merge(peer_rows, on=keys, how="left")
        name = peer.replace("-", "_")
        speedup = matched["median_ms"].to_numpy() / table["median_ms"].to_numpy()
        peer_memory = matched["peak_memory_mib"].where(matched["peak_memory_mib"] > 0).to_numpy()
        memory_ratio = table["peak_memory_mib"].to_numpy() / peer_memory
        table[f"speedup_vs_{name}"] = pd.Series(speedup).where(ours).to_numpy()
        table[f"memory_ratio_vs_{name}"] = pd.Series(memory_ratio).where(ours).to_numpy()
    return table


def _value(table: pd.DataFrame, column: str, **where: Any) -> tuple[float | None, str]:
    """One row's column where every `where` matches: (value, '') if it ran, else (None, its status)."""
    rows = table
    for key, value in where.items():
        rows = rows[rows[key] == value]
    if rows.empty:
        return None, "not in this run's grid"
    row = rows.iloc[0]
    if row["status"] != "ok" or pd.isna(row[column]):
        return None, f"{row['status']} {row['note']}".strip() if row["status"] != "ok" else "peer did not run"
    return float(row[column]), ""


def _verdict(value: float, target: float, at_least: bool) -> str:
    """'met' or 'missed', with how far from the target the value is."""
    if at_least:
        return f"met ({value / target:.1f}× the target)" if value >= target else \
            f"**missed** by {1 - value / target:.0%} ({value / target:.2f}× the target)"
    return f"met ({value / target:.2f}× the limit)" if value <= target else \
        f"**missed** by {value / target - 1:.0%} ({value / target:.2f}× the limit)"


def targets(table: pd.DataFrame, overhead: pd.DataFrame, device_type: str) -> list[tuple[str, str, str]]:
    """The issue's targets as (target, measured, verdict) rows; those of the other device are 'not measured'."""
    out: list[tuple[str, str, str]] = []
    first_classes = int(table["classes"].iloc[0])
    cpu, cuda = device_type == "cpu", device_type == "cuda"

    def single(name: str, column: str, goal: float, at_least: bool, fmt: str, on: bool, **where: Any) -> None:
        if not on:
            out.append((name, "not measured", f"not measured (this run is on {device_type})"))
            return
        value, why = _value(table, column, **where)
        verdict = "not measured" if value is None else _verdict(value, goal, at_least)
        out.append((name, why or fmt.format(value), verdict))

    def worst(name: str, rows: pd.DataFrame, column: str, goal: float, fmt: str, on: bool, what: str) -> None:
        if not on:
            out.append((name, "not measured", f"not measured (this run is on {device_type})"))
            return
        if rows.empty:
            out.append((name, "not in this run's grid", "not measured"))
            return
        failed = rows[rows["status"] != "ok"]
        if not failed.empty:
            first = failed.iloc[0]
            out.append((name, f"{first[what]}: {first['status']} {first['note']}".strip(), "**missed** (did not run)"))
            return
        top = rows.loc[rows[column].idxmax()]
        out.append((name, f"worst {top[what]}: " + fmt.format(top[column]), _verdict(float(top[column]), goal, False)))

    where_1024 = {"impl": OURS, "loss": "batch-all", "batch_size": 1024, "classes": first_classes}
    single(f"CPU: batch-all at B=1024 ({first_classes} classes) ≥ 20× faster than pml-all-triplets",
           "speedup_vs_pml_all_triplets", 20, True, "{:.1f}× faster", cpu, **where_1024)
    single(f"CPU: batch-all at B=1024 ({first_classes} classes) ≤ 0.3× pml-all-triplets' peak memory",
           "memory_ratio_vs_pml_all_triplets", 0.3, False, "{:.3f}× its memory", cpu, **where_1024)
    ours = table[table["impl"] == OURS]
    quadruplet_4096 = ours[(ours["loss"] == "quadruplet") & (ours["batch_size"] == 4096)].assign(
        where=lambda rows: rows["classes"].astype(str) + " classes")
    worst("CPU: quadruplet at B=4096 < 2 GiB peak", quadruplet_4096, "peak_memory_mib", 2048, "{:.0f} MiB", cpu,
          "where")
    at_2048 = ours[ours["batch_size"] == 2048].assign(
        where=lambda rows: rows["loss"] + ", " + rows["classes"].astype(str) + " classes")
    worst("CPU: every loss at B=2048 < 3 GiB peak", at_2048, "peak_memory_mib", 3072, "{:.0f} MiB", cpu, "where")
    hard = ours[ours["loss"] == "batch-hard"].assign(
        time_ratio=lambda rows: 1 / rows["speedup_vs_pml_batch_hard"],
        where=lambda rows: "B=" + rows["batch_size"].astype(str) + ", " + rows["classes"].astype(str) + " classes")
    worst("CPU: batch-hard at or below pml-batch-hard's time at every B", hard[hard["time_ratio"].notna()],
          "time_ratio", 1.0, "{:.2f}× its time", cpu, "where")
    batch_all = ours[ours["loss"] == "batch-all"][["batch_size", "classes", "median_ms"]]
    versus = quadruplet_4096.merge(batch_all, on=["batch_size", "classes"], suffixes=("", "_batch_all"))
    worst("CPU: quadruplet at B=4096 within 2× batch-all's time", versus.assign(
        time_ratio=lambda rows: rows["median_ms"] / rows["median_ms_batch_all"]), "time_ratio", 2.0,
        "{:.2f}× its time", cpu, "where")
    at_8192 = ours[(ours["batch_size"] == 8192) & (ours["classes"] == first_classes)].assign(where=lambda r: r["loss"])
    worst(f"CUDA: every loss at B=8192 ({first_classes} classes) < 50 ms forward+backward", at_8192, "median_ms", 50,
          "{:.1f} ms", cuda, "where")
    worst("CUDA: loss overhead < 10% of a training step at B=512",
          overhead[overhead["batch_size"] == OVERHEAD_BATCH].assign(where=lambda r: r["loss"]), "loss_share", 0.10,
          "{:.1%}", cuda, "where")
    return out


def _markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    return "\n".join(markdown_table(header, rows))


def _pivot(table: pd.DataFrame, classes: int, column: str, fmt: str) -> str:
    """Implementation × batch size table of one column at one class count; failed cells show their status."""
    rows = table[table["classes"] == classes]
    sizes = sorted(rows["batch_size"].unique())
    body = []
    for name in dict.fromkeys(rows["label"]):
        cells = rows[rows["label"] == name].set_index("batch_size")
        body.append([name] + [fmt.format(cells.at[b, column]) if cells.at[b, "status"] == "ok"
                              else cells.at[b, "status"] for b in sizes])
    return _markdown_table(["implementation"] + [f"B={b}" for b in sizes], body)


def _headline(table: pd.DataFrame) -> list[str]:
    """Batch-all at B=1024 against pml, quadruplet at B=4096, in words."""
    lines = []
    for classes in sorted(table["classes"].unique()):
        ours, why = _value(table, "median_ms", impl=OURS, loss="batch-all", batch_size=1024, classes=classes)
        peer, peer_why = _value(table, "median_ms", impl=PML_ALL, batch_size=1024, classes=classes)
        if ours is None or peer is None:
            lines.append(f"- batch-all at B=1024, {classes} classes: not compared ({why or peer_why}).")
            continue
        memory, _ = _value(table, "peak_memory_mib", impl=OURS, loss="batch-all", batch_size=1024, classes=classes)
        peer_memory, _ = _value(table, "peak_memory_mib", impl=PML_ALL, batch_size=1024, classes=classes)
        ratio = f"{memory / peer_memory:.3f}×" if peer_memory else "n/a"
        lines.append(f"- batch-all at B=1024, {classes} classes: {ours:.1f} ms vs pml-all-triplets {peer:.1f} ms "
                     f"(**{peer / ours:.0f}× faster**); peak {memory:.0f} MiB vs {peer_memory:.0f} MiB "
                     f"(**{ratio}** its memory).")
    for classes in sorted(table["classes"].unique()):
        memory, why = _value(table, "peak_memory_mib", impl=OURS, loss="quadruplet", batch_size=4096, classes=classes)
        absolute, _ = _value(table, "peak_absolute_mib", impl=OURS, loss="quadruplet", batch_size=4096, classes=classes)
        ms, _ = _value(table, "median_ms", impl=OURS, loss="quadruplet", batch_size=4096, classes=classes)
        lines.append(f"- quadruplet at B=4096, {classes} classes: " + (
            f"peak **{memory:.0f} MiB** above baseline ({absolute:.0f} MiB absolute), {ms:.0f} ms."
            if memory is not None else f"{why}."))
    return lines


def _reached(table: pd.DataFrame) -> str:
    """Per implementation and class count: the largest B that ran, and the first failure."""
    class_counts = sorted(table["classes"].unique())
    body = []
    for name in dict.fromkeys(table["label"]):
        row: list[Any] = [name]
        for classes in class_counts:
            rows = table[(table["label"] == name) & (table["classes"] == classes)]
            ok = rows[rows["status"] == "ok"]["batch_size"]
            failures = rows[~rows["status"].isin(["ok", "skipped"])]
            first = (f"; {failures.iloc[0]['status']} at B={failures.iloc[0]['batch_size']}"
                     f" ({failures.iloc[0]['note']})" if not failures.empty else "")
            row.append(f"{ok.max() if len(ok) else 'none'}{first}")
        body.append(row)
    return _markdown_table(["implementation"] + [f"{c} classes: largest B (first failure)" for c in class_counts], body)


def write_markdown(table: pd.DataFrame, overhead: pd.DataFrame, settings: dict[str, Any], info: dict[str, Any],
                   command: str, seconds: float) -> str:
    """The report: provenance and command, settings, targets, headline, reach, overhead, full tables."""
    memory = ("peak RSS minus the RSS after imports, inputs and an 8-sample warm-up call"
              if settings["device"] == "cpu" else "max_memory_allocated minus memory_allocated before the calls")
    parts = [
        "# Loss benchmark: forward+backward time and peak memory vs batch size",
        "",
        f"Command: `{command}`",
        "",
        _markdown_table(["", ""], [[key, value] for key, value in info.items()]),
        "",
        f"Settings: B = {', '.join(map(str, settings['batch_sizes']))}; D = {settings['dim']}; classes = "
        f"{', '.join(map(str, settings['classes']))} (balanced); margin {MARGIN}; seed {SEED}; median of up to "
        f"{settings['repeats']} timed calls after one warm-up; time cap {settings['time_cap']:g} s and memory cap "
        f"{settings['memory_cap_mib']:g} MiB per point; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} in the "
        f"workers; run time {seconds / 60:.1f} min. Memory is the peak "
        f"above baseline ({memory}); the absolute peak is in the CSV; every ratio and target uses the "
        "above-baseline peak. Speedup = peer time / ours; memory ratio = ours / peer. "
        + (f"sentence-transformers {importlib.metadata.version('sentence-transformers')} measured."
           if HAS_ST else "sentence-transformers is not installed: its losses are not measured (`make bench` "
           "installs the `peers` extra)."),
        "",
        "## Targets",
        "",
        _markdown_table(["target", "measured", "verdict"], [list(row) for row in targets(table, overhead,
                                                                                           settings["device"])]),
        "",
        "## Headline",
        "",
        *_headline(table),
        "",
        "## Largest batch size reached",
        "",
        _reached(table),
        "",
        f"## Loss overhead: the trial's MNIST step at B={settings['overhead_batch']}",
        "",
        _markdown_table(["loss", "step (ms)", "loss alone (ms)", "loss share", "status"], [
            [row["loss"], f"{row['step_ms']:.1f}" if row["status"] == "ok" else "",
             f"{row['loss_ms']:.2f}" if row["status"] == "ok" else "",
             f"{row['loss_share']:.1%}" if row["status"] == "ok" else "", f"{row['status']} {row['note']}".strip()]
            for row in overhead.to_dict("records")]),
    ]
    for classes in settings["classes"]:
        parts += ["", f"## Median forward+backward time (ms), {classes} classes", "",
                  _pivot(table, classes, "median_ms", "{:.3g}"),
                  "", f"## Peak memory above baseline (MiB), {classes} classes", "",
                  _pivot(table, classes, "peak_memory_mib", "{:.0f}")]
    parts += ["", f"![time and memory vs batch size]({PREFIX}.png)", ""]
    return "\n".join(parts)


FAILURES = ("OOM", "timeout", "error")
STYLES = {OURS: "-", PML_ALL: "--", PML_HARD: "-.", DENSE: ":", ST: (0, (1, 1, 3, 1))}
SHAPES = {OURS: "o", PML_ALL: "^", PML_HARD: "v", DENSE: "D", ST: "s"}


def plot_figure(table: pd.DataFrame, hardware: str) -> Any:
    """Log-log time (top) and memory (bottom) vs B, a column per class count; colour = loss (the report's fixed
    palette), line style = implementation; an implementation's first OOM / timeout / error is marked at the top
    of its panel at the B where it failed; the hardware in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from bench.reporting.plots import palette

    colours = palette(tuple(LOSSES), list(table["loss"]))
    class_counts = sorted(table["classes"].unique())
    sizes = sorted(table["batch_size"].unique())
    figure, axes = plt.subplots(2, len(class_counts), figsize=(6.0 * len(class_counts) + 3, 9), squeeze=False,
                                layout="constrained")
    failed: set[str] = set()
    for column, classes in enumerate(class_counts):
        for row, (y, name) in enumerate((("median_ms", "forward+backward time (ms, median)"),
                                         ("peak_memory_mib", "peak memory above baseline (MiB)"))):
            axis = axes[row][column]
            top = axis.get_xaxis_transform()
            for (impl, loss), rows in table[table["classes"] == classes].groupby(["impl", "loss"], sort=True):
                rows = rows.sort_values("batch_size")
                ok = rows[(rows["status"] == "ok") & (rows[y] > 0)]
                axis.plot(ok["batch_size"], ok[y], linestyle=STYLES.get(impl, "-"), marker=SHAPES.get(impl, "o"),
                          markersize=4, color=colours[loss])
                failures = rows[rows["status"].isin(FAILURES)]
                if len(failures):
                    first = failures.iloc[0]
                    height = 0.96 - 0.06 * list(STYLES).index(impl) if impl in STYLES else 0.7
                    axis.scatter([first["batch_size"]], [height], transform=top, marker=SHAPES.get(impl, "o"), s=45,
                                 color=colours[loss], edgecolor="black", zorder=3, clip_on=False)
                    axis.annotate(first["status"], (first["batch_size"], height), xycoords=top, xytext=(6, -3),
                                  textcoords="offset points", fontsize="x-small")
                    failed.add(first["status"])
            axis.set(xscale="log", yscale="log", xlabel="batch size B (embeddings)", ylabel=name,
                     title=f"{classes} classes")
            axis.set_xticks(sizes, [str(b) for b in sizes])
            axis.minorticks_off()
    handles = [Line2D([], [], color=colours[loss], label=loss) for loss in dict.fromkeys(table["loss"])]
    handles += [Line2D([], [], color="0.3", linestyle=STYLES.get(impl, "-"), marker=SHAPES.get(impl, "o"), label=impl)
                for impl in dict.fromkeys(table["impl"])]
    if failed:
        handles.append(Line2D([], [], color="white", linestyle="none", marker="o", markeredgecolor="black",
                              label="black-edged: where an implementation\nfirst failed (" + ", ".join(sorted(failed))
                              + "), at the top"))
    figure.legend(handles=handles, loc="outside right center", fontsize="small")
    figure.suptitle(f"Loss forward+backward time and peak memory vs batch size, D = {table['dim'].iloc[0]}; "
                    f"{hardware or 'hardware not recorded'}")
    return figure


def write_plot(table: pd.DataFrame, path: Path, hardware: str = "") -> None:
    """plot_figure(table, hardware) as a PNG without date or software metadata."""
    import matplotlib.pyplot as plt

    figure = plot_figure(table, hardware)
    write_atomic(path, lambda file: figure.savefig(file, format="png", dpi=110, metadata={"Software": None}))
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The CLI's arguments (unset ones get the device's or --smoke's default)."""
    p = Parser(prog="python -m bench.loss_benchmark", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default reports)")
    p.add_argument("--plugins", default="", help="comma-separated .py files whose losses join the series "
                   "(docs/own-loss.md)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto: CUDA if present")
    p.add_argument("--batch-sizes", type=int_list, help="comma-separated (default 128,…,4096 on CPU, …,8192 on CUDA)")
    p.add_argument("--dim", type=int, help="embedding dimension D (default 128)")
    p.add_argument("--classes", type=int_list, help="comma-separated class counts (default 10,100)")
    p.add_argument("--repeats", type=int, help="timed calls per point (default 5 on CPU, 20 on CUDA)")
    p.add_argument("--time-cap", type=float, help="seconds per point after its setup (default 120)")
    p.add_argument("--memory-cap-mib", type=float, help="per point (default 8192 on CPU, the GPU's memory on CUDA)")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny sizes, a {SMOKE['memory_cap_mib']:g} MiB cap (exercises OOM); seconds")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """Resolved settings: explicit flags, else --smoke's values, else the device's defaults."""
    try:
        device = pick_device(args.device).type
    except ConfigError as err:
        raise SystemExit(f"python -m bench.loss_benchmark: error: {err}") from None
    cuda = device == "cuda"
    defaults: dict[str, Any] = {
        "batch_sizes": list(CUDA_BATCH_SIZES if cuda else CPU_BATCH_SIZES),
        "classes": [10, 100],
        "dim": 128,
        "repeats": 20 if cuda else 5,
        "time_cap": 120.0,
        "memory_cap_mib": torch.cuda.get_device_properties(0).total_memory / 2**20 if cuda else 8192.0,
        "overhead_batch": OVERHEAD_BATCH,
    }
    if args.smoke:
        defaults.update(SMOKE)
    explicit = {key: value for key, value in vars(args).items() if key in defaults and value is not None}
    try:
        plugins.load(plugins.split(args.plugins))
    except plugins.PluginError as err:
        raise SystemExit(f"python -m bench.loss_benchmark: error: {err}") from None
    return {**defaults, **explicit, "device": device, "plugins": args.plugins}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the CSVs, the Markdown report and the plot into --out."""
    args = parse_args(argv)
    settings = settings_from(args)
    command = shlex.join(["python", "-m", "bench.loss_benchmark", *(sys.argv[1:] if argv is None else argv)])
    info = {**provenance(settings["device"]), "pytorch-metric-learning": pytorch_metric_learning.__version__,
            "pandas": pd.__version__}

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.perf_counter()
    table = add_ratios(pd.DataFrame(run_grid(grid(settings), log), columns=list(COLUMNS)))
    overhead = pd.DataFrame(run_overhead(settings, log), columns=list(OVERHEAD_COLUMNS))
    seconds = time.perf_counter() - started
    out: Path = args.out
    write_text(out / f"{PREFIX}.csv", table.to_csv(index=False, float_format="%.6g"))
    write_text(out / f"{PREFIX}_overhead.csv", overhead.to_csv(index=False, float_format="%.6g"))
    write_text(out / f"{PREFIX}.md", write_markdown(table, overhead, settings, info, command, seconds))
    write_plot(table, out / f"{PREFIX}.png", str(info.get("hardware", "")))
    log(f"wrote {out / PREFIX}.csv, {PREFIX}_overhead.csv, {PREFIX}.md and {PREFIX}.png in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    from bench.loss_benchmark import main as _main  # the importable module, so that child processes find it

    sys.exit(_main())
