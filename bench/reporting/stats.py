"""Statistics over seeds for the report: cells, 95% Student-t intervals, paired t-tests, eligibility, selection.

Everything here is a function of the checkpoint frame that bench.report.load_records builds (one row per
checkpoint of every trial and baseline record) and of each experiment's grid.json; nothing reads files.

- A *cell* is experiment × dataset × protocol × loss × margin × batch size × variant (its values of the grid's
  variant axes: lr, normalize, sampler, budget_steps, ..., bench.experiment.gridspec.VARIANT_AXES); its trials
  differ only in seed.
  Baselines are cells whose loss is "pixels" or "untrained", with no margin and no batch size.
- A cell's mean, sample std (ddof=1) and 95% Student-t half-width t(0.975, n-1)·s/√n are taken over the
  final checkpoints of its trials whose status is in IN_MEAN (both trained to the end of the budget; a
  collapse is an outcome of the loss, so it counts against it); the half-width is NaN when n < 2.
- A cell is *eligible* for selection only if every seed of its grid was recorded and finished (status in
  IN_MEAN). Incomplete and failed cells are never selected, so they never rank above complete ones.
- *Selection* is on validation only: per experiment × dataset × protocol × loss, the eligible cell with the
  highest mean val_map_at_r (ties: higher val_knn_accuracy, then smaller margin, then smaller batch). It compares
  cells of one training budget only: where a loss's cells differ in budget (BUDGET: samples, steps or seconds, as
  cpu-batch's equal-steps and equal-samples blocks do), none is selected (`mixed_budget`), since the cell that
  trained longest would win for its budget alone; such a grid is a comparison, reported cell by cell.
- *The best loss* per experiment × dataset × protocol is chosen on validation too: the selected cell with the
  highest mean val_map_at_r (`best`; cells whose mean equals it exactly are tied and all `best`; the first of
  them in loss order is the reference). A fresh-seed experiment E-fresh takes E's best losses (chosen on E's
  selection seeds), so that no choice reads the seeds whose test numbers are cited. Every other selected cell is
  compared with the reference on each test metric of TESTED over the seeds both have (the same seed means the
  same initialisation and the same batches): `diff_<metric>` (mean of cell − reference), its 95% paired
  t-interval `diff_lo_<metric>`, `diff_hi_<metric>`, the two-sided paired t-test `p_vs_best_<metric>` and
  `p_holm_<metric>`, Holm-adjusted over the comparisons of that table and metric. NaN for the reference and when
  fewer than 2 seeds pair; identical per-seed values give p = 1.
- *mdd_<metric>*: the table's minimal detectable difference, the true mean difference that a two-sided paired
  t-test at ALPHA / m over its n pairs detects with POWER (80%), for the pooled SD of its paired differences, m the
  table's comparisons: ALPHA / m is Holm's strictest step (a Bonferroni bound), so that every comparison, whatever
  its place in Holm's order, is detected with at least POWER; a difference "not detected" is one below what the
  table can see, never evidence of equivalence.
"""

from __future__ import annotations

import math
import statistics
import warnings
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import special
from scipy import stats as scipy_stats
from scipy.integrate import quad
from scipy.optimize import brentq

from bench.engine.config import DEFAULTS, STATUSES
from bench.engine.diagnostics import INITIAL_KEYS
from bench.experiment.gridspec import stored_grid, variant
from losses import CONTROLS

IN_MEAN = ("ok", "collapsed")
BASELINES = ("pixels", "untrained")
CELL = ["experiment", "dataset", "protocol", "loss", "margin", "batch_size", "variant"]
TRIAL = ["experiment", "trial_id"]
# MAP@R leads: it is the metric that still separates methods where k-NN accuracy saturates
TEST_METRICS = ("map_at_r", "knn_accuracy", "precision_at_1")
VAL_METRICS = tuple(f"val_{metric}" for metric in TEST_METRICS)
SYSTEM_METRICS = ("samples_per_second", "peak_memory_mib", "train_seconds")
# plateau_gap: the final checkpoint's validation MAP@R minus the previous one's, on the same evaluation subsets
CLASS_DISTANCES = ("intra_class_distance", "inter_class_distance")  # whole test set, last checkpoint (NaN before)
AGGREGATED = (*TEST_METRICS, *VAL_METRICS, *SYSTEM_METRICS, "plateau_gap", *CLASS_DISTANCES)
TESTED = ("map_at_r", "knn_accuracy")  # the metrics of the paired tests
SELECTION = ("val_map_at_r", "val_knn_accuracy")
BUDGET = ("budget_samples", "budget_steps", "budget_seconds")  # a cell's training budget, as configured
# why a loss whose cells differ in budget has no selected cell (select), in every table and figure that says so
NO_SELECTION_ACROSS_BUDGETS = "no selection: its cells differ in budget (compared cell by cell in the full grid)"
# per-cell settings reported as their value (or "a;b" when the seeds of a cell differ)
SETTINGS = ("model", "planned_steps", "images_per_class", "lr", "lr_scaling", "lr_reference_batch", "lr_schedule",
            "precision", "threads", "budget_samples", "budget_steps", "budget_seconds",
            "val_gallery_size", "val_queries_size", "test_gallery_size", "test_queries_size", "train_size", "val_size",
            "test_size")
