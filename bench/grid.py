"""The ablation grid: dataset × [protocol ×] loss × margin × batch size × seed, one trial each, through Ray Tune or
in-process.

    python -m bench.grid --preset cpu --data-dir datasets --results results [--backend auto|ray|local]

A preset is `bench/presets/<name>.json` (or the path of such a file): {"doc": text} and a grid's sections,
"axes", "fixed", "per_dataset" and optionally "blocks", as bench.experiment.gridspec describes them; the grid is the
union of its blocks' points (Grid.points). Every expanded config is checked with bench.engine.config.resolve, and the
data sets are loaded once, before any trial starts.

Trials whose preset leaves config `threads` None get the CPUs the backend gives one trial: Ray's
--cpus-per-trial rounded (at least 1), or all of os.cpu_count() on the local backend.

Experiment E (default: the preset's name) lives in RESULTS/E/:
- grid.json: {"preset", "experiment", "doc", "citable", "axes", "fixed", "per_dataset", ["blocks",] ["fresh_seeds",]
  "threads", "data"} ("per_dataset" as in the preset, a dataset's "axes" included; "blocks" and "fresh_seeds" when
  the preset has them), "threads" the
  default above (None when the preset sets it everywhere), "data" each dataset's fingerprint
  (bench/experiment/fingerprint.py). Running the same grid on other data under an existing experiment name is refused
  in one line, and so is a changed grid that would drop a recorded trial, so that two grids or two data sets
  never mix. A changed grid that keeps every recorded trial as a point with the same identity (`check_grid`:
  an added margin, say, a new axis at the default, or a change where nothing was recorded yet) rewrites grid.json
  and runs its points.
- run.lock while a run is going on (bench/experiment/lock.py): a second run of the same experiment is refused.
- Trials still to run in precision bf16 on a CPU without native bf16 are refused in one line (check_precision;
  --allow-emulated-bf16 runs them): emulated bf16 is an order of magnitude slower and rounds unlike native runs.
- So are trials still to run on a CPU of another kind (model or recorded flags) than the one that ran the
  experiment's recorded trials (check_machine; --allow-mixed-cpus runs them): a seed pairs two trials only on one
  kind of CPU, since two kinds' kernels round differently.
- records/<trial_id>.json: one per finished trial, written once (see `make_record`), with
  records/<trial_id>.npz its test embeddings; trial_id = the first 12 hex characters of the sha1 of
  json.dumps({**trial_identity(config), "data_fingerprint": fingerprint}, sort_keys=True)
  (bench/experiment/identity.py). A trial with a
  record is never rerun or rewritten. Non-finite metrics are written as null.
- with "fresh_seeds": once every point has a record, each loss's validation-selected cell (per dataset and protocol,
  bench.reporting.stats.select on the records) runs on those seeds into the same records/ (Ray's state in
  ray-fresh/); the report shows them as experiment E-fresh, the test numbers to cite.
- report/: the report of this experiment alone, written when the grid ends (--reports elsewhere, --no-report
  none); the committed reports/ is made by `make report` from the reference experiments only.
- ray/: Ray Tune's own experiment state: re-running the same command restores it (Tuner.restore) and runs
  what is left, errored trials included; without it (deleted), a fresh Tune run skips every recorded trial.
  A changed grid drops it, since it holds the old grid's points. No record is ever deleted.

With RAY_ADDRESS set, the trials spread over that Ray cluster. RESULTS and the data folder must then be
on storage that every node sees at the same path: since Ray 2.7, results are not synced to the head.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.cli import Parser
from bench.engine.config import STATUSES, ConfigError, resolve
from bench.engine.data import DataError
from bench.engine.device import is_oom, one_line, pick_device, release_cached
from bench.engine.files import finite, write_json
from bench.engine.precision import CPU_BF16_FLAGS, cpu_has_native_bf16, cpu_isa, isa_text
from bench.engine.train import QUIET_SHARE, run_trial
from bench.experiment import records
from bench.experiment.baselines import baseline_records
from bench.experiment.fingerprint import fingerprint
from bench.experiment.gridspec import Grid, GridError, stored_grid, variant, with_threads
from bench.experiment.identity import trial_id
from bench.experiment.lock import LOCK_NAME, LockError, acquire, release
from bench.experiment.presets import default_preset, load_preset, preset_names
from bench.experiment.provenance import THREADS, cpu_kind, cpu_model, local_placement, provenance, ray_placement

POLL_SECONDS = 2.0
REPORT_DIR = "report"  # an experiment's own report: RESULTS/<experiment>/report/ (ignored by git, as Ray's files)
# Ray retries a trial whose worker or node died this many times in the same run; a trial's own exceptions
# never reach Ray (run_one records them), so only lost workers and nodes are retried.
MAX_NODE_FAILURES = 2
LOST = {"node": None, "resources": None, "concurrent_trials": None}  # placement of a trial whose worker died

TrialFn = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Context:
    """What every trial of one run shares: the grid, its data, its thread default and where things are."""

    grid: Grid
    experiment: str
    experiment_dir: str
    data_dir: str
    command: str
    fingerprints: dict[str, str]  # dataset -> bench.experiment.fingerprint.fingerprint: part of every trial's identity
    threads: int | None  # config `threads` where the preset leaves it None: the CPUs the backend gives a trial
    device: str = "auto"  # config `device` of every trial (a location key; tests force "cpu")
    allow_emulated_bf16: bool = False  # run bf16 trials on a CPU without native bf16 (check_precision)
    allow_mixed_cpus: bool = False  # run trials on another kind of CPU than the recorded ones (check_machine)

    def config(self, point: dict[str, Any]) -> dict[str, Any]:
        """The trial config of one grid point without location keys, `threads` filled in."""
        return with_threads(self.grid.config(point), self.threads)

    def trial_id(self, point: dict[str, Any]) -> str:
        """The trial id of one grid point (config and data fingerprint)."""
        return trial_id(self.config(point), self.fingerprints[point["dataset"]])


def _record_path(ctx: Context, tid: str, suffix: str = ".json") -> Path:
    return Path(ctx.experiment_dir) / "records" / f"{tid}{suffix}"


def trial_config(ctx: Context, point: dict[str, Any]) -> dict[str, Any]:
    """The config a grid point runs with: ctx.config, the absolute data folder, device, the preset's plugins and
    records/<trial_id>.npz."""
    config = {**ctx.config(point), "data_dir": ctx.data_dir, "device": ctx.device,
              "plugins": ",".join(ctx.grid.plugins)}
    return {**config, "save_embeddings": str(_record_path(ctx, ctx.trial_id(point), ".npz"))}


def read_record(ctx: Context, point: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a grid point's finished trial, or None (GridError naming a damaged record)."""
    try:
        return records.read_record(_record_path(ctx, ctx.trial_id(point)))
    except records.RecordError as err:
        raise GridError(f"{err}; move it aside (nothing else is touched) and re-run to train that trial again") \
            from None


