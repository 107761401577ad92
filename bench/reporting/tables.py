"""The report's text: summary.csv, summary.md, the LaTeX document summary.tex and \\input-able booktabs fragments.

`document` turns the checkpoint frame, grids and bench.reporting.stats.summarize's cells into blocks (headings,
paragraphs, items, named tables, images: bench.reporting.blocks); `markdown` and bench.reporting.latex render them.
Numbers are formatted here only; every statistic comes from bench.reporting.stats.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from bench.engine.files import write_text
from bench.engine.train import QUIET_SHARE
from bench.experiment.provenance import cpu_kind
from bench.reporting import latex, stats
from bench.reporting.blocks import ABSENT, Block, Estimate, Table
from bench.reporting.markdown import table as markdown_table
from bench.reporting.systems import NOT_RECORDED, Systems
from losses import CONTROLS

SHARED = "(shared)"  # after a cell's samples/s: a trial of it did not have its cores to itself (_speed)
METRIC_NAMES = {"map_at_r": "MAP@R", "knn_accuracy": "k-NN accuracy", "precision_at_1": "P@1"}
LR_RULES = {"none": "lr as configured, at every batch size",
            "sqrt": "lr × (B / {ref})^0.5", "linear": "lr × B / {ref}"}
LR_SCHEDULES = {"constant": "constant lr", "cosine": "cosine decay to 0 at the budget"}
CSV_COLUMNS = [
    *stats.CELL, "n_seeds", "n_valid", "n_missing", "missing_seeds", "eligible", "mixed_budget", "selected",
    "n_configs",
    *[f"{metric}_{what}" for metric in stats.AGGREGATED for what in ("mean", "std", "ci95")], "cpu_share_min",
    "best", *[f"{what}_{metric}" for metric in stats.TESTED
              for what in ("diff", "diff_lo", "diff_hi", "p_vs_best", "p_holm", "n_pairs", "mdd")],
    *stats.SETTINGS, *stats.ORIGIN, *[f"{name}_mean" for name in stats.INITIAL], "n_initial",
    *stats.STATUS_COLUMNS.values(),
]


# ---- formatting ---------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value: Any, digits: int = 4) -> str:
    """value with `digits` decimals, ABSENT when missing."""
    return ABSENT if _missing(value) else f"{float(value):.{digits}f}"


def plain(value: Any) -> str:
    """A setting as text: floats in %g, whole ones in full (1000000 samples, not 1e+06), ABSENT when missing."""
    if _missing(value):
        return ABSENT
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    return str(value)


def interval(row: Any, metric: str, digits: int = 4) -> Estimate | str:
    """A cell's metric as an Estimate (mean, 95% t half-width, n valid seeds); ABSENT without a value."""
    mean, ci = getattr(row, f"{metric}_mean"), getattr(row, f"{metric}_ci95")
    if _missing(mean):
        return ABSENT
    return Estimate(float(mean), None if _missing(ci) else float(ci), int(row.n_valid), digits)


def statuses(row: Any) -> str:
    """'2 ok, 1 OOM' (+ ', 1 missing') of a cell."""
    parts = [f"{getattr(row, column)} {status}" for status, column in stats.STATUS_COLUMNS.items()
             if getattr(row, column)]
    if row.n_missing:
        parts.append(f"{row.n_missing} not run")
    return ", ".join(parts) or "not run"


def _values(column: pd.Series) -> list[str]:
    distinct = {v for v in column if not _missing(v)}
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct)
    return [plain(v) for v in sorted(distinct, key=float if numeric else str)]


def _joined(column: pd.Series, unknown: str = "unknown") -> str:
    return ", ".join(_values(column)) or unknown


def _span(column: pd.Series) -> str:
    values = sorted({float(v) for v in column if not _missing(v)})
    if not values:
        return "unknown"
    return f"{values[0]:g}" if len(values) == 1 else f"{values[0]:g}–{values[-1]:g}"


# ---- facts stated beside every table ------------------------------------------------------------


def budget(final: pd.DataFrame) -> str:
    """Per dataset: the budget in samples (in steps, with the samples they plan, for trials with budget_steps, which
    bounds them first) and seconds."""
    parts = []
    for dataset, trials in final[final.kind == "trial"].groupby("dataset"):
        limit = _joined(trials.budget_seconds, "")
        stepped = trials.budget_steps.notna() if "budget_steps" in trials else pd.Series(False, index=trials.index)
        by_samples, by_steps = trials[~stepped], trials[stepped]
        amounts = []
        if len(by_samples):
            amounts.append(f"{_joined(by_samples.budget_samples)} samples")
        if len(by_steps):
            amounts.append(f"{_joined(by_steps.budget_steps)} steps "
                           f"({_span(by_steps.planned_steps * by_steps.batch_size)} samples)")
        parts.append(f"{dataset}: {' and '.join(amounts)}, " + (f"{limit} s" if limit else "no time limit"))
    return "; ".join(parts) or "none (no trial)"


def steps(final: pd.DataFrame) -> str:
    """The planned optimiser steps of the trials (the final step where planned_steps predates the records)."""
    trials = final[final.kind == "trial"]
    if trials.planned_steps.notna().any() if "planned_steps" in trials else False:
        return f"{_span(trials.planned_steps)} planned optimiser steps per trial (per cell in the full grid)"
    return f"{_span(trials.step)} optimiser steps at the final checkpoint (the records predate planned_steps)"


def precision(final: pd.DataFrame) -> str:
    """The numerics that ran (or the requested setting when the records predate it)."""
    values = _values(final[final.kind == "trial"].precision)
    text = ", ".join(values) or "unknown"
    return f"{text} (requested; what ran is not recorded)" if "auto" in values else text