# settings measured on each seed's batch plan (a random sampler's differs by seed): the seeds' mean, 2 decimals
MEAN_OVER_SEEDS = ("images_per_class",)
# where each cell ran: summary.csv column -> the records' provenance column ("a;b" when its trials differ; the date
# as the first and last day)
ORIGIN = {"commit": "provenance_git_commit", "device": "provenance_device", "hardware": "provenance_hardware",
          "cpu_isa": "provenance_cpu_isa", "date": "provenance_date"}
INITIAL = INITIAL_KEYS  # the margin check's columns (bench/engine/diagnostics.py)
EASY_LIMIT = 0.5
ALPHA = 0.05
POWER = 0.8
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
    with warnings.catch_warnings():  # equal nonzero differences on every seed: t = ±inf, p = 0
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
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
             "margin": float(point["margin"]), "batch_size": int(point["batch_size"]),
             "variant": variant(spec.config(point), spec.axes), "seed": point["seed"]}
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
            "variant_values": trials.variant_values.iloc[0] if len(trials) else "{}",
            "n_seeds": len(trials),
            "n_valid": len(valid),
            "n_missing": len(missing),
            "missing_seeds": ";".join(map(str, missing)),
            "eligible": (not baseline) and len(trials) > 0 and not missing and len(valid) == len(trials),
        }
        for metric in AGGREGATED:
            interval = t_interval(valid[metric]) if metric in valid else Interval(math.nan, math.nan, math.nan, 0)
            row |= {f"{metric}_mean": interval.mean, f"{metric}_std": interval.std, f"{metric}_ci95": interval.ci95}
        row["cpu_share_min"] = float(valid["cpu_share"].min()) if "cpu_share" in valid else math.nan
        for setting in SETTINGS:
            row[setting] = (math.nan if setting not in trials else
                            round(float(trials[setting].mean()), 2) if setting in MEAN_OVER_SEEDS
                            else _setting(trials[setting]))
        for column, source in ORIGIN.items():
            values = trials[source] if source in trials else pd.Series(dtype=object)
            if column == "date":
                days = sorted(str(v)[:10] for v in values.dropna())
                row[column] = " to ".join(dict.fromkeys([days[0], days[-1]])) if days else math.nan
            else:
                row[column] = _setting(values)
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
    summary = summary.sort_values(["experiment", "dataset", "protocol", "_rank", "margin", "batch_size", "variant"],
                                  na_position="first", kind="stable", ignore_index=True).drop(columns="_rank")
    summary = inherit_tuning_budget(select(summary), grids)
    return paired_tests(summary, final, {name: grid["fresh_of"] for name, grid in grids.items()
                                         if grid.get("fresh_of")})