def make_record(
    ctx: Context, point: dict[str, Any], status: str, reason: str | None, history: list[dict[str, Any]],
    placement: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A finished trial's record (bench/experiment/records.py) with the run's provenance.

    `placement` is {"node", "resources", "concurrent_trials"} of bench.experiment.provenance (default: this
    process, local backend).
    """
    config = trial_config(ctx, point)
    embeddings = Path(config["save_embeddings"])
    device = "cuda" if torch.cuda.is_available() and ctx.device in ("auto", "cuda") else "cpu"
    threads = history[-1].get("threads") if history else None  # the trial's threads
    return records.trial_record(
        ctx.trial_id(point), resolve(config), status, reason, history,
        {**provenance(device, threads), "command": ctx.command, **(placement or local_placement(device))},
        experiment=ctx.experiment, preset=ctx.grid.preset,
        embeddings=embeddings.name if status in ("ok", "collapsed") and embeddings.is_file() else None,
        fingerprint=ctx.fingerprints[point["dataset"]],
    )


def run_one(
    point: dict[str, Any], ctx: Context, trial_fn: TrialFn = run_trial,
    report: Callable[[dict[str, Any]], None] | None = None, placement: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Run one grid point unless it has a record; write its record; return (record, whether it ran now).

    Any exception of the trial becomes status OOM (out of memory) or error, with a one-line reason.
    """
    record = read_record(ctx, point)
    if record is not None:
        return record, False
    config = trial_config(ctx, point)
    history: list[dict[str, Any]] = []

    def on_checkpoint(metrics: dict[str, Any]) -> None:
        history.append(finite(dict(metrics)))
        if report is not None:
            report(metrics)

    try:
        final = trial_fn(config, on_checkpoint)
        status, reason = final.get("status", "ok"), final.get("reason")
    except Exception as err:  # a failed trial is a result, never the end of the grid
        status, reason = ("OOM" if is_oom(err) else "error"), one_line(err)
        release_cached()
    record = make_record(ctx, point, status, reason, history, placement)
    records.write_record(_record_path(ctx, record["trial_id"]), record)
    return record, True


def ray_trial(point: dict[str, Any], ctx: Context, trial_fn: TrialFn) -> None:
    """Ray Tune's function trainable: run_one, forwarding each checkpoint's metrics with tune.report (plus
    "record": the record's id; Tune keeps its own trial_id), so that Tune writes result.json and progress.csv.

    `point` is Ray's config of the trial: {"point": {axis: value}} (see ray_param_space).
    """
    from ray import tune

    point = ctx.grid.point(point)
    tid = ctx.trial_id(point)
    report = lambda metrics: tune.report({**metrics, "record": tid})  # noqa: E731
    record, ran = run_one(point, ctx, trial_fn, report, ray_placement(len(ctx.grid.points())))
    if not (ran and record["history"]):  # failed before its first checkpoint, or finished in an earlier run
        result = {**record["final"], "record": tid, "status": record["status"], "reason": record["reason"]}
        tune.report({key: value for key, value in result.items() if value is not None})


def _duration(seconds: float) -> str:
    """A duration for the progress line: seconds, minutes, or hours past two hours."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def eta_seconds(elapsed: float, ran: int, concurrent: int, left: int) -> float:
    """Seconds the `left` trials will take at this run's rate: `ran` finished in `elapsed` s, up to `concurrent` at
    once. The first trials to finish stand for their whole wave (the others started with them and are nearly done),
    so the rate counts at least `concurrent` trials; elapsed / ran alone is high by that factor until they finish."""
    return elapsed / max(ran, concurrent, 1) * left


class Progress:
    """Prints one line per finished trial, with an estimate of the time the rest will take."""

    def __init__(self, ctx: Context, points: list[dict[str, Any]]) -> None:
        self.total = len(points)
        self.protocols = "protocol" in ctx.grid.axes  # the line names the protocol when it is an axis
        self.axes = tuple(ctx.grid.axes)  # and the variant axes' values (bench.experiment.gridspec.variant)
        self.done = {record["trial_id"] for point in points if (record := read_record(ctx, point))}
        self.ran = 0
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def finished(self, record: dict[str, Any]) -> None:
        """Count and print a record written in this run."""
        with self.lock:
            if record["trial_id"] in self.done:
                return
            self.done.add(record["trial_id"])
            self.ran += 1
            done, left = len(self.done), self.total - len(self.done)
            concurrent = record["provenance"].get("concurrent_trials") or 1  # per node; None for a lost worker
            eta = eta_seconds(time.monotonic() - self.started, self.ran, concurrent, left)
        cfg, final = record["config"], record["final"]
        line = (f"[{done}/{self.total}] {cfg['dataset']}{' ' + cfg['protocol'] if self.protocols else ''} "
                f"{cfg['loss']} margin {cfg['margin']} "
                f"B {cfg['batch_size']} {f'[{setting}] ' if (setting := variant(cfg, self.axes)) else ''}"
                f"seed {cfg['seed']}: {record['status']}")
        if record["reason"]:
            line += f" ({record['reason'][:120]})"
        if final.get("knn_accuracy") is not None:
            line += f", knn {final['knn_accuracy']:.4f}"
        if final.get("samples_per_second") is not None:
            line += f", {final['samples_per_second']:.0f} samples/s, {final.get('elapsed_seconds') or 0:.0f} s"
        if (final.get("cpu_share") or 1.0) < QUIET_SHARE:
            line += f" (shared CPU: cpu_share {final['cpu_share']:.2f})"
        print(line + (f"; ~{_duration(eta)} left" if left else ""), flush=True)


def run_local(ctx: Context, points: list[dict[str, Any]], trial_fn: TrialFn, progress: Progress) -> None:
    """Run the grid sequentially in this process."""
    for point in points:
        record, ran = run_one(point, ctx, trial_fn)
        if ran:
            progress.finished(record)


def _poll_records(ctx: Context, points: list[dict[str, Any]], progress: Progress, stop: threading.Event) -> None:
    """Report new records to `progress` until `stop` is set (Ray's trials run in other processes)."""
    ids = {ctx.trial_id(point): point for point in points}
    while not stop.wait(POLL_SECONDS):
        for tid in set(ids) - progress.done:
            if (record := read_record(ctx, ids[tid])) is not None:
                progress.finished(record)


def quiet_ray() -> None:
    """Silence Ray's output that the project's own lines replace: the token-auth notice, Tune's tables, "Resume
    experiment with: Tuner.restore(...)" and "Failed to fetch metrics" after an interruption, and Tune's tracebacks
    of lost trials (run_ray prints one line for each). Tune's own logger callbacks stay on: every trial folder
    under RESULTS/E/ray/ gets result.json and progress.csv (and TensorBoard events where tensorboardX is installed)
    from the checkpoints ray_trial reports; the records never read them."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter at verbose=0 prints nothing; the new
    # one prints its configuration table, "View detailed results here" and every errored trial regardless
    for name in ("ray.tune", "ray.train", "ray._private.authentication"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def ray_storage_dir(experiment_dir: str | Path, name: str = "ray") -> Path:
    """Ray Tune's experiment state of an experiment: RESULTS/E/ray/ (ray-fresh/ for its fresh seeds)."""
    return Path(experiment_dir) / name


def ray_param_space(grid: Grid) -> dict[str, Any]:
    """Ray Tune's param_space of a grid: one grid search over its points ({"point": point}), so that Ray starts
    them in the grid's order (dataset by dataset, the seeds of a cell one after another: cells complete early in
    a long run) and a dataset may replace an axis's values."""
    from ray import tune

    return {"point": tune.grid_search(grid.points())}


def run_ray(
    ctx: Context, points: list[dict[str, Any]], trial_fn: TrialFn, progress: Progress,
    cpus_per_trial: float, gpus_per_trial: float | None, state: Path,
) -> None:
    """Run (or resume) ctx.grid as a Ray Tune experiment whose state is in `state`; starts Ray if needed."""
    quiet_ray()
    import ray
    from ray import tune

    started_ray = not ray.is_initialized()
    if started_ray and os.environ.get("RAY_ADDRESS"):
        print(f"Ray: connecting to the cluster at {os.environ['RAY_ADDRESS']}; RESULTS and the data folder "
              "must be on storage that every node sees", flush=True)
        ray.init(logging_level=logging.WARNING, log_to_driver=False)
    elif started_ray:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,  # "local": never a cluster
                 logging_level=logging.WARNING, log_to_driver=False)  # that an earlier `ray start` left running
    terminate_as_interrupt()  # again: ray.init installs its own SIGTERM handler, which prints a stack trace
    try:
        gpus_here = ray.cluster_resources().get("GPU", 0)
        gpus = (1 if gpus_here else 0) if gpus_per_trial is None else gpus_per_trial
        if gpus > gpus_here:
            raise GridError(f"--gpus-per-trial {gpus} but the Ray cluster has {gpus_here:g} GPU(s)")
        trainable = tune.with_resources(
            tune.with_parameters(ray_trial, ctx=ctx, trial_fn=trial_fn), {"cpu": cpus_per_trial, "gpu": gpus}
        )
        if tune.Tuner.can_restore(state):
            print(f"Ray: resuming the experiment from {state}", flush=True)
            tuner = tune.Tuner.restore(str(state), trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=ray_param_space(ctx.grid),
                tune_config=tune.TuneConfig(reuse_actors=True),
                run_config=tune.RunConfig(
                    name=state.name, storage_path=str(state.parent), verbose=0,
                    failure_config=tune.FailureConfig(max_failures=MAX_NODE_FAILURES, fail_fast=False),
                ),
            )
        stop = threading.Event()
        poller = threading.Thread(target=_poll_records, args=(ctx, points, progress, stop), daemon=True)
        poller.start()
        try:
            results = tuner.fit()
        finally:
            stop.set()
            poller.join()
        report_unfinished(ctx, points, progress, fitted_trials(results))
    finally:
        if started_ray:
            ray.shutdown()


def fitted_trials(results: Any) -> list[Any]:
    """Tune's Trials as Tuner.fit left them, held in memory by its ResultGrid (a Result has no status, nor a config
    when its trial was lost before the first report). Not the copy under the results folder, which Tune uploads
    from a staging folder in a background thread: an upload that fails is logged and swallowed, leaving it stale."""
    return results._experiment_analysis.trials


def report_unfinished(ctx: Context, points: list[dict[str, Any]], progress: Progress, trials: list[Any]) -> None:
    """After a Tune run: every point with a record goes to `progress`; one without gets a line of its own (an OOM
    record where Ray killed it for memory) unless an interrupt stopped it or left it unstarted, which one line
    counts (Tune ends a trial it stops at an interrupt as TERMINATED, hence TERMINATED without a record)."""
    states = {ctx.trial_id(ctx.grid.point(trial.config)): trial for trial in trials}
    stopped = 0
    for point in points:
        if (record := read_record(ctx, point)) is not None:
            progress.finished(record)
        elif (trial := states.get(ctx.trial_id(point))) is None:
            ray_failure(ctx, point, RuntimeError("Tune has no trial for it"))
        elif trial.status in ("PENDING", "PAUSED", "RUNNING", "TERMINATED"):
            stopped += 1
        else:
            ray_failure(ctx, point, trial.get_pickled_error() or RuntimeError(
                trial.get_error() or f"Tune ended it as {trial.status} without a record"))
    if stopped:
        print(f"{stopped} trial(s) stopped or not started by Tune (interrupted); re-run the same command to resume "
              "them", flush=True)


def ray_failure(ctx: Context, point: dict[str, Any], error: BaseException) -> None:
    """A trial that Ray lost: recorded as OOM when its worker was killed for memory, else left to resume."""
    if is_oom(error):
        record = make_record(ctx, point, "OOM", one_line(error), [], LOST)
        records.write_record(_record_path(ctx, record["trial_id"]), record)
    else:
        cause = getattr(error, "cause", None) or error  # a RayTaskError: what the trial raised, not Ray's traceback
        print(f"trial {point} failed in Ray ({one_line(cause, 200)}); re-run the same command to resume it",
              flush=True)


def record_baselines(ctx: Context, points: list[dict[str, Any]]) -> None:
    """Write records/baseline-<id>.json for each of the grid's baselines not recorded yet (bench.experiment.baselines).

    A protocol that cannot split the data (ConfigError) stops the grid here, before any trial (GridError).
    """
    configs = [trial_config(ctx, point) for point in points]
    try:
        for record in baseline_records(configs, ctx.data_dir, ctx.fingerprints, ctx.device,
                                       recorded=lambda bid: _record_path(ctx, bid).is_file(),
                                       experiment=ctx.experiment, preset=ctx.grid.preset, command=ctx.command):
            records.write_record(_record_path(ctx, record["trial_id"]), record)
            final, config = record["final"], record["config"]
            print(f"baseline {record['baseline']} {config['dataset']} {config['protocol']}"
                  + (f" seed {config['seed']}" if config["seed"] is not None else "")
                  + ("" if config.get("normalize", True) else " [normalize off]")
                  + f": val MAP@R {final['val_map_at_r']:.4f}, test MAP@R {final['map_at_r']:.4f}, "
                  f"test k-NN {final['knn_accuracy']:.4f}", flush=True)
    except (ConfigError, DataError) as err:
        raise GridError(str(err)) from None


def fingerprints(datasets: list[str], data_dir: str) -> dict[str, str]:
    """Each data set's fingerprint (bench/experiment/fingerprint.py); loading it on a cache miss also checks it, so that
    missing or corrupt data stops the grid before any trial (GridError)."""
    try:
        return {name: fingerprint(name, data_dir) for name in datasets}
    except DataError as err:
        raise GridError(str(err)) from None


def new_experiment_hint() -> str:
    """How to name a new experiment on the command line the user typed: make's variable or the flag."""
    return "EXPERIMENT=NAME" if os.environ.get("MAKELEVEL") else "--experiment NAME"


def _flat(spec: dict[str, Any]) -> dict[str, Any]:
    """grid.json's axes, fixed keys, per-dataset keys, blocks, fresh seeds and thread default as
    {"section.key[.key]": value}."""
    out = {"threads": spec.get("threads"), "blocks": spec.get("blocks"), "fresh_seeds": spec.get("fresh_seeds")}
    for section in ("axes", "fixed", "per_dataset"):
        for key, value in spec.get(section, {}).items():
            if section == "per_dataset":
                out.update({f"{section}.{key}.{k}": v for k, v in value.items()})
            else:
                out[f"{section}.{key}"] = value
    return out


def stored_spec(experiment_dir: Path) -> dict[str, Any] | None:
    """The experiment's grid.json, or None for a new (empty) folder (GridError for a foreign or broken one)."""
    path = experiment_dir / "grid.json"
    if not path.is_file():
        if experiment_dir.is_dir() and any(p.name != LOCK_NAME for p in experiment_dir.iterdir()):
            raise GridError(f"{experiment_dir} has files but no grid.json; pass {new_experiment_hint()} for a new "
                            "folder")
        return None
    try:
        stored = json.loads(path.read_text())
        _flat(stored)
        stored_grid(stored)
    except (OSError, ValueError, AttributeError, TypeError) as err:
        raise GridError(f"{path} is unreadable ({err}); pass {new_experiment_hint()} for a new folder") from None
    return stored


def recorded_ids(experiment_dir: Path, stored: dict[str, Any]) -> list[str]:
    """The trial ids (threads filled in) of the stored grid's points that have a record."""
    grid = stored_grid(stored)  # checked by stored_spec
    prints = stored.get("data") if isinstance(stored.get("data"), dict) else {}
    configs = [with_threads(grid.config(point), stored.get("threads")) for point in grid.points()]
    ids = [trial_id(config, prints[config["dataset"]]) for config in configs if config["dataset"] in prints]
    return [tid for tid in ids if (experiment_dir / "records" / f"{tid}.json").is_file()]


def check_grid(experiment_dir: Path, stored: dict[str, Any] | None, grid: Grid, threads: int | None) -> list[str]:
    """The differences between the folder's grid and `grid` (the data aside), [] when they are the same grid.
    A changed grid must keep every recorded trial as one of its points with the same identity (an extension, a
    new axis whose default stands for the old points, or a change where nothing was recorded yet); any other change
    is refused (GridError)."""
    if stored is None:
        return []
    before, now = _flat(stored), _flat(json.loads(json.dumps(grid.spec("", threads, {}))))
    changed = [f"{key}: {before.get(key)!r} there, {now.get(key)!r} now"
               for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]
    if not changed:
        return []
    prints = stored.get("data") if isinstance(stored.get("data"), dict) else {}
    ours = {trial_id(with_threads(grid.config(point), threads), prints[point["dataset"]])
            for point in grid.points() if point["dataset"] in prints}
    dropped = [tid for tid in recorded_ids(experiment_dir, stored) if tid not in ours]
    if dropped or not prints:
        why = (f"that would drop {len(dropped)} of its recorded trials" if dropped
               else "whose records cannot be matched (its grid.json names no data)")
        raise GridError(
            f"{experiment_dir} holds a different grid ({'; '.join(changed)}) {why}; pass {new_experiment_hint()} to "
            "start a new experiment, or run its original grid to resume it"
        )
    return changed


def check_data(experiment_dir: Path, stored: dict[str, Any] | None, prints: dict[str, str], data_dir: str) -> None:
    """Refuse (GridError) when the folder's trials ran on other data than `prints` (dataset -> fingerprint)."""
    if stored is None:
        return
    before = stored.get("data") if isinstance(stored.get("data"), dict) else {}
    changed = [f"{name} {before[name]} there, {value} now" for name, value in prints.items()
               if name in before and before[name] != value]
    if changed:
        raise GridError(
            f"{experiment_dir} was run on other data (fingerprint {'; '.join(changed)} in {data_dir}); pass "
            f"{new_experiment_hint()} to start a new experiment on this data, or point at its original data to "
            "resume it"
        )


def _runs_here(ctx: Context) -> bool:
    """Whether this host runs the grid's trials: not a Ray cluster's (RAY_ADDRESS) nor CUDA ones, which the CPU
    checks leave alone."""
    return not os.environ.get("RAY_ADDRESS") and pick_device(ctx.device).type == "cpu"


def _spelled(flag: str) -> str:
    """A command-line flag of the grid as the user passes it: GRID_ARGS=--flag under make, --flag otherwise."""
    return f"GRID_ARGS={flag}" if os.environ.get("MAKELEVEL") else flag


def check_precision(ctx: Context, points: list[dict[str, Any]], done: set[str]) -> None:
    """Refuse (GridError) to run the `points` whose trial id is not in `done` when one asks for precision bf16 and
    this host's CPU has no native bf16 (CPU_BF16_FLAGS): autocast would emulate it, an order of magnitude slower
    than fp32 (cifar-net's step: 12-13× on an AMD EPYC with avx2 alone, reports/measured/emulated-bf16) and rounded
    unlike the same trials on a native CPU. ctx.allow_emulated_bf16 runs them anyway; a Ray cluster's trials
    (RAY_ADDRESS) and CUDA ones run elsewhere and are not checked, and a grid whose trials are all recorded runs
    nothing, so it passes."""
    if ctx.allow_emulated_bf16 or not _runs_here(ctx) or cpu_has_native_bf16():
        return
    todo = [point for point in points if ctx.trial_id(point) not in done]
    if not any(ctx.grid.config(point).get("precision") == "bf16" for point in todo):
        return
    isa = cpu_isa()
    flags = "unknown" if isa is None else isa_text(isa)
    raise GridError(
        f"preset {ctx.grid.preset} asks for precision bf16, but this CPU ({cpu_model()}; "
        f"flags {flags}) has neither {' nor '.join(CPU_BF16_FLAGS)}: bf16 would run emulated, an "
        f"order of magnitude slower than fp32 and rounded unlike its native runs; run it on a CPU with native bf16, "
        f"or pass {_spelled('--allow-emulated-bf16')} to run it anyway (each record names its CPU's flags)"
    )


def check_machine(ctx: Context, points: list[dict[str, Any]], done: set[str]) -> None:
    """Refuse (GridError) to run the `points` whose trial id is not in `done` on this host when the experiment's
    recorded CPU trials ran on a CPU of another model or, where their records name them, other flags (cpu_isa): a
    seed fixes a trial's initialisation and batches, but two kinds of CPU round differently, so the experiment's
    comparisons paired over seeds would mix kernels. ctx.allow_mixed_cpus runs them; a Ray cluster's trials
    (RAY_ADDRESS) and CUDA ones are not checked, and a grid whose trials are all recorded passes."""
    if ctx.allow_mixed_cpus or not _runs_here(ctx) or all(ctx.trial_id(point) in done for point in points):
        return
    here_model, here_isa = cpu_model(), cpu_isa()
    others: Counter[str] = Counter()
    for path in sorted((Path(ctx.experiment_dir) / "records").glob("*.json")):
        try:
            record = records.read_record(path)
        except records.RecordError:
            continue  # a damaged record is named where the grid reads its point's record
        source = (record or {}).get("provenance") or {}
        if (not record or record.get("kind", "trial") != "trial" or source.get("device", "cpu") != "cpu"
                or not source.get("hardware")):
            continue
        model, isa = THREADS.sub("", source["hardware"]), source.get("cpu_isa")
        if model != here_model or (isa is not None and here_isa is not None and isa != here_isa):
            others[cpu_kind(model, isa)] += 1
    if not others:
        return
    theirs = ", ".join(f"{n} on {name}" for name, n in others.most_common())
    raise GridError(
        f"experiment {ctx.experiment}: its recorded trials ran on another kind of CPU ({theirs}) than this one "
        f"({cpu_kind(here_model, here_isa)}): a seed pairs trials only on one kind, whose kernels round alike; run "
        f"the rest on that CPU, start another experiment here ({new_experiment_hint()}), or pass "
        f"{_spelled('--allow-mixed-cpus')} to mix them (each record names its CPU)")


def summarize(ctx: Context, points: list[dict[str, Any]]) -> int:
    """Print the status counts of the grid; return 0 when every trial has a record, else 1."""
    counts = Counter(record["status"] if (record := read_record(ctx, point)) else "unfinished" for point in points)
    order = [*STATUSES, "unfinished"]
    parts = [f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: order.index(s) if s in order else len(order))]
    missing = counts["unfinished"]
    print(f"grid {ctx.experiment}: {len(points)} trials: {', '.join(parts)}"
          + ("; re-run the same command to resume" if missing else "")
          + f"; records in {Path(ctx.experiment_dir) / 'records'}", flush=True)
    return 1 if missing else 0


