"""Records to a checkpoint frame: every trial and baseline record of a results folder, checked, one row per checkpoint.

load_records reads only grid.json and records/*.json (bench/experiment/records.py gives the schema); no training,
no Ray. RESULTS is one experiment folder or a folder of them. load_systems reads the isolated step benchmark
(bench/reporting/systems.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.engine.config import DEFAULTS, STATUSES
from bench.experiment.baselines import NET_KEYS
from bench.experiment.gridspec import VARIANT_AXES, GridError, stored_grid, variant
from bench.experiment.records import INITIAL_COLUMNS, REQUIRED
from bench.reporting import stats, systems
from losses import CONTROLS, LOSSES

PROVENANCE = ("date", "git_commit", "hardware", "cpu_isa", "device", "torch", "ray", "command", "concurrent_trials")
# checkpoint key -> column, where the checkpoint's name would shadow a record-level one
RENAMED = {"loss": "train_loss", "status": "checkpoint_status"}


class ReportError(ValueError):
    """A results folder that cannot be reported; the message is one line naming the folder or file."""


@dataclass(frozen=True)
class Records:
    """Every checkpoint of every record (one row each) and each experiment's grid.json."""

    checkpoints: pd.DataFrame
    grids: dict[str, dict[str, Any]]
    empty: tuple[str, ...] = ()  # experiment folders left out: no trial record yet (a grid just started)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: unreadable ({err})") from None


def experiment_dirs(results_dir: Path) -> list[Path]:
    """results_dir itself if it holds grid.json or records/, else its subfolders that do (sorted)."""
    if not results_dir.is_dir():
        raise ReportError(f"{results_dir}: no such folder")

    def is_experiment(folder: Path) -> bool:
        return (folder / "grid.json").is_file() or (folder / "records").is_dir()

    if is_experiment(results_dir):
        return [results_dir]
    found = sorted(d for d in results_dir.iterdir() if d.is_dir() and is_experiment(d))
    if not found:
        raise ReportError(f"{results_dir}: no experiment (grid.json and records/) in it or in its subfolders")
    return found


def _record_rows(record: Any, path: Path, axes: list[str]) -> list[dict[str, Any]]:
    """One row per checkpoint (one row of NaN metrics when there is none) of a checked trial or baseline record of
    a grid with `axes`: its `variant` names its values of the grid's variant axes (a baseline's: of those the
    untrained net depends on), and `variant_values` holds them as JSON."""
    if not isinstance(record, dict):
        raise ReportError(f"{path}: not a trial record (expected a JSON object)")
    baseline = record.get("kind") == "baseline"
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    needed = ("dataset",) if baseline else ("dataset", "loss", "margin", "batch_size", "seed")
    missing = [key for key in REQUIRED if key not in record] + [f"config.{k}" for k in needed if k not in config]
    if baseline and record.get("baseline") not in stats.BASELINES:
        missing.append(f"baseline ({' or '.join(stats.BASELINES)})")
    if missing:
        raise ReportError(f"{path}: not a trial record (missing {', '.join(missing)})")
    if record["status"] not in STATUSES:
        raise ReportError(f"{path}: unknown status {record['status']!r}; valid: {', '.join(STATUSES)}")
    history = record["history"]
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        raise ReportError(f"{path}: history is not a list of checkpoints")
    for entry in history:
        lacking = [key for key in stats.TEST_METRICS if key not in entry]
        if lacking:
            raise ReportError(f"{path}: a checkpoint lacks {', '.join(lacking)} (partial record?)")
    provenance = record.get("provenance") if isinstance(record.get("provenance"), dict) else {}
    if baseline:
        settings = {"protocol": DEFAULTS["protocol"], **config, "loss": record["baseline"], "margin": math.nan,
                    "batch_size": math.nan, "seed": config.get("seed"), "budget_samples": None,
                    "budget_seconds": None}
    else:
        settings = {**DEFAULTS, **config}
    initial = record.get("initial") if isinstance(record.get("initial"), dict) else {}
    net = not baseline or record.get("baseline") == "untrained"  # raw pixels depend on no variant axis
    varied = [axis for axis in VARIANT_AXES if axis in axes and (net if axis in NET_KEYS else not baseline)]
    base = {
        **settings,
        "variant": variant(settings, varied),
        "variant_values": json.dumps({axis: settings.get(axis, DEFAULTS[axis]) for axis in varied}),
        "kind": "baseline" if baseline else "trial",
        **{key: record[key] for key in ("experiment", "trial_id", "status")},
        "preset": record.get("preset"),
        "reason": record.get("reason"),
        **{f"provenance_{key}": provenance.get(key) for key in PROVENANCE},
        "embeddings": str(path.parent / record["embeddings"]) if record.get("embeddings") else None,
        **{column: initial[key] for key, column in INITIAL_COLUMNS.items() if key in initial},
    }
    return [{**base, "checkpoint": index,
             **{RENAMED.get(key, key): value for key, value in entry.items()}}
            for index, entry in enumerate(history, 1)] or [base]