def eval_sizes(final: pd.DataFrame) -> str:
    """Validation and test query and gallery sizes of the final checkpoints."""
    if final.get("test_queries_size") is None or final.test_queries_size.isna().all():
        return (f"test: {_joined(final.eval_queries)} queries against a {_joined(final.eval_gallery)}-image gallery "
                "(configured; the records predate the size fields, and have no validation split)")
    return (f"validation: {_joined(final.val_queries_size)} queries, gallery {_joined(final.val_gallery_size)}; "
            f"test: {_joined(final.test_queries_size)} queries, gallery {_joined(final.test_gallery_size)}")


def lr_rule(final: pd.DataFrame) -> str:
    """Per dataset: the peak lr(s), the lr scaling rule(s) and the schedule(s) the trials used."""
    trials = final[final.kind == "trial"]
    parts = []
    columns = [trials.dataset, trials.lr_scaling.astype(str), trials.lr_reference_batch.astype(str),
               trials.lr_schedule.astype(str)]
    for (dataset, rule, ref, shape), group in trials.groupby(columns):  # old records get DEFAULTS' constant
        parts.append(f"{dataset}: lr {_joined(group.lr)}, {rule} ({LR_RULES.get(rule, '?').format(ref=ref)}), "
                     f"{LR_SCHEDULES.get(shape, shape)}")
    return "; ".join(parts) or "unknown"


def machines(records: pd.DataFrame) -> pd.Series:
    """Each record's hardware name, a CPU's with its recorded instruction-set flags before the thread count
    ("AMD EPYC [avx2 avx512f avx512_bf16] (1 thread)"; records older than the `cpu_isa` field: the name alone)."""
    names = records.get("provenance_hardware", pd.Series(None, index=records.index, dtype=object))
    isa = records.get("provenance_cpu_isa", pd.Series(None, index=records.index, dtype=object))
    device = records.get("provenance_device", pd.Series("cpu", index=records.index, dtype=object))
    return pd.Series([name if _missing(name) or _missing(flags) or str(kind) != "cpu" else cpu_kind(str(name), flags)
                      for name, flags, kind in zip(names, isa, device, strict=True)], index=records.index, dtype=object)


def hardware(final: pd.DataFrame) -> str:
    """Hardware and device of the records (`machines`), the trials' apart from the baselines' where they differ (the
    grid's own process evaluates the baselines with its thread count; "(1 threads)" in older provenance reads
    "(1 thread)")."""
    def text(records: pd.DataFrame) -> str:
        return _joined(machines(records)).replace("(1 threads)", "(1 thread)")

    trials, baselines = final[final.kind == "trial"], final[final.kind == "baseline"]
    where = text(final)
    if not trials.empty and not baselines.empty and text(trials) != text(baselines):
        where = f"trials {text(trials)}; baselines {text(baselines)}"
    return f"{where} ({_joined(final.provenance_device)})"


def facts(final: pd.DataFrame) -> str:
    """One paragraph of what a table depends on: budget, steps, precision, sizes, hardware, lr rule."""
    return (f"Budget {budget(final)}; {steps(final)}; precision {precision(final)}; evaluation sizes "
            f"{eval_sizes(final)}; hardware {hardware(final)}; lr rule {lr_rule(final)}.")


SELECTION_RULE = (
    "Selection is on validation only: per dataset, protocol and loss, the eligible cell (every seed of the grid "
    "recorded and finished: ok or collapsed) with the highest mean validation MAP@R (ties: validation k-NN "
    "accuracy, then smaller margin, then smaller batch). Test numbers are then reported for the selected cells. "
    "mean ± half-width of the 95% Student-t interval over seeds (n seeds). The best loss is chosen on validation "
    "too (the selected cell with the highest mean validation MAP@R; exact ties are all best). Every other loss: "
    "the paired difference from it over seeds (the same seed is the same initialisation and the same batches) "
    "with its 95% t-interval, the two-sided paired t-test's p and Holm's adjusted p over the table's comparisons; "
    f"a difference counts as detected when the Holm p is below {stats.ALPHA}, and 'not detected' means below what "
    "the table can see (its minimal detectable difference at 80% power is stated, at Holm's strictest level "
    f"{stats.ALPHA} / m for m comparisons), not equivalence.")


BASELINE_RULE = (
    "Baselines: pixels, the raw pixel values flattened and L2-normalised; untrained, the network as seed s builds "
    "it, before any update, its BatchNorm running statistics re-estimated on the training images (no gradient step; "
    "a fresh net's statistics squeeze every embedding together in eval mode), one per seed.")
HEADLINE_RULE = (
    "Each loss's cell selected on validation MAP@R among eligible cells (every seed recorded and finished); "
    "test metrics of the selected cells, mean ± 95% t half-width (n seeds); vs best: the paired difference over "
    "seeds from the loss that is best on validation, its 95% t-interval, p and Holm's p (detected: Holm p < "
    f"{stats.ALPHA}). (edge): the "
    "selected margin, lr or temperature is the smallest or largest of the 3 or more its loss was run at (the optimum "
    "may lie outside the axis; a margin of 0, the smallest there is, is no edge). plateau gap: the final checkpoint's "
    "validation MAP@R minus the previous checkpoint's, on the same evaluation subsets (under 0.01: at the plateau). "
    + BASELINE_RULE)


# ---- tables -------------------------------------------------------------------------------------


def loss_text(row: Any) -> str:
    """The loss, with the cell's variant (its values of the grid's variant axes) in brackets when it has one."""
    return row.loss + (f" [{row.variant}]" if getattr(row, "variant", "") else "")


def _cell_text(row: Any) -> list[str]:
    return [row.dataset, row.protocol, loss_text(row), margin_value(row), plain(row.batch_size)]