def inherit_tuning_budget(summary: pd.DataFrame, grids: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """A fresh-seed experiment's `n_configs`: its parent's (grid "fresh_of"), where its cells were selected among."""
    summary = summary.copy()
    key = ["dataset", "protocol", "loss"]
    for name, grid in grids.items():
        parent = grid.get("fresh_of")
        if not parent:
            continue
        budgets = summary[summary.experiment == parent].groupby(key).n_configs.first()
        rows = (summary.experiment == name) & ~summary.loss.isin(BASELINES)
        summary.loc[rows, "n_configs"] = [budgets.get(tuple(cell), math.nan)
                                          for cell in summary.loc[rows, key].itertuples(index=False)]
    return summary


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def has_validation(summary: pd.DataFrame) -> pd.Series:
    """Per row: whether its cell has a finite mean validation MAP@R (the selection metric)."""
    return summary["val_map_at_r_mean"].notna()


def budget_of(rows: pd.DataFrame) -> pd.Series:
    """Per row (cells or trials), its configured training budget: a (samples, steps, seconds) tuple of BUDGET, None
    where unset (so that two unset budgets compare equal)."""
    return rows[list(BUDGET)].apply(lambda row: tuple(None if pd.isna(v) else v for v in row), axis=1)


def select(summary: pd.DataFrame) -> pd.DataFrame:
    """`selected` = the eligible cell with the best validation metrics per experiment × dataset × protocol × loss,
    none where that loss's cells differ in budget (`mixed_budget`); `n_configs` = how many cells that choice was
    made among (the loss's tuning budget; NaN for baselines)."""
    summary = summary.copy()
    summary["selected"] = False
    group = ["experiment", "dataset", "protocol", "loss"]
    trials = ~summary.loss.isin(BASELINES)
    summary["n_configs"] = math.nan
    summary.loc[trials, "n_configs"] = summary[trials].groupby(group).loss.transform("size").astype(float)
    known = summary[trials & summary[list(BUDGET)].notna().any(axis=1)]  # recorded cells: their budget is known
    budgets = known.assign(budget=budget_of(known)).drop_duplicates([*group, "budget"]).groupby(group).size()
    mixed = set(budgets[budgets > 1].index)
    summary["mixed_budget"] = [tuple(key) in mixed for key in summary[group].itertuples(index=False)]
    candidates = summary[summary.eligible & has_validation(summary) & ~summary.mixed_budget]
    ranked = candidates.sort_values([*SELECTION_KEYS], ascending=[False, False, True, True, True], kind="stable")
    chosen = ranked.groupby(group, sort=False).head(1).index
    summary.loc[chosen, "selected"] = True
    return summary


SELECTION_KEYS = ("val_map_at_r_mean", "val_knn_accuracy_mean", "margin", "batch_size", "variant")


def setting_text(loss: str, margin: float, batch_size: float, sep: str = ", ") -> str:
    """A cell's setting as text, 'm 0.2, B 64'; 'B 64' for a control (losses.CONTROLS), which has no margin."""
    return f"B {batch_size:g}" if loss in CONTROLS else f"m {margin:g}{sep}B {batch_size:g}"


def in_cell(rows: pd.DataFrame, cell: Any) -> pd.Series:
    """Bool per row (trials or checkpoints): whether it is of the summary row `cell`'s dataset, protocol, loss,
    margin, batch size and variant (in any experiment: the caller's to restrict)."""
    return ((rows.dataset == cell.dataset) & (rows.protocol == cell.protocol) & (rows.loss == cell.loss)
            & (rows.margin == cell.margin) & (rows.batch_size == cell.batch_size) & (rows.variant == cell.variant))


def _per_seed(final: pd.DataFrame, row: pd.Series, metric: str) -> dict[Any, float]:
    """seed -> final test metric of the valid trials of the cell `row`."""
    trials = final[(final.experiment == row.experiment) & in_cell(final, row) & final.status.isin(IN_MEAN)]
    return {seed: float(value) for seed, value in zip(trials.seed, trials[metric], strict=True)}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: the i-th smallest of m finite p-values times
    (m − i + 1), made non-decreasing along that order and capped at 1; NaN entries stay NaN and do not count in m."""
    finite = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, index) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[index] = running
    return adjusted


class Difference(NamedTuple):
    """Mean paired difference (first − second), its 95% t-interval, the differences' SD, the paired t-test's p and
    the pairs used."""

    mean: float
    lo: float
    hi: float
    sd: float
    p: float
    n: int


def paired_difference(first: dict[Any, float], second: dict[Any, float]) -> Difference:
    """first − second over the keys (seeds) both have finite values for (NaN interval and p below 2 pairs)."""
    keys = sorted(k for k in first.keys() & second.keys() if np.isfinite(first[k]) and np.isfinite(second[k]))
    diffs = [first[k] - second[k] for k in keys]
    if len(keys) < 2:
        return Difference(statistics.fmean(diffs) if diffs else math.nan, math.nan, math.nan, math.nan, math.nan,
                          len(keys))
    interval = t_interval(diffs)
    p, _ = paired_p(first, second)
    return Difference(interval.mean, interval.mean - interval.ci95, interval.mean + interval.ci95, interval.std, p,
                      len(keys))


def min_detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The true mean difference δ at which a two-sided paired t-test of n pairs with difference SD `sd` rejects at
    `alpha` with probability `power` (noncentral t with n − 1 degrees of freedom and noncentrality δ√n / sd);
    NaN for n < 2 or an SD that is not finite and positive."""
    if n < 2 or not (math.isfinite(sd) and sd > 0):
        return math.nan
    df = n - 1
    critical = float(scipy_stats.t.ppf(1 - alpha / 2, df))

    def shortfall(effect: float) -> float:  # effect = δ / sd
        return t_test_power(effect * math.sqrt(n), df, critical) - power

    return sd * brentq(shortfall, 1e-9, 1e3)


def t_test_power(nc: float, df: int, critical: float) -> float:
    """P(|T| > critical) for T noncentral t (df, nc): ∫ [Φ(nc − c·s) + Φ(−nc − c·s)] dP(V), s = √(V / df),
    V ~ χ²(df). scipy's nct.sf returns NaN for large nc at few degrees of freedom; this integral does not."""
    log_norm = special.gammaln(df / 2.0) + (np.log(2) * df) / 2.0  # the χ² density's constant, as scipy writes it

    def integrand(v: float) -> float:  # scipy's norm.cdf and chi2.pdf, without their per-call argument checks
        s = critical * math.sqrt(v / df)
        density = np.exp(special.xlogy(df / 2.0 - 1, v) - v / 2.0 - log_norm)
        return float((special.ndtr(nc - s) + special.ndtr(-nc - s)) * density)

    return float(quad(integrand, 0, math.inf, limit=200)[0])


def paired_tests(summary: pd.DataFrame, final: pd.DataFrame, parents: dict[str, str] | None = None) -> pd.DataFrame:
    """Add best, the comparisons with the reference and mdd_<metric> to the selected rows (module docstring); a
    fresh-seed experiment (`parents`: its name to its parent's) takes its best losses from its parent's selection
    seeds, so that its own seeds take no part in any choice."""
    parents = parents or {}
    summary = summary.copy()
    summary["best"] = False
    summary["reference_failed"] = False  # a fresh experiment whose parent's best loss has no finished cell
    for metric in TESTED:
        for column, value in ((f"diff_{metric}", math.nan), (f"diff_lo_{metric}", math.nan),
                              (f"diff_hi_{metric}", math.nan), (f"p_vs_best_{metric}", math.nan),
                              (f"p_holm_{metric}", math.nan), (f"mdd_{metric}", math.nan), (f"n_pairs_{metric}", 0)):
            summary[column] = value
    selected = summary[summary.selected & has_validation(summary)]
    for (experiment, dataset, protocol), group in selected.groupby(["experiment", "dataset", "protocol"], sort=True):
        chooser = selected[(selected.experiment == parents.get(experiment, experiment))
                           & (selected.dataset == dataset) & (selected.protocol == protocol)]
        chosen = chooser[chooser.val_map_at_r_mean == chooser.val_map_at_r_mean.max()].loss
        tied = group[group.loss.isin(chosen)]
        if tied.empty:  # a fresh experiment whose parent's best failed on a fresh seed: no reference to test
            summary.loc[group.index, "reference_failed"] = True  # against, rather than one chosen on the cited seeds
            continue
        summary.loc[tied.index, "best"] = True
        reference = tied.iloc[0]
        for metric in TESTED:
            ours = _per_seed(final, reference, metric)
            results = {index: paired_difference(_per_seed(final, row, metric), ours)
                       for index, row in group.iterrows() if index != reference.name}
            for index, result in results.items():
                summary.loc[index, [f"diff_{metric}", f"diff_lo_{metric}", f"diff_hi_{metric}",
                                    f"p_vs_best_{metric}"]] = [result.mean, result.lo, result.hi, result.p]
                summary.loc[index, f"n_pairs_{metric}"] = result.n
            summary.loc[reference.name, f"n_pairs_{metric}"] = len(ours)
            for index, adjusted in zip(results, holm([r.p for r in results.values()]), strict=True):
                summary.loc[index, f"p_holm_{metric}"] = adjusted
            sds = [r.sd for r in results.values() if math.isfinite(r.sd)]
            pairs = min((r.n for r in results.values()), default=0)
            pooled = math.sqrt(statistics.fmean([sd * sd for sd in sds])) if sds else math.nan
            tested = sum(math.isfinite(r.p) for r in results.values())  # Holm's m
            summary.loc[group.index, f"mdd_{metric}"] = min_detectable_difference(pooled, pairs,
                                                                                 ALPHA / max(tested, 1))
    return summary


def missing_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """The trial cells with a grid seed that has no record yet (an INCOMPLETE experiment has at least one)."""
    return summary[summary.n_missing > 0]


def margin_check(summary: pd.DataFrame) -> pd.DataFrame:
    """Trial cells with initial (step-0) statistics, `too_easy` = mean initial fraction easy > EASY_LIMIT, and
    `control` = the loss is a control (losses.CONTROLS): it has no margin, so the check does not apply to it."""
    cells = summary[~summary.loss.isin(BASELINES) & (summary.n_initial > 0)].copy()
    cells["control"] = cells.loss.isin(CONTROLS)
    cells["too_easy"] = (cells.initial_fraction_easy_mean > EASY_LIMIT) & ~cells.control
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


def citation(grid: dict[str, Any], cells: pd.DataFrame, trials: pd.DataFrame) -> str:
    """What one experiment's report may be cited as, in words: its seeds and whether it is citable (a citable
    preset, every trial of the grid recorded), e.g. "n = 3 seeds; citable"; `cells` are its summarize rows."""
    seeds = trials.seed.nunique()
    words = f"n = {seeds} seed{'s' if seeds != 1 else ''}"
    if grid.get("citable") is not True:
        return f"{words}; NOT FOR CITING (preset {grid.get('preset')} is not a reference design)"
    if missing_cells(cells).shape[0]:
        return f"{words}; INCOMPLETE, not yet citable"
    return f"{words}; citable"