def _check_cells(frame: pd.DataFrame, grids: dict[str, dict[str, Any]], paths: dict[str, str]) -> None:
    """Raise ReportError when two records claim one trial (one cell and seed), naming a protocol mix if any."""
    final = stats.final_rows(frame)
    for experiment, records in final.groupby("experiment"):
        trial_key = ["dataset", "loss", "margin", "batch_size", "variant", "seed"]
        if "protocol" in grids[experiment]["axes"]:
            trial_key.insert(1, "protocol")
        for kind, key in (("trial", trial_key), ("baseline", ["dataset", "protocol", "loss", "variant", "seed"])):
            chosen = records[records.kind == kind]
            keyed = chosen.assign(**{k: chosen[k].astype(str) for k in key})
            for values, same in keyed.groupby(key, sort=True):
                if len(same) < 2:
                    continue
                where = ", ".join(f"{k} {v}" for k, v in zip(key, values, strict=True))
                files = ", ".join(sorted(paths[t] for t in same.trial_id))
                protocols = sorted(set(same.protocol.astype(str)))
                if len(protocols) > 1:
                    raise ReportError(f"experiment {experiment}: records mix protocols {', '.join(protocols)} in "
                                      f"one cell ({where}): {files}")
                raise ReportError(f"experiment {experiment}: two records for one {kind} ({where}): {files}")


def is_reference(folder: Path, grid: Any) -> bool:
    """Whether an experiment folder is a reference run: a citable preset's grid run under the preset's own name."""
    return isinstance(grid, dict) and grid.get("citable") is True and folder.name == grid.get("preset")


FRESH = "-fresh"  # experiment E's trials on its grid's fresh seeds are reported as experiment E-fresh


def selected_cells(records: Records, experiment: str) -> list[dict[str, Any]]:
    """Each loss's validation-selected cell of `experiment` (per dataset and protocol) as {axis: value} over its
    grid's axes but seed, in the summary's order; from its selection seeds' records only."""
    grid = records.grids[experiment]
    summary = stats.summarize(records.checkpoints[records.checkpoints.experiment == experiment], {experiment: grid},
                              (*LOSSES, *CONTROLS))
    axes = [axis for axis in grid["axes"] if axis not in ("seed", *VARIANT_AXES)]
    return [{**{axis: int(row[axis]) if axis == "batch_size" else row[axis] for axis in axes},
             **json.loads(row["variant_values"])} for _, row in summary[summary.selected].iterrows()]


def _split_fresh(frame: pd.DataFrame, grids: dict[str, dict[str, Any]], keep: bool) -> pd.DataFrame:
    """The trials on a grid's fresh seeds moved to experiment E-fresh (whose grid, added to `grids`, is E's
    selected cells on those seeds, E's baselines beside them), or dropped when not `keep`."""
    for experiment, grid in sorted(grids.items()):
        seeds = grid.get("fresh_seeds") or []
        moved = (frame.experiment == experiment) & (frame.kind == "trial") & frame.seed.isin(seeds)
        if not seeds or not keep:
            frame = frame[~moved]
            continue
        name = experiment + FRESH
        if name in grids:
            raise ReportError(f"experiment {name} exists, and is also the name of {experiment}'s fresh seeds")
        fresh, frame = frame[moved], frame[~moved]
        cells = selected_cells(Records(frame, grids), experiment)
        if not cells:
            if len(fresh):
                raise ReportError(f"experiment {experiment}: records on fresh seeds {seeds} but no selected cell")
            continue
        spec = stored_grid(grid).fresh(cells).spec(name, grid.get("threads"), grid.get("data", {}))
        grids[name] = json.loads(json.dumps({**spec, "fresh_of": experiment}))
        baselines = frame[(frame.experiment == experiment) & (frame.kind == "baseline")]
        frame = pd.concat([frame, fresh.assign(experiment=name), baselines.assign(experiment=name)],
                          ignore_index=True)
    return frame