def tuning_budget(cells: pd.DataFrame) -> str:
    """The sentence that states how many configurations (cells) each loss's selection was made among."""
    trials = cells[~cells.loss.isin(stats.BASELINES)]
    counts = trials.groupby("loss", sort=False).n_configs.max().dropna().astype(int)
    if counts.empty:
        return ""
    axes = "margin × batch size" + (" × variant" if (trials.variant != "").any() else "")
    if counts.nunique() == 1:
        plural = "" if counts.iloc[0] == 1 else "s"
        return f"Tuning budget: {counts.iloc[0]} configuration{plural} ({axes}) per loss, each on every selection seed."
    return ("Tuning budget (configurations each loss's selection was made among, " + axes + "): "
            + ", ".join(f"{loss} {count}" for loss, count in counts.items()) + ".")


def p_clause(p: float) -> str:
    """A present p as 'p = 0.015' (3 decimals), or 'p < 0.001' below 0.001."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def signed(value: float, digits: int = 4) -> str:
    """A difference with its sign: '+0.0012', '−0.0340'."""
    return f"{'−' if value < 0 else '+'}{abs(value):.{digits}f}"


def _versus(row: Any, metric: str) -> str:
    """'best on val.' for the reference, else the paired difference from it with its 95% interval, the raw and the
    Holm-adjusted p, and the verdict by the Holm p: 'worse', 'better' or 'not detected'."""
    p = getattr(row, f"p_vs_best_{metric}")
    if getattr(row, "reference_failed", False):
        return "no reference (the best loss's fresh seeds did not finish)"
    if row.best and _missing(p):
        return "best on val."
    if _missing(p):
        pairs = getattr(row, f"n_pairs_{metric}")
        return f"not testable ({pairs} paired seed{'' if pairs == 1 else 's'})"
    holm = getattr(row, f"p_holm_{metric}")
    diff, lo, hi = (getattr(row, f"{what}_{metric}") for what in ("diff", "diff_lo", "diff_hi"))
    verdict = "not detected" if holm >= stats.ALPHA else ("worse" if diff < 0 else "better")
    tie = "tied on val., " if row.best else ""
    return (f"{tie}{verdict}: {signed(diff)} [{signed(lo)}, {signed(hi)}], {p_clause(p)}, "
            f"Holm {p_clause(holm)}")


TUNED_VARIANTS = ("lr", "temperature")  # the variant axes that are tuned choices, marked "(edge)" like the margin


def _at_edge(value: Any, values: pd.Series) -> bool:
    """Whether `value` is the smallest or largest of an axis of 3 or more values (the optimum may lie outside)."""
    values = values.dropna().unique()
    return len(values) >= 3 and value in (values.min(), values.max())


def _loss_cells(row: Any, trials: pd.DataFrame) -> pd.DataFrame:
    """The cells of `row`'s loss in its dataset and protocol."""
    return trials[(trials.dataset == row.dataset) & (trials.protocol == row.protocol) & (trials.loss == row.loss)]


def margin_text(row: Any, trials: pd.DataFrame) -> str:
    """The selected cell's margin, marked "(edge)" when it is the smallest or largest margin its loss was run at
    (on a margin axis of 3 or more values: the optimum may lie outside the axis); 0, the smallest margin allowed, is
    no edge: nothing lies below it."""
    edge = row.loss not in CONTROLS and row.margin != 0 and _at_edge(row.margin, _loss_cells(row, trials).margin)
    return margin_value(row) + (" (edge)" if edge else "")


def margin_value(row: Any) -> str:
    """The cell's margin, or "–" for a control (losses.CONTROLS), which has none (its config's margin is unused)."""
    return ABSENT if row.loss in CONTROLS else plain(row.margin)


def selected_loss_text(row: Any, trials: pd.DataFrame) -> str:
    """loss_text, with each tuned variant value (TUNED_VARIANTS: lr, temperature) marked "(edge)" when it is the
    smallest or largest its loss was run at, on an axis of 3 or more values."""
    if not getattr(row, "variant", ""):
        return loss_text(row)
    chosen = json.loads(row.variant_values)
    ran = pd.DataFrame([json.loads(values) for values in _loss_cells(row, trials).variant_values])
    edges = {axis for axis in TUNED_VARIANTS if axis in chosen and chosen[axis] is not None
             and _at_edge(chosen[axis], ran[axis])}
    parts = [part + (" (edge)" if part.split(" ")[0] in edges else "") for part in row.variant.split(", ")]
    return f"{row.loss} [{', '.join(parts)}]"


def headline(name: str, cells: pd.DataFrame, tuned: pd.DataFrame | None = None) -> tuple[Table, str]:
    """Baselines, then each loss's selected cell (best test MAP@R first), then losses without an eligible cell;
    and the sentence that says what the tests allow. `tuned`: the cells each loss was selected among, whose axes
    decide "(edge)" (default `cells`; a fresh-seed experiment's parent's, since it runs the selected cells only)."""
    rows = []
    header = ["loss", "margin", "batch", "steps", "img/class", "MAP@R (test)", "vs best", "k-NN accuracy (test)",
              "vs best", "P@1 (test)", "MAP@R (val)", "plateau gap (val MAP@R)"]
    for row in cells[cells.loss.isin(stats.BASELINES)].itertuples():
        rows.append([loss_text(row), ABSENT, ABSENT, ABSENT, ABSENT, interval(row, "map_at_r"), "baseline",
                     interval(row, "knn_accuracy"), "baseline", interval(row, "precision_at_1"),
                     interval(row, "val_map_at_r"), ABSENT])
    trials = cells[~cells.loss.isin(stats.BASELINES)]
    ran = trials if tuned is None else tuned
    selected = trials[trials.selected].sort_values("map_at_r_mean", ascending=False, kind="stable")
    for row in selected.itertuples():
        rows.append([selected_loss_text(row, ran), margin_text(row, ran), plain(row.batch_size),
                     plain(row.planned_steps),
                     plain(row.images_per_class), interval(row, "map_at_r"), _versus(row, "map_at_r"),
                     interval(row, "knn_accuracy"), _versus(row, "knn_accuracy"), interval(row, "precision_at_1"),
                     interval(row, "val_map_at_r"), interval(row, "plateau_gap")])
    for loss, group in trials[~trials.loss.isin(selected.loss)].groupby("loss", sort=False):
        if group.mixed_budget.any():
            why = stats.NO_SELECTION_ACROSS_BUDGETS
        elif not stats.has_validation(group).any() and group.eligible.any():
            why = "selection not possible: no validation metrics"
        else:
            why = "no eligible cell: " + "; ".join(
                f"{stats.setting_text(r.loss, r.margin, r.batch_size, ' ')}{f' [{r.variant}]' if r.variant else ''}: "
                f"{statuses(r)}"
                for r in group.itertuples())
        rows.append([loss, ABSENT, ABSENT, ABSENT, ABSENT, why, ABSENT, ABSENT, ABSENT, ABSENT, ABSENT, ABSENT])
    return Table(name, header, rows), noise_sentence(selected, trials)