def pick_backend(name: str) -> str:
    """'local' or 'ray': 'auto' is Ray when Ray Tune can be imported."""
    if name == "local":
        return name
    try:
        import ray.tune  # noqa: F401
    except ImportError:
        if name == "ray":
            raise GridError("--backend ray, but Ray Tune cannot be imported (pip install 'ray[tune]')") from None
        print("Ray Tune cannot be imported: running the grid sequentially in this process (--backend local)")
        return "local"
    return "ray"


def run_grid(
    preset: str, data_dir: str | Path, results: str | Path, *, experiment: str = "", backend: str = "auto",
    trial_fn: TrialFn = run_trial, cpus_per_trial: float = 1.0, gpus_per_trial: float | None = None,
    command: str = "", device: str = "auto", reports: str | Path | None = None, allow_emulated_bf16: bool = False,
    allow_mixed_cpus: bool = False,
) -> int:
    """Run or resume a preset's grid into results/<experiment>/; return 0 when every trial has a record.

    `device` is every trial's config `device` (a location key: tests force "cpu" under logical Ray GPUs).
    `reports`: where to write this experiment's report afterwards ("" for results/<experiment>/report; None: none).
    `allow_emulated_bf16`: run a bf16 grid on a CPU without native bf16 (check_precision).
    `allow_mixed_cpus`: run trials on another kind of CPU than the experiment's recorded ones (check_machine).
    """
    if not cpus_per_trial > 0 or (gpus_per_trial or 0) < 0:
        raise GridError(f"need --cpus-per-trial > 0 and --gpus-per-trial >= 0, got {cpus_per_trial}, {gpus_per_trial}")
    grid = load_preset(preset)
    experiment = experiment or grid.preset
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", experiment):
        raise GridError(f"experiment name {experiment!r} must be letters, digits, '.', '_' or '-'")
    experiment_dir = Path(results).resolve() / experiment
    backend = pick_backend(backend)
    threads = max(1, round(cpus_per_trial)) if backend == "ray" else os.cpu_count() or 1
    if all(grid.config(point).get("threads") is not None for point in grid.points()):
        threads = None  # the preset sets it everywhere: the backend does not matter
    stored = stored_spec(experiment_dir)
    changed = check_grid(experiment_dir, stored, grid, threads)
    prints = fingerprints(grid.axes["dataset"], str(data_dir))  # a missing data set is named as typed
    data_dir = str(Path(data_dir).resolve())
    check_data(experiment_dir, stored, prints, data_dir)
    experiment_dir.mkdir(parents=True, exist_ok=True)
    command = command or shlex.join(sys.argv)
    try:
        lock = acquire(experiment_dir, command)
    except LockError as err:
        raise GridError(str(err)) from None
    try:
        if changed:  # Ray's state holds the old grid's points; a fresh Tune run skips the recorded trials
            print(f"changing the grid of experiment {experiment} ({'; '.join(changed)}); every recorded trial is a "
                  "point of the new grid and stays, Ray's state of the old grid is dropped", flush=True)
            for name in ("ray", "ray-fresh"):
                shutil.rmtree(ray_storage_dir(experiment_dir, name), ignore_errors=True)
        if stored is None or changed or (stored.get("doc"), stored.get("citable")) != (grid.doc, grid.citable):
            write_json(experiment_dir / "grid.json", grid.spec(experiment, threads, prints))
        (experiment_dir / "records").mkdir(exist_ok=True)
        ctx = Context(grid, experiment, str(experiment_dir), data_dir, command, prints, threads, device,
                      allow_emulated_bf16, allow_mixed_cpus)
        points = grid.points()
        progress = Progress(ctx, points)
        if trial_fn is run_trial:  # a substituted trial (tests) computes nothing in bf16 and records no CPU
            check_precision(ctx, points, progress.done)
            check_machine(ctx, points, progress.done)
        print(f"grid {experiment} ({grid.preset}): {len(points)} trials, {len(progress.done)} already recorded; "
              f"backend {backend}; data {', '.join(f'{k} {v}' for k, v in prints.items())}; results in "
              f"{experiment_dir}", flush=True)
        if trial_fn is run_trial:  # baselines are evaluated as bench.trial evaluates; a substituted trial has none
            record_baselines(ctx, points)
        run_points(ctx, points, trial_fn, progress, backend, cpus_per_trial, gpus_per_trial,
                   ray_storage_dir(experiment_dir))
        code = summarize(ctx, points)
        if grid.fresh_seeds and code == 0:
            code = run_fresh(ctx, trial_fn, backend, cpus_per_trial, gpus_per_trial)
        elif grid.fresh_seeds:
            print(f"fresh seeds {list(grid.fresh_seeds)}: they run once every point of the grid has a record (the "
                  "selection needs all of them)", flush=True)
    finally:
        release(lock)
    if reports is not None:
        write_own_report(experiment_dir, Path(reports) if reports else experiment_dir / REPORT_DIR)
    return code