def load_records(results_dir: Path | str, reference: bool = False, fresh: bool = True) -> Records:
    """Every record under results_dir as one row per checkpoint, sorted by experiment, trial and checkpoint;
    with `reference`, only the reference experiments' (is_reference: what the committed reports/ is made from).
    Trials on a grid's fresh seeds form experiment E-fresh (_split_fresh), or are left out without `fresh`.

    Config keys a trial record lacks take bench.engine.config's DEFAULTS; a checkpoint's `loss` is the column
    `train_loss` and its `status` is `checkpoint_status`; fields a record predates are NaN. Raises
    ReportError on a missing or foreign folder, no trial record in any experiment (a folder with none, baselines
    at most, is left out and named in `empty`), a bad record, or two records of one trial (e.g. protocols mixed in
    one cell).
    """
    rows: list[dict[str, Any]] = []
    grids: dict[str, dict[str, Any]] = {}
    paths: dict[str, str] = {}
    empty: list[str] = []
    folders = experiment_dirs(Path(results_dir))
    if reference:
        folders = [f for f in folders if (f / "grid.json").is_file() and is_reference(f, _read_json(f / "grid.json"))]
        if not folders:
            raise ReportError(f"{results_dir}: no reference experiment (a citable preset's run in <results>/<preset>/)")
    for folder in folders:
        grid = _read_json(folder / "grid.json") if (folder / "grid.json").is_file() else None
        axes = grid.get("axes") if isinstance(grid, dict) else None
        if not isinstance(axes, dict) or not all(isinstance(values, list) for values in axes.values()):
            raise ReportError(f"{folder / 'grid.json'}: missing or not a grid (expected an 'axes' object of lists)")
        files = sorted((folder / "records").glob("*.json"))
        folder_rows = [(path, _record_rows(_read_json(path), path, list(axes))) for path in files]
        if not any(record_rows[0]["kind"] == "trial" for _, record_rows in folder_rows):
            empty.append(str(folder))
            continue
        experiments = set()
        for path, record_rows in folder_rows:
            experiments.add(record_rows[0]["experiment"])
            paths[record_rows[0]["trial_id"]] = str(path)
            rows += record_rows
        try:
            stored_grid(grid)
        except GridError as err:
            raise ReportError(f"{folder / 'grid.json'}: not a grid ({err})") from None
        for experiment in experiments:
            if experiment in grids and grids[experiment] != grid:
                raise ReportError(f"{folder}: experiment {experiment} also comes from another folder with another grid")
            grids[experiment] = grid
    if not rows:
        raise ReportError(f"{Path(empty[0]) / 'records'}: no trial records")
    frame = pd.DataFrame(rows)
    for column in ("checkpoint", *stats.AGGREGATED, *stats.INITIAL, "step", "samples_seen", "train_loss", "cpu_share"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else math.nan
    for column in ("margin", "batch_size"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame = frame.sort_values(["experiment", "trial_id", "checkpoint"], ignore_index=True)
    _check_cells(frame, grids, paths)
    frame = _split_fresh(frame, grids, fresh)
    frame = frame.sort_values(["experiment", "trial_id", "checkpoint"], ignore_index=True)
    return Records(frame, grids, tuple(empty))


def load_systems(reports_dir: Path | str, explicit: Path | str | None = None) -> systems.Systems | None:
    """The isolated step benchmark: `explicit` (ReportError when it is missing or bad), else
    <reports_dir>/step_benchmark.csv when it exists (ReportError when it is bad), else None."""
    path = Path(explicit) if explicit is not None else Path(reports_dir) / systems.DEFAULT_NAME
    if explicit is None and not path.is_file():
        return None
    try:
        return systems.load(path, (*LOSSES, *CONTROLS))
    except systems.SystemsError as err:
        raise ReportError(str(err)) from None