PAPER_RULE = (
    "Test metrics of each loss's cell selected on validation MAP@R, mean ± 95% t half-width over seeds. ref.: the "
    "loss best on validation; every other loss is compared with it in a paired t-test over seeds (Holm-adjusted "
    f"over the table's comparisons); † marks a detected difference in MAP@R or k-NN accuracy (Holm p < "
    f"{stats.ALPHA}), and an unmarked one is within the noise at this n. Bold: the highest mean of a column among "
    "the losses. (edge): the selected margin, lr or temperature is the smallest or largest of the 3 or more its loss "
    "was run at (a margin of 0 is no edge). " + BASELINE_RULE)


def paper_headline(name: str, cells: pd.DataFrame, tuned: pd.DataFrame | None = None) -> Table:
    """The headline's compact form for a paper: the baselines, then each loss's selected cell (best test MAP@R
    first) with its test MAP@R, k-NN accuracy and P@1; the best mean of a column bold, detected differences marked;
    `tuned` as in `headline`."""
    metrics = ("map_at_r", "knn_accuracy", "precision_at_1")
    trials = cells[~cells.loss.isin(stats.BASELINES)]
    ran = trials if tuned is None else tuned
    selected = trials[trials.selected].sort_values("map_at_r_mean", ascending=False, kind="stable")
    best = {metric: round(selected[f"{metric}_mean"].max(), 4) for metric in metrics}
    rows: list[list[Any]] = [[loss_text(row), ABSENT, ABSENT, *(interval(row, metric) for metric in metrics)]
                             for row in cells[cells.loss.isin(stats.BASELINES)].itertuples()]
    for row in selected.itertuples():
        values = []
        for metric in metrics:
            value = interval(row, metric)
            if isinstance(value, Estimate):
                holm = getattr(row, f"p_holm_{metric}", math.nan)
                value = replace(value, bold=round(value.mean, 4) == best[metric],
                                marked=not _missing(holm) and holm < stats.ALPHA)
            values.append(value)
        rows.append([selected_loss_text(row, ran) + (" (ref.)" if row.best else ""), margin_text(row, ran),
                     plain(row.batch_size),
                     *values])
    rows += [[f"{loss} (no eligible cell)", ABSENT, ABSENT, ABSENT, ABSENT, ABSENT]
             for loss in trials[~trials.loss.isin(selected.loss)].loss.unique()]
    return Table(name, ["loss", "margin", "B", "MAP@R", "k-NN accuracy", "P@1"], rows)


def noise_sentence(selected: pd.DataFrame, cells: pd.DataFrame) -> str:
    """What the paired tests allow one to say about the selected cells, in words."""
    if selected.empty and not stats.has_validation(cells).any():
        return ("Selection not possible: the records have no validation metrics, so no cell is selected and no "
                "loss is compared; the full grid shows every cell's test metrics, none of them selected.")
    if "reference_failed" in selected and selected.reference_failed.any():
        return ("The loss best on the selection seeds has no finished cell on these fresh seeds (a seed failed): "
                "nothing is compared, rather than a reference chosen on the seeds whose test numbers are cited.")
    if len(selected) < 2:
        return "Fewer than two losses have a selected cell: nothing to compare."
    reference = selected[selected.best & selected["p_vs_best_map_at_r"].isna()]
    if reference.empty:
        return "No selected cell has validation metrics to choose the best loss by: nothing is compared."
    name = reference.loss.iloc[0]
    sentences = [f"The reference is {name}, the best selected cell on validation MAP@R; every other loss is compared "
                 "with it by a paired t-test over the seeds (Holm-adjusted over the table's comparisons)."]
    for metric in stats.TESTED:
        others = selected[selected.index != reference.index[0]]
        holm = others[f"p_holm_{metric}"]
        label = METRIC_NAMES[metric]
        mdd, pairs = reference[f"mdd_{metric}"].iloc[0], int(others[f"n_pairs_{metric}"].min())
        power = (f"; at n = {pairs} paired seeds the table detects a difference of {number(mdd, 4)} with "
                 f"{stats.POWER:.0%} power (at Holm's strictest level, {stats.ALPHA} / {int(holm.notna().sum())}), "
                 "so a smaller one is not detected rather than absent" if not _missing(mdd) else "")
        if holm.isna().all():
            sentences.append(f"On test {label}, no difference is testable (fewer than 2 paired seeds): the order is "
                             "not a ranking.")
            continue
        found = others[holm < stats.ALPHA]
        if found.empty:
            sentences.append(f"On test {label}, no difference from {name} is detected (Holm p ≥ {stats.ALPHA}): "
                             f"the table does not rank these losses{power}.")
        else:
            parts = [f"{row.loss} ({'worse' if getattr(row, f'diff_{metric}') < 0 else 'better'})"
                     for row in found.itertuples()]
            sentences.append(f"On test {label}, {', '.join(parts)} differ{'s' if len(parts) == 1 else ''} from "
                             f"{name} (Holm p < {stats.ALPHA}); the other differences are not detected{power}.")
    return " ".join(sentences)


