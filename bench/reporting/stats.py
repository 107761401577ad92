"""Statistics over seeds for the report: cells, 95% Student-t intervals, paired t-tests, eligibility, selection.

Everything here is a function of the checkpoint frame that bench.report.load_records builds (one row per
checkpoint of every trial and baseline record) and of each experiment's grid.json; nothing reads files.

- A *cell* is experiment × dataset × protocol × loss × margin × batch size; its trials differ only in seed.
  Baselines are cells whose loss is "pixels" or "untrained", with no margin and no batch size.
- A cell's mean, sample std (ddof=1) and 95% Student-t half-width t(0.975, n-1)·s/√n are taken over the
  final checkpoints of its trials whose status is in IN_MEAN (both trained to the end of the budget; a
  collapse is an outcome of the loss, so it counts against it); the half-width is NaN when n < 2.
- A cell is *eligible* for selection only if every seed of its grid was recorded and finished (status in
  IN_MEAN). Incomplete and failed cells are never selected, so they never rank above complete ones.
- *Selection* is on validation only: per experiment × dataset × protocol × loss, the eligible cell with the
  highest mean val_map_at_r (ties: higher val_knn_accuracy, then smaller margin, then smaller batch).
- *p_vs_best_<metric>*: per experiment × dataset × protocol, the loss whose selected cell has the highest
  mean test <metric> is the best; every other selected cell gets the two-sided paired t-test over the seeds
  both have (the same seed means the same initialisation and the same batches). NaN for the best itself
  and when fewer than 2 seeds pair; identical per-seed values give p = 1.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from bench.engine.config import DEFAULTS, STATUSES
from bench.engine.diagnostics import INITIAL_KEYS
from bench.experiment.gridspec import stored_grid

IN_MEAN = ("ok", "collapsed")
BASELINES = ("pixels", "untrained")
CELL = ["experiment", "dataset", "protocol", "loss", "margin", "batch_size"]
TRIAL = ["experiment", "trial_id"]
# MAP@R leads: it is the metric that still separates methods where k-NN accuracy saturates
TEST_METRICS = ("map_at_r", "knn_accuracy", "precision_at_1")
VAL_METRICS = tuple(f"val_{metric}" for metric in TEST_METRICS)
SYSTEM_METRICS = ("samples_per_second", "peak_memory_mib", "train_seconds")
# plateau_gap: the final checkpoint's validation MAP@R minus the previous one's, on the same evaluation subsets
AGGREGATED = (*TEST_METRICS, *VAL_METRICS, *SYSTEM_METRICS, "plateau_gap")
TESTED = ("map_at_r", "knn_accuracy")  # the metrics of the paired tests
SELECTION = ("val_map_at_r", "val_knn_accuracy")
# per-cell settings reported as their value (or "a;b" when the seeds of a cell differ)
SETTINGS = ("planned_steps", "images_per_class", "lr", "lr_scaling", "lr_reference_batch", "lr_schedule",
            "precision", "threads",
            "budget_samples", "budget_seconds", "val_gallery_size", "val_queries_size", "test_gallery_size",
            "test_queries_size", "train_size", "val_size", "test_size")
INITIAL = INITIAL_KEYS  # the margin check's columns (bench/engine/diagnostics.py)
EASY_LIMIT = 0.5
ALPHA = 0.05
STATUS_COLUMNS = {status: f"n_{status.lower()}" for status in STATUSES}


class Interval(NamedTuple):
    """Mean, sample std (ddof=1), 95% Student-t half-width and n of finite values; NaN where undefined."""

    mean: float
    std: float
    ci95: float
    n: int


def t_interval(values: Any) -> Interval:
    """The mean ± t(0.975, n-1)·s/√n of the finite values (std and half-width NaN for n < 2)."""
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    n = len(array)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = statistics.fmean(array.tolist())
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1)
    std = statistics.stdev(array.tolist())  # exact rational arithmetic: identical values give exactly 0
    return Interval(mean, std, float(scipy_stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n), n)


def paired_p(first: dict[Any, float], second: dict[Any, float]) -> tuple[float, int]:
    """Two-sided paired t-test p over the keys (seeds) both have finite values for, and the number of pairs.

    NaN with fewer than 2 pairs; 1.0 when every pair is equal (no evidence of a difference).
    """
    keys = sorted(k for k in first.keys() & second.keys() if np.isfinite(first[k]) and np.isfinite(second[k]))
    if len(keys) < 2:
        return math.nan, len(keys)
    a = np.array([first[k] for k in keys], dtype=float)
    b = np.array([second[k] for k in keys], dtype=float)
    if np.all(a == b):
        return 1.0, len(keys)
    return float(scipy_stats.ttest_rel(a, b).pvalue), len(keys)


def final_rows(checkpoints: pd.DataFrame) -> pd.DataFrame:
    """One row per trial or baseline: its last checkpoint (NaN metrics when it has none)."""
    return checkpoints.groupby(TRIAL, sort=False).tail(1).reset_index(drop=True)


def loss_rank(loss: str, order: tuple[str, ...]) -> tuple[int, str]:
    """Sort key: baselines first (pixels, untrained), then `order`, then any other loss by name."""
    known = (*BASELINES, *order)
    return (known.index(loss), "") if loss in known else (len(known), loss)


def _setting(values: pd.Series) -> Any:
    """The one value of a per-cell setting, NaN when unknown, 'a;b' when its trials differ."""
    distinct = sorted({v for v in values if not (v is None or (isinstance(v, float) and math.isnan(v)))}, key=str)
    if not distinct:
        return math.nan
    return distinct[0] if len(distinct) == 1 else ";".join(f"{v:g}" if isinstance(v, float) else str(v)
                                                            for v in distinct)


def expected_cells(grid: dict[str, Any], experiment: str) -> pd.DataFrame:
    """The trial cells a grid.json asks for, with their expected seeds (one row per cell × seed): the grid's
    points (bench.experiment.gridspec.Grid.points), each with the protocol its config gives when it is not an axis."""
    spec = stored_grid(grid)
    rows = [{"experiment": experiment, "dataset": point["dataset"],
             "protocol": spec.config(point).get("protocol", DEFAULTS["protocol"]), "loss": point["loss"],
             "margin": float(point["margin"]), "batch_size": int(point["batch_size"]), "seed": point["seed"]}
            for point in spec.points()]
    return pd.DataFrame(rows, columns=[*CELL, "seed"])


def expected_trials(grid: dict[str, Any]) -> int:
    """How many trials a grid.json asks for."""
    return len(expected_cells(grid, ""))


def summarize(checkpoints: pd.DataFrame, grids: dict[str, dict[str, Any]], order: tuple[str, ...]) -> pd.DataFrame:
    """One row per cell (recorded or expected by its grid): counts, eligibility, mean/std/ci95, settings,
    initial statistics, `selected` and p_vs_best_<metric>; sorted by experiment, dataset, protocol, loss
    (baselines first, then `order`), margin, batch size."""
    final = final_rows(checkpoints)
    expected = pd.concat([expected_cells(grid, name) for name, grid in sorted(grids.items())], ignore_index=True)
    rows = []
    keys = final[CELL].drop_duplicates()
    expected_keys = expected[CELL].drop_duplicates()
    all_keys = pd.concat([keys, expected_keys]).drop_duplicates(ignore_index=True)
    for key in all_keys.itertuples(index=False):
        cell = dict(zip(CELL, key, strict=True))
        mask = np.ones(len(final), dtype=bool)
        for column, value in cell.items():
            mask &= (final[column].isna() if _isnan(value) else final[column] == value).to_numpy()
        trials = final[mask].sort_values("seed", na_position="first")
        valid = trials[trials.status.isin(IN_MEAN)]
        emask = np.ones(len(expected), dtype=bool)
        for column, value in cell.items():
            emask &= (expected[column] == value).to_numpy() if not _isnan(value) else np.zeros(len(expected), bool)
        wanted = set(expected[emask].seed)
        missing = sorted(wanted - set(trials.seed), key=str)
        baseline = cell["loss"] in BASELINES
        row: dict[str, Any] = {
            **cell,
            "n_seeds": len(trials),
            "n_valid": len(valid),
            "n_missing": len(missing),
            "missing_seeds": ";".join(map(str, missing)),
            "eligible": (not baseline) and len(trials) > 0 and not missing and len(valid) == len(trials),
        }
        for metric in AGGREGATED:
            interval = t_interval(valid[metric]) if metric in valid else Interval(math.nan, math.nan, math.nan, 0)
            row |= {f"{metric}_mean": interval.mean, f"{metric}_std": interval.std, f"{metric}_ci95": interval.ci95}
        for setting in SETTINGS:
            row[setting] = _setting(trials[setting]) if setting in trials else math.nan
        if _isnan(row["planned_steps"]) and len(valid):  # records before planned_steps: the finished trials' step
            row["planned_steps"] = _setting(valid["step"])
        for name in INITIAL:
            row[f"{name}_mean"] = t_interval(trials[name]).mean if name in trials else math.nan
        easy = trials.get("initial_fraction_easy", pd.Series(dtype=float))
        row["n_initial"] = int(easy.notna().sum())
        for status, column in STATUS_COLUMNS.items():
            row[column] = int((trials.status == status).sum())
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary["_rank"] = summary.loss.map(lambda loss: loss_rank(loss, order))
    summary = summary.sort_values(["experiment", "dataset", "protocol", "_rank", "margin", "batch_size"],
                                  na_position="first", kind="stable", ignore_index=True).drop(columns="_rank")
    summary = select(summary)
    return paired_tests(summary, final)


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def has_validation(summary: pd.DataFrame) -> pd.Series:
    """Per row: whether its cell has a finite mean validation MAP@R (the selection metric)."""
    return summary["val_map_at_r_mean"].notna()


def select(summary: pd.DataFrame) -> pd.DataFrame:
    """`selected` = the eligible cell with the best validation metrics per experiment × dataset × protocol × loss."""
    summary = summary.copy()
    summary["selected"] = False
    candidates = summary[summary.eligible & has_validation(summary)]
    ranked = candidates.sort_values([*SELECTION_KEYS], ascending=[False, False, True, True], kind="stable")
    chosen = ranked.groupby(["experiment", "dataset", "protocol", "loss"], sort=False).head(1).index
    summary.loc[chosen, "selected"] = True
    return summary


SELECTION_KEYS = ("val_map_at_r_mean", "val_knn_accuracy_mean", "margin", "batch_size")


def _per_seed(final: pd.DataFrame, row: pd.Series, metric: str) -> dict[Any, float]:
    """seed -> final test metric of the valid trials of the cell `row`."""
    trials = final[(final.experiment == row.experiment) & (final.dataset == row.dataset)
                   & (final.protocol == row.protocol) & (final.loss == row.loss) & (final.margin == row.margin)
                   & (final.batch_size == row.batch_size) & final.status.isin(IN_MEAN)]
    return {seed: float(value) for seed, value in zip(trials.seed, trials[metric], strict=True)}


def paired_tests(summary: pd.DataFrame, final: pd.DataFrame) -> pd.DataFrame:
    """Add best_<metric> (bool) and p_vs_best_<metric> to the selected rows (see the module docstring)."""
    summary = summary.copy()
    for metric in TESTED:
        summary[f"best_{metric}"] = False
        summary[f"p_vs_best_{metric}"] = math.nan
        summary[f"n_pairs_{metric}"] = 0
        selected = summary[summary.selected]
        for _, group in selected.groupby(["experiment", "dataset", "protocol"], sort=True):
            finite = group[group[f"{metric}_mean"].notna()]
            if finite.empty:
                continue
            best = finite.loc[finite[f"{metric}_mean"].idxmax()]
            summary.loc[best.name, f"best_{metric}"] = True
            reference = _per_seed(final, best, metric)
            for index, row in group.iterrows():
                p, pairs = paired_p(_per_seed(final, row, metric), reference)
                summary.loc[index, f"n_pairs_{metric}"] = pairs
                if index != best.name:
                    summary.loc[index, f"p_vs_best_{metric}"] = p
    return summary


def missing_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """The trial cells with a grid seed that has no record yet (an INCOMPLETE experiment has at least one)."""
    return summary[summary.n_missing > 0]


def margin_check(summary: pd.DataFrame) -> pd.DataFrame:
    """Trial cells with initial (step-0) statistics, and `too_easy` = mean initial fraction easy > EASY_LIMIT."""
    cells = summary[~summary.loss.isin(BASELINES) & (summary.n_initial > 0)].copy()
    cells["too_easy"] = cells.initial_fraction_easy_mean > EASY_LIMIT
    return cells


def diagnostic_events(checkpoints: pd.DataFrame) -> pd.DataFrame:
    """Per trial that was ever pinned at the margin or collapsed: the first checkpoint (and step) of each state
    and whether its final checkpoint left it; empty when no record carries the diagnostics."""
    trials = checkpoints[~checkpoints.loss.isin(BASELINES)]
    rows = []
    for _, history in trials.groupby(TRIAL, sort=True):
        history = history.sort_values("checkpoint")
        first = history.iloc[0]
        row: dict[str, Any] = {key: first[key] for key in [*CELL, "seed", "status"]}
        event = False
        for state in ("pinned_at_margin", "collapsed"):
            flags = history[state] if state in history else pd.Series(dtype=object)
            hits = history[flags.fillna(False).astype(bool)] if len(flags) else history.iloc[:0]
            if hits.empty:
                row |= {f"{state}_first": math.nan, f"{state}_step": math.nan, f"{state}_escaped": math.nan}
                continue
            event = True
            last = bool(flags.iloc[-1]) if pd.notna(flags.iloc[-1]) else False
            row |= {f"{state}_first": int(hits.checkpoint.iloc[0]), f"{state}_step": hits["step"].iloc[0],
                    f"{state}_escaped": not last}
        if event:
            rows.append(row)
    return pd.DataFrame(rows)


def has_diagnostics(checkpoints: pd.DataFrame) -> bool:
    """Whether any trial checkpoint carries the pinned/collapsed diagnostics."""
    return any(column in checkpoints and checkpoints[column].notna().any()
               for column in ("pinned_at_margin", "collapsed"))