def run_points(ctx: Context, points: list[dict[str, Any]], trial_fn: TrialFn, progress: Progress, backend: str,
               cpus_per_trial: float, gpus_per_trial: float | None, state: Path) -> None:
    """Run ctx.grid's points on the backend (Ray's experiment state in `state`)."""
    if backend == "local":
        run_local(ctx, points, trial_fn, progress)
    else:
        run_ray(ctx, points, trial_fn, progress, cpus_per_trial, gpus_per_trial, state)


def run_fresh(ctx: Context, trial_fn: TrialFn, backend: str, cpus_per_trial: float,
              gpus_per_trial: float | None) -> int:
    """Run each loss's validation-selected cell on the grid's fresh seeds (Ray's state in RESULTS/E/ray-fresh/);
    0 when every such trial has a record."""
    from bench.reporting.frame import ReportError, load_records, selected_cells

    try:
        cells = selected_cells(load_records(ctx.experiment_dir, fresh=False), ctx.experiment)
    except ReportError as err:
        raise GridError(f"fresh seeds: {err}") from None
    fresh = dataclasses.replace(ctx, grid=ctx.grid.fresh(cells))
    points = fresh.grid.points()
    progress = Progress(fresh, points)
    print(f"fresh seeds {list(ctx.grid.fresh_seeds)}: {len(cells)} selected cells, {len(points)} trials, "
          f"{len(progress.done)} already recorded", flush=True)
    if trial_fn is run_trial:
        check_precision(fresh, points, progress.done)
        check_machine(fresh, points, progress.done)
    run_points(fresh, points, trial_fn, progress, backend, cpus_per_trial, gpus_per_trial,
               ray_storage_dir(ctx.experiment_dir, "ray-fresh"))
    return summarize(fresh, points)