def selection_label(row: Any) -> str:
    """'selected', 'not selected', or why the cell could not be."""
    if row.loss in stats.BASELINES:
        return "baseline"
    if row.selected:
        return "selected"
    if row.n_missing:
        return "not eligible: incomplete"
    if not row.eligible:
        return "not eligible: failed"
    return "not selected: budgets differ" if row.mixed_budget else "not selected"


def grid_table(name: str, cells: pd.DataFrame) -> Table:
    """Every trial cell's test metrics (labelled selected / not selected), its mean intra- and inter-class distance
    on the whole test set, settings and systems columns."""
    header = ["dataset", "protocol", "loss", "margin", "batch", "steps", "img/class", "lr", "MAP@R (test)",
              "k-NN accuracy (test)", "P@1 (test)", "MAP@R (val)", "intra / inter", "samples/s", "peak MiB",
              "train s", "trials", "selection"]
    rows = [[*_cell_text(row), plain(row.planned_steps), plain(row.images_per_class), plain(row.lr),
             interval(row, "map_at_r"), interval(row, "knn_accuracy"), interval(row, "precision_at_1"),
             interval(row, "val_map_at_r"), _class_distances(row), _speed(row),
             number(row.peak_memory_mib_mean, 0), number(row.train_seconds_mean, 1), statuses(row),
             selection_label(row)]
            for row in cells[~cells.loss.isin(stats.BASELINES)].itertuples()]
    return Table(name, header, rows)


def _speed(row: Any) -> str:
    """The cell's mean samples/s, with SHARED where one of its trials had less than QUIET_SHARE of its
    threads' CPU time (no mark where cpu_share was not recorded)."""
    shared = not _missing(row.cpu_share_min) and row.cpu_share_min < QUIET_SHARE
    return number(row.samples_per_second_mean, 0) + (f" {SHARED}" if shared else "")


def _class_distances(row: Any) -> str:
    """'0.412 / 0.987': the cell's mean intra- and inter-class test distances (– for records without them)."""
    intra, inter = row.intra_class_distance_mean, row.inter_class_distance_mean
    return "–" if _missing(intra) or _missing(inter) else f"{intra:.3f} / {inter:.3f}"


def margin_table(name: str, cells: pd.DataFrame) -> Table:
    """Initial (step-0) mining statistics per loss × margin × batch size, flagged above EASY_LIMIT easy."""
    header = ["dataset", "protocol", "loss", "margin", "batch", "effective margin", "easy", "semi-hard", "hard",
              "active anchors", "n", "check"]
    rows = [[*_cell_text(row), number(row.effective_margin_mean, 3), number(row.initial_fraction_easy_mean, 3),
             number(row.initial_fraction_semihard_mean, 3), number(row.initial_fraction_hard_mean, 3),
             number(row.initial_active_anchors_mean, 3), str(row.n_initial),
             "none: no margin (a control)" if row.control
             else f"> {stats.EASY_LIMIT:.0%} easy" if row.too_easy else "ok"]
            for row in stats.margin_check(cells).itertuples()]
    return Table(name, header, rows)


def _event(row: Any, state: str) -> tuple[str, str]:
    first = getattr(row, f"{state}_first")
    if _missing(first):
        return "never", ABSENT
    where = f"checkpoint {int(first)}" + ("" if _missing(getattr(row, f"{state}_step"))
                                          else f" (step {int(getattr(row, f'{state}_step'))})")
    return where, "yes" if getattr(row, f"{state}_escaped") else "no"


def diagnostics_table(name: str, events: pd.DataFrame) -> Table:
    """Per trial ever pinned or collapsed, in cell and seed order: where it first was, and whether it escaped."""
    header = ["dataset", "protocol", "loss", "margin", "batch", "seed", "first pinned at margin", "escaped",
              "first collapsed", "escaped", "final status"]
    events = events.sort_values([*stats.CELL, "seed"], kind="stable")
    rows = [[*_cell_text(row), plain(row.seed), *_event(row, "pinned_at_margin"), *_event(row, "collapsed"),
             row.status] for row in events.itertuples()]
    return Table(name, header, rows)


def comparison_table(summary: pd.DataFrame, experiments: list[str]) -> Table:
    """Per dataset × protocol × loss: each experiment's selected cell (baselines: their mean) on test MAP@R."""
    header = ["dataset", "protocol", "loss", *[f"{e}: MAP@R (test), selected cell" for e in experiments]]
    rows = []
    keys = summary[["dataset", "protocol", "loss"]].drop_duplicates()
    keys = keys.assign(_rank=keys.loss.map(lambda loss: stats.loss_rank(loss, tuple(summary.loss.unique()))))
    for key in keys.sort_values(["dataset", "protocol", "_rank"], kind="stable").itertuples():
        row = [key.dataset, key.protocol, key.loss]
        for experiment in experiments:
            cells = summary[(summary.experiment == experiment) & (summary.dataset == key.dataset)
                            & (summary.protocol == key.protocol) & (summary.loss == key.loss)]
            chosen = cells if key.loss in stats.BASELINES else cells[cells.selected]
            if key.loss in stats.BASELINES and len(chosen) > 1:  # one per variant it depends on (normalize)
                row.append("; ".join(f"{interval(cell, 'map_at_r')} [{cell.variant}]" for cell in chosen.itertuples()))
            elif not chosen.empty:
                cell = chosen.iloc[0]
                where = "" if key.loss in stats.BASELINES else (
                    f", {stats.setting_text(cell.loss, cell.margin, cell.batch_size, ' ')}"
                    + (f" [{cell.variant}]" if cell.variant else ""))
                row.append(f"{interval(cell, 'map_at_r')}{where}")
            elif cells.empty:
                row.append("not in this experiment")
            elif not cells.n_seeds.any():
                row.append("not recorded yet")
            elif cells.mixed_budget.any():
                row.append(stats.NO_SELECTION_ACROSS_BUDGETS)
            elif not stats.has_validation(cells).any():
                row.append("no validation metrics")
            else:
                row.append("no eligible cell")
        rows.append(row)
    return Table("comparison", header, rows)


def failures_table(name: str, final: pd.DataFrame) -> Table:
    """Every trial whose status is not ok, with its reason."""
    failed = final[(final.kind == "trial") & (final.status != "ok")]
    failed = failed.sort_values(["dataset", "protocol", "loss", "margin", "batch_size", "seed"])
    return Table(name, ["dataset", "protocol", "loss", "margin", "batch", "seed", "status", "reason"],
                 [[*_cell_text(r), plain(r.seed), r.status, str(r.reason or "")] for r in failed.itertuples()])


def unfinished_table(name: str, cells: pd.DataFrame) -> Table:
    """The cells of the grid with seeds that have no record yet."""
    return Table(name, ["dataset", "protocol", "loss", "margin", "batch", "seeds not run", "recorded"],
                 [[*_cell_text(r), r.missing_seeds.replace(";", ", "), statuses(r)]
                  for r in stats.missing_cells(cells).itertuples()])


def _float(text: str, digits: int) -> str:
    return ABSENT if text in ("", None) else f"{float(text):.{digits}f}"


def systems_table(systems: Systems) -> Table:
    """The isolated step benchmark's rows: step time, throughput and peak memory per dataset × loss × batch size ×
    precision (× compile mode), its numbers as measured."""
    header = ["dataset", "model", "loss", "batch", "precision", "compile", "step (ms)", "samples/s", "peak MiB",
              "forward GFLOP/sample", "status"]
    rows = [[r["dataset"], r["model"] or ABSENT, r["loss"], r["batch_size"], r["precision"], r["compile"] or ABSENT,
             _float(r["median_ms"], 1), _float(r["samples_per_second"], 0), _float(r["peak_memory_mib"], 0),
             _float(r["forward_gflops_per_sample"], 3), (r["status"] + " " + r["note"]).strip()]
            for r in systems.rows]
    return Table("systems", header, rows)


def _systems_setting(systems: Systems, key: str) -> str:
    """A setting of the benchmark: its provenance's value, else the distinct values of its rows' column."""
    recorded = systems.info(key)
    if recorded != NOT_RECORDED:
        return recorded
    return ", ".join(sorted({r[key] for r in systems.rows if r.get(key)}, key=str)) or NOT_RECORDED


def systems_hardware(systems: Systems) -> str:
    """The benchmark's hardware line: hardware (device), threads."""
    devices = ", ".join(sorted({r["device"] for r in systems.rows if r["device"]})) or systems.info("device")
    return f"{systems.info('hardware')} ({devices}), {systems.info('threads')} threads"


def systems_blocks(systems: Systems | None) -> list[Block]:
    """The report's systems section: the isolated step benchmark with its provenance, or why there is none."""
    blocks: list[Block] = [("h2", "Systems: the training step in isolation")]
    if systems is None:
        return blocks + [("p", "No isolated measurement: run `make bench` (it writes step_benchmark.csv and "
                               "step_benchmark.json into the reports folder; or pass `--systems PATH`). Throughput "
                               "and peak memory are then only the grid's own observations, in each experiment's full "
                               "grid, taken while trials shared the machine; they do not compare loss costs.")]
    steps_, warmup = _systems_setting(systems, "steps"), _systems_setting(systems, "warmup")
    precisions = ", ".join(dict.fromkeys(sorted(r["precision"] for r in systems.rows)))
    modes = ", ".join(dict.fromkeys(sorted(r["compile"] for r in systems.rows if r["compile"]))) or "none"
    note = (f"Measured by `make bench` (`python -m bench.step_benchmark`, {systems.source}) on "
            f"{systems_hardware(systems)}, commit {systems.info('git_commit')}, {systems.info('date')}: the trial's "
            f"whole training step (batch gather, augmentation, forward, loss, backward, optimiser step) of each point "
            f"alone on the machine, the median of {steps_} device-synchronised steps after {warmup} warm-up steps; "
            "samples/s = B / median. Peak memory is the step's peak above the memory in use once the data set was "
            "loaded (CUDA: max_memory_allocated; CPU: peak RSS): model, optimiser state and activations, not the "
            f"data. Precision {precisions}; compile {modes}. The grid's own throughput and memory stay in each "
            "experiment's full grid, as observed.")
    items = [
        ("source", systems.source),
        ("hardware", systems_hardware(systems)),
        ("git commit", systems.info("git_commit")),
        ("date", systems.info("date")),
        ("threads", systems.info("threads")),
        ("preset", systems.info("preset")),
        ("precision", precisions),
        ("compile", modes),
        ("steps", f"median of {steps_} timed steps after {warmup} warm-up steps"),
        ("torch", systems.info("torch")),
        ("command", systems.info("command")),
    ]
    return blocks + [("items", items), ("p", note), ("table", systems_table(systems)._replace(note=note))]


# ---- the document -------------------------------------------------------------------------------


def running_time(final: pd.DataFrame) -> str:
    """How long the experiment's trials ran: the wall time during which at least one ran (the union over trials of
    [end − elapsed_seconds, end], a record's provenance date being its end; pauses between sittings left out),
    and their own times summed."""
    trials = final[(final.kind == "trial") & final.provenance_date.notna() & final.elapsed_seconds.notna()]
    if trials.empty:
        return "no trial with its times recorded"
    ends = pd.to_datetime(trials.provenance_date.astype(str), utc=True).map(pd.Timestamp.timestamp).to_numpy()
    spans = sorted(zip(ends - trials.elapsed_seconds.to_numpy(float), ends, strict=True))
    covered, (start, stop) = 0.0, spans[0]
    for begin, end in spans[1:]:
        if begin > stop:
            covered, start, stop = covered + stop - start, begin, end
        else:
            stop = max(stop, end)
    covered += stop - start
    hours = f"{covered / 3600:.1f} h" if covered >= 3600 else f"{covered / 60:.0f} min"
    trial_hours = trials.elapsed_seconds.sum() / 3600
    return (f"{hours} of wall time with a trial running ({len(trials)} trials, {trial_hours:.1f} trial-hours; pauses "
            "between sittings left out)")