def write_own_report(experiment_dir: Path, reports_dir: Path) -> None:
    """The report of this experiment alone into reports_dir (never the committed reports/ unless asked)."""
    from bench.reporting.build import build_report  # here, so that Ray's workers never import matplotlib
    from bench.reporting.frame import ReportError

    try:
        written = build_report(experiment_dir, reports_dir)
    except ReportError as err:
        raise GridError(f"report: {err}") from None
    print(f"report of {experiment_dir.name}: {len(written)} files in {reports_dir} (summary.md first)", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line's arguments."""
    p = Parser(
        prog="python -m bench.grid", description="Run (or resume) a preset's grid of trials.",
        epilog="Re-running the same command resumes an interrupted experiment. With RAY_ADDRESS set, the trials "
        "run on that Ray cluster: --results and --data-dir must then be on storage that every node sees.",
    )
    p.add_argument("--preset", default="", help=f"one of {', '.join(preset_names())}, or a .json path "
                   "(default: paper with a CUDA GPU, else cpu)")
    p.add_argument("--data-dir", default="datasets", help="folder of mnist.npz / cifar10.npz (default datasets/)")
    p.add_argument("--results", default="results", help="results folder (default results/)")
    p.add_argument("--backend", choices=("auto", "ray", "local"), default="auto",
                   help="ray (Ray Tune), local (sequential, in-process) or auto: ray when importable")
    p.add_argument("--experiment", default="", help="experiment folder name under --results (default: preset name)")
    p.add_argument("--smoke", action="store_true",
                   help="run the smoke preset on generated data in a temporary folder (ignores --data-dir)")
    p.add_argument("--reports", default="", help=f"where to write this experiment's report when the grid ends "
                   f"(default RESULTS/EXPERIMENT/{REPORT_DIR}/)")
    p.add_argument("--no-report", action="store_true", help="write no report")
    p.add_argument("--allow-emulated-bf16", action="store_true",
                   help="run a bf16 preset on a CPU without avx512_bf16 or amx_bf16 (emulated: an order of magnitude "
                   "slower); refused otherwise")
    p.add_argument("--allow-mixed-cpus", action="store_true",
                   help="run the rest of an experiment on another kind of CPU (model or flags) than its recorded "
                   "trials; refused otherwise")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs Ray reserves per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPU share Ray reserves per trial, e.g. 0.25 (default: 1 when the cluster has GPUs, else 0)")
    return p.parse_args(argv)


def _interrupt(signum: int, frame: Any) -> None:
    """A signal handler that stops the run as Ctrl-C does."""
    raise KeyboardInterrupt


def terminate_as_interrupt() -> None:
    """Make SIGTERM (`kill`, a scheduler's stop) end the run like Ctrl-C: one line, every record written kept."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 when every trial has a record (whatever its status), 1 when some are left, 2 on bad input."""
    args = parse_args(argv)
    terminate_as_interrupt()
    command = shlex.join(["python", "-m", "bench.grid", *(sys.argv[1:] if argv is None else argv)])
    options = {"experiment": args.experiment, "backend": args.backend, "cpus_per_trial": args.cpus_per_trial,
               "gpus_per_trial": args.gpus_per_trial, "command": command,
               "reports": None if args.no_report else args.reports,
               "allow_emulated_bf16": args.allow_emulated_bf16, "allow_mixed_cpus": args.allow_mixed_cpus}
    try:
        if args.smoke:
            if args.preset not in ("", "smoke"):
                raise GridError(f"--smoke runs the smoke preset; drop --preset {args.preset}")
            from bench.engine.synthetic import write_synthetic

            with tempfile.TemporaryDirectory(prefix="tripletbench-smoke-") as data_dir:
                for dataset in load_preset("smoke").axes["dataset"]:
                    write_synthetic(data_dir, dataset)
                return run_grid("smoke", data_dir, args.results, **options)
        return run_grid(args.preset or default_preset(), args.data_dir, args.results, **options)
    except GridError as err:
        print(f"python -m bench.grid: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk or a folder that cannot be written: nothing recorded so far is lost
        where = f"{err.filename}: " if err.filename else ""
        print(f"python -m bench.grid: error: {where}{err.strerror or err}; every record written so far is kept and "
              "complete; free the space (or fix the folder) and re-run the same command to go on", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