def _provenance(final: pd.DataFrame, grid: dict[str, Any]) -> list[tuple[str, str]]:
    trials = final[final.kind == "trial"]
    dates = sorted(final.provenance_date.dropna().astype(str))
    counts = trials.status.value_counts()
    expected = stats.expected_trials(grid)
    shared = _joined(final.get("provenance_concurrent_trials", pd.Series(dtype=float)), "not recorded")
    return [
        ("date", " to ".join(dict.fromkeys([dates[0], dates[-1]])) if dates else "unknown"),
        ("git commit", _joined(final.provenance_git_commit)),
        ("hardware", hardware(final)),
        ("torch", _joined(final.provenance_torch)),
        ("Ray", _joined(final.provenance_ray.fillna("none (local backend)"))),
        ("preset", _joined(final.preset)),
        ("budget", budget(final)),
        ("steps", steps(final)),
        ("precision", precision(final)),
        ("threads per trial", _joined(trials.threads, "not recorded")),
        ("trials sharing the machine", shared),
        ("lr rule", lr_rule(final)),
        ("evaluation sizes", eval_sizes(final)),
        ("seeds", f"{trials.seed.nunique()} ({_joined(trials.seed)})"),
        ("running time", running_time(final)),
        ("trials", f"{len(trials)} of {expected} in the grid: "
                   + (", ".join(f"{counts[s]} {s}" for s in counts.index.sort_values()) or "none")),
        ("baselines", f"{int((final.kind == 'baseline').sum())} records" if (final.kind == "baseline").any()
         else "none recorded"),
        ("command", _joined(final.provenance_command)),
    ]


def _fresh(experiment: str, grid: dict[str, Any]) -> list[tuple[str, str]]:
    """The line that says which of an experiment and its fresh seeds gives the test numbers to cite."""
    if grid.get("fresh_of"):
        return [("fresh seeds", f"{grid['fresh_of']}'s validation-selected cells re-run on seeds "
                                f"{', '.join(map(str, grid['axes']['seed']))}, which took no part in selection "
                                f"(the best loss, too, is {grid['fresh_of']}'s): these are the test numbers to cite")]
    if grid.get("fresh_seeds"):
        seeds = ", ".join(map(str, sorted(stats.expected_cells(grid, "").seed.unique())))
        fresh = ", ".join(map(str, grid["fresh_seeds"]))
        return [("fresh seeds", f"selection used seeds {seeds}; the test numbers to cite are experiment "
                                f"{experiment}-fresh's (seeds {fresh}), once the grid is complete")]
    return []


def _experiment(experiment: str, checkpoints: pd.DataFrame, grid: dict[str, Any], cells: pd.DataFrame,
                plots: dict[str, Any], tuned: pd.DataFrame) -> list[Block]:
    """The blocks of one experiment: provenance, unfinished cells, headlines, grid, checks, failures, plots.
    `tuned`: the cells its losses were selected among (its own; a fresh-seed experiment's parent's)."""
    final = stats.final_rows(checkpoints)
    trials = final[final.kind == "trial"]
    expected = stats.expected_trials(grid)
    incomplete = bool(stats.missing_cells(cells).shape[0])
    mark = f" (INCOMPLETE: {len(trials)} of {expected} trials recorded)" if incomplete else ""
    citation = stats.citation(grid, cells, trials)
    why = f". The preset's note: {grid['doc']}" if grid.get("doc") and "NOT FOR" in citation else ""
    blocks: list[Block] = [("h2", f"Experiment {experiment}{mark}"),
                           ("items", [("citable", citation + why), *_fresh(experiment, grid),
                                      *_provenance(final, grid)])]
    scope_note = f"Experiment {experiment}: {citation}. "
    if incomplete:
        blocks += [("h3", "Unfinished cells"),
                   ("p", "Cells of the grid with seeds that have no record yet; they are not eligible for selection."),
                   ("table", unfinished_table(f"{experiment}-unfinished", cells))]
    for (dataset, protocol), group in cells.groupby(["dataset", "protocol"], sort=True):
        scope = final[(final.dataset == dataset) & (final.protocol == protocol)]
        among = tuned[(tuned.dataset == dataset) & (tuned.protocol == protocol) & ~tuned.loss.isin(stats.BASELINES)]
        table, sentence = headline(f"{experiment}-headline-{dataset}-{protocol}", group, among)
        paper = paper_headline(table.name, group, among)._replace(note=f"{dataset}, protocol {protocol}. {PAPER_RULE} "
                                                                 f"{tuning_budget(group)} {facts(scope)}")
        table = table._replace(note=f"{HEADLINE_RULE} {tuning_budget(group)} {facts(scope)}", paper=paper)
        blocks += [("h3", f"Headline{' (INCOMPLETE)' if incomplete else ''}: {dataset}, protocol {protocol} "
                          f"({citation})"),
                   ("p", table.note), ("table", table), ("p", sentence)]
    grid = grid_table(f"{experiment}-grid", cells)._replace(note=(
        "Test metrics of every cell, labelled: only the cells marked selected were chosen, on validation; the test "
        "numbers of cells not selected are shown for completeness and are not a result. samples/s, peak MiB and "
        "train s are the grid's own observations (mean over seeds), taken while other trials shared the machine; "
        f"\"{SHARED}\" after samples/s: a trial of the cell had less than {QUIET_SHARE:.0%} of its "
        "threads' CPU time (cpu_share; other work shared its cores, so its samples/s and train s understate the "
        "training's speed; not measured before 2026-12-07); "
        "loss cost is compared in the isolated measurement (Systems section). "
        + facts(final)))
    blocks += [("h3", "Full grid (test metrics of every cell)"), ("p", grid.note), ("table", grid)]
    blocks.append(("h3", "Margin check at the start of training"))
    margin = margin_table(f"{experiment}-margin-check", cells)
    if margin.rows:
        blocks += [("p", "Mining statistics on the first 8 planned batches before any update, in train mode as "
                         "the first update sees them (BatchNorm on each batch's statistics), at each loss's "
                         "effective margin (m; m + max(μ, 0) for adaptive-mu and quadruplet), mean over seeds; "
                         f"the source's rule of thumb is at most {stats.EASY_LIMIT:.0%} easy triplets at the start."),
                   ("table", margin)]
    else:
        blocks.append(("p", "Margin check unavailable: the records predate the initial (step-0) mining statistics."))
    blocks.append(("h3", "Pinned at the margin and collapsed"))
    if not stats.has_diagnostics(checkpoints):
        blocks.append(("p", "Unavailable: the records predate the pinned_at_margin and collapsed diagnostics."))
    else:
        events = stats.diagnostic_events(checkpoints)
        blocks.append(("table", diagnostics_table(f"{experiment}-diagnostics", events)) if len(events)
                      else ("p", "No trial was pinned at the margin or collapsed at any checkpoint."))
    failures = failures_table(f"{experiment}-failures", final)
    blocks += [("h3", "Trials not ok"),
               ("table", failures) if failures.rows else ("p", "None: every recorded trial finished ok.")]
    blocks.append(("h3", "Plots"))
    blocks += [("image", Path("plots") / experiment / f"{name}.png") for name, figure in plots.items()
               if not isinstance(figure, str)]
    notes = [("not made", f"{name if ' ' in name else name + '.png'}: {figure}") for name, figure in plots.items()
             if isinstance(figure, str)]
    if notes:
        blocks.append(("items", notes))
    return [(kind, _scoped(content, scope_note) if kind == "table" else content) for kind, content in blocks]


def _scoped(table: Table, scope: str) -> Table:
    """The table (and its paper form) with `scope` before its note."""
    paper = table.paper and table.paper._replace(note=scope + table.paper.note)
    return table._replace(note=scope + table.note, paper=paper)


def document(checkpoints: pd.DataFrame, grids: dict[str, dict[str, Any]], summary: pd.DataFrame,
             figures: dict[str, dict[str, Any]], systems: Systems | None = None) -> list[Block]:
    """The whole report as blocks: method, the comparison (several experiments), the isolated step benchmark
    (or why there is none), then each experiment."""
    blocks: list[Block] = [
        ("h1", "tripletbench report"),
        ("p", f"Made by `python -m bench.report` from {checkpoints.trial_id.nunique()} records. Statistics over seeds "
              f"use the final checkpoint of trials whose status is {' or '.join(stats.IN_MEAN)}; diverged, OOM and "
              "error trials are counted in the trials columns and listed, never dropped. " + SELECTION_RULE),
    ]
    experiments = sorted(grids)
    if len(experiments) > 1:
        blocks += [("h2", "Comparison of experiments"),
                   ("p", "Each experiment's validation-selected cell per loss (baselines: their mean) on test MAP@R; "
                         "experiments may differ in budget, hardware and data: see each one's provenance."),
                   ("table", comparison_table(summary, experiments))]
    blocks += systems_blocks(systems)
    for experiment in experiments:
        parent = grids[experiment].get("fresh_of") or experiment  # a fresh-seed experiment's losses were tuned there
        parent = parent if parent in grids else experiment
        blocks += _experiment(experiment, checkpoints[checkpoints.experiment == experiment], grids[experiment],
                              summary[summary.experiment == experiment], figures.get(experiment, {}),
                              summary[summary.experiment == parent])
    return blocks


# ---- rendering ----------------------------------------------------------------------------------


def markdown(blocks: list[Block]) -> str:
    """The blocks as GitHub Markdown."""
    lines = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + content, ""]
        elif kind == "p":
            lines += [content, ""]
        elif kind == "items":
            lines += [f"- **{key}:** {value}" for key, value in content] + [""]
        elif kind == "image":
            lines += [f"![{content.stem}]({content.as_posix()})", ""]
        else:
            lines += [*markdown_table(content.header, content.rows), ""]
    return "\n".join(lines)


def csv_value(value: Any) -> str:
    """A CSV field: empty when missing, true/false, integers plain, floats in %.6g."""
    if _missing(value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return f'"{text}"' if any(c in text for c in ',"\n') else text


def write_csv(summary: pd.DataFrame, path: Path) -> Path:
    """summary.csv: one row per cell in summarize's order, CSV_COLUMNS, fixed formatting."""
    lines = [",".join(CSV_COLUMNS)]
    lines += [",".join(csv_value(row[column]) for column in CSV_COLUMNS)
              for row in summary.reindex(columns=CSV_COLUMNS).astype(object).to_dict("records")]
    return write_text(path, "\n".join(lines) + "\n")


def write_documents(blocks: list[Block], reports_dir: Path) -> list[Path]:
    """summary.md, summary.tex and tex/<table>.tex for every non-empty table; the paths written."""
    written = []
    for name, text in (("summary.md", markdown(blocks)), ("summary.tex", latex.document(blocks))):
        written.append(write_text(reports_dir / name, text))
    (reports_dir / "tex").mkdir(exist_ok=True)
    for kind, content in blocks:
        if kind == "table" and content.rows:
            written.append(write_text(reports_dir / "tex" / f"{content.name}.tex", latex.fragment(content)))
    return written
