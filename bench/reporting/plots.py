"""The report's figures, each answering the one question its title asks: one fixed colour per loss, seed means with
95% Student-t bands where n ≥ 2, baselines as lines, each loss's validation-selected cell starred.

`make_plots` returns {name: Figure or the reason it cannot be made} for one experiment, so that tests can read
the figures before `save` writes them. Every figure is deterministic: fixed loss order and palette, t-SNE with
a fixed seed and PCA init, and PNGs saved without a Software/date entry, so the same records give the same bytes.
Time axes are training seconds (evaluation and data loading excluded), never elapsed seconds.

Each MAP@R panel's y-axis fits what it plots (bands included); a baseline far below or above is named in the
panel's corner with an arrow rather than stretching the axis. Checkpoints before the last may be evaluated on test
subsets (their test_*_size is below the last checkpoint's, the whole test set): curves draw those open and dashed,
the whole-set points filled, never joined into one line.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.axis import Axis  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from bench.engine.files import write_atomic  # noqa: E402
from bench.reporting import stats  # noqa: E402
from losses import CONTROLS  # noqa: E402

TAB10 = plt.get_cmap("tab10").colors
BASELINE_STYLE = {"pixels": {"color": "0.45", "linestyle": "--", "label": "baseline: raw pixels"},
                  "untrained": {"color": "black", "linestyle": ":", "label": "baseline: untrained network"}}
# a cell with at least one seed of this status gets this marker (at its mean, or at the panel's foot without one)
FAILURE_MARKERS = {"collapsed": "v", "diverged": "X", "OOM": "s", "error": "P"}
SELECTED = {"marker": "*", "s": 220, "edgecolors": "black", "linewidths": 0.8, "zorder": 4}
# the legend entries (Line2D settings) of the marks a figure drew, in this order after the losses and baselines
MARKS = {
    "selected": {"linestyle": "none", "marker": "*", "markersize": 13, "markerfacecolor": "0.7",
                 "markeredgecolor": "black", "label": "validation-selected cell"},
    "subset": {"color": "0.3", "linestyle": "--", "marker": "o", "markersize": 4, "markerfacecolor": "white",
               "label": "checkpoints before the last: test subset"},
    "whole": {"color": "0.3", "linestyle": "none", "marker": "o", "markersize": 6,
              "label": "last checkpoint: whole test set"},
    **{status: {"linestyle": "none", "marker": marker, "color": "0.3", "markerfacecolor": "none",
                "label": f"cell with a {status} seed"} for status, marker in FAILURE_MARKERS.items()},
}
FRACTION_COLOURS = {"fraction_easy": ("easy", "tab:green"), "fraction_semihard": ("semi-hard", "tab:orange"),
                    "fraction_hard": ("hard", "tab:red")}
# the stored labels' names (torchvision's class order); a data set not listed shows "class <label>"
CLASS_NAMES = {"cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
               "mnist": tuple("0123456789")}
METRIC_LABEL = "test MAP@R (fraction, 0 to 1)"
SAMPLES_LABEL = "samples seen (images)"
SYSTEMS_QUESTION = {"samples_per_second": "Which loss trains fastest?",
                    "peak_memory_mib": "Which loss needs the most training memory?"}
# x -> the question of its MAP@R curves and the axis label
CURVES = {"samples_seen": ("Which mining strategy is best at equal samples?", SAMPLES_LABEL),
          "train_seconds": ("Which mining strategy is best at equal training time?",
                            "training time (s, evaluation excluded)")}
NEAR = 0.25  # a baseline within this share of a panel's plotted span of it is drawn in the panel, else named
TSNE_POINTS = 500
DPI = 100


@dataclass
class Drawn:
    """What a figure's panels drew, for its title and legend: the seed counts n of its points, the marks used."""

    counts: list[int] = field(default_factory=list)
    marks: set[str] = field(default_factory=set)


def palette(order: tuple[str, ...], losses: list[str]) -> dict[str, Any]:
    """loss -> colour: the i-th loss of `order` (the registry) always gets tab10's i-th colour; others after it."""
    extra = sorted(set(losses) - set(order))
    return {loss: TAB10[i % len(TAB10)] for i, loss in enumerate([*order, *extra])}


def short(value: float, _position: Any = None) -> str:
    """A count written short, for ticks and budgets: 200000 -> 200k, 1500000 -> 1.5M, 0.25 -> 0.25."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _few_ticks(axis: Axis) -> None:
    """At most 6 ticks at round values, written short, so that neighbouring labels never meet."""
    axis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(FuncFormatter(short))


def _batch_axis(ax: Axes, sizes: list[float]) -> None:
    """A log2 x-axis with a tick at each batch size."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size B (images)")


def _spread(counts: list[int], unit: str = "seed") -> str:
    """What a figure's points are, from their counts n of `unit`s: "mean of n = 3 seeds, 95% t band", "n = 1 seed,
    no band", or "mean of n = 1–3 seeds, 95% t band where n ≥ 2"."""
    ns = sorted({int(n) for n in counts if n > 0})
    if not ns:
        return f"no finished {unit}"
    if ns[-1] < 2:
        return f"n = 1 {unit}, no band"
    span = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    return f"mean of n = {span} {unit}s, 95% t band" + ("" if ns[0] >= 2 else " where n ≥ 2")


def _budget(trials: pd.DataFrame) -> str:
    """The training budget of one panel's trials: "budget 60k samples" (values joined by / where they differ)."""
    samples = [short(v) for v in sorted(set(trials.budget_samples.dropna().astype(float)))]
    seconds = [f"{v:g}" for v in sorted(set(trials.budget_seconds.dropna().astype(float)))]
    return f"budget {'/'.join(samples) or '?'} samples" + (f" or {'/'.join(seconds)} s" if seconds else "")


def _in(frame: pd.DataFrame, dataset: str, protocol: str) -> pd.DataFrame:
    """The rows of one dataset × protocol."""
    return frame[(frame.dataset == dataset) & (frame.protocol == protocol)]


def _panels(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The (dataset, protocol) pairs of frame's trial rows, sorted: one column of panels each."""
    trials = frame[~frame.loss.isin(stats.BASELINES)]
    return sorted(set(zip(trials.dataset, trials.protocol, strict=True)))


def _no_selection(summary: pd.DataFrame) -> str:
    """Why no cell is selected."""
    if summary.mixed_budget.any():
        return stats.NO_SELECTION_ACROSS_BUDGETS
    return ("selection not possible: no validation metrics" if not stats.has_validation(summary).any()
            else "no loss has an eligible cell")


def _levels(summary: pd.DataFrame, dataset: str, protocol: str) -> dict[str, float]:
    """baseline -> its mean test MAP@R in one dataset × protocol (finite ones only)."""
    rows = _in(summary, dataset, protocol)
    rows = rows[rows.loss.isin(stats.BASELINES) & rows.map_at_r_mean.notna()]
    return {row.loss: float(row.map_at_r_mean) for row in rows.itertuples()}


def _zoom(ax: Axes, values: list[float], levels: dict[str, float]) -> None:
    """Fit the y-axis to `values` (a panel's means and band edges) and the baselines within NEAR of their span,
    drawn as lines; the baselines beyond it are named in a corner with an arrow towards them."""
    finite = [v for v in values if math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (math.inf, -math.inf)
    reach = NEAR * max(high - low, 0.02)
    near = {name: level for name, level in levels.items() if not finite or low - reach <= level <= high + reach}
    for name, level in near.items():
        ax.axhline(level, linewidth=1.2, **BASELINE_STYLE[name])
    far = {name: level for name, level in levels.items() if name not in near}
    below = {name: level for name, level in far.items() if level < low}
    above = {name: level for name, level in far.items() if level > high}
    shown = finite + list(near.values())
    if shown:
        low, high = min(shown), max(shown)
        pad = 0.08 * max(high - low, 0.02)
        ax.set_ylim(low - pad * (3 if below else 1), high + pad * (3 if above else 1))
    middle = (low + high) / 2  # the nearest baseline is named first
    for group, arrow, y in ((below, "↓", 0.02), (above, "↑", 0.98)):
        if group:
            words = ", ".join(f"{BASELINE_STYLE[name]['label'].removeprefix('baseline: ')} {level:.2f} {arrow}"
                              for name, level in sorted(group.items(), key=lambda item: abs(item[1] - middle)))
            ax.text(0.98, y, f"baseline off the axis: {words}", transform=ax.transAxes, ha="right",
                    va="bottom" if arrow == "↓" else "top", fontsize="x-small", color="0.2",
                    bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 1})


def _band(ax: Axes, x: list[float], intervals: list[stats.Interval], colour: Any, label: str,
          subset: bool = False, block: int = 0) -> list[float]:
    """The means as a line with markers (dashed, open markers on test subsets; else in the style of budget
    `block`) and, where n ≥ 2, the 95% t band; the values drawn (means and band edges)."""
    mean = np.array([i.mean for i in intervals])
    ci = np.array([i.ci95 for i in intervals])
    style = {"linestyle": "--", "marker": "o", "markerfacecolor": "white"} if subset else _block_style(block)
    ax.plot(x, mean, markersize=4, color=colour, label=label, **style)
    if np.isfinite(ci).any():
        ax.fill_between(x, mean - ci, mean + ci, color=colour, alpha=0.15 if subset else 0.2, linewidth=0)
    return [*mean, *(mean - ci), *(mean + ci)]


def _point(ax: Axes, x: float, interval: stats.Interval, colour: Any, label: str) -> list[float]:
    """One filled marker with its 95% t error bar where n ≥ 2; the values drawn."""
    ax.plot([x], [interval.mean], marker="o", markersize=6, linestyle="none", color=colour, label=label, zorder=3)
    if math.isfinite(interval.ci95):
        ax.errorbar([x], [interval.mean], yerr=[interval.ci95], fmt="none", ecolor=colour, capsize=3, linewidth=1)
    return [interval.mean, interval.mean - interval.ci95, interval.mean + interval.ci95]


def _failures(ax: Axes, cells: pd.DataFrame, x: str, colour: Any) -> set[str]:
    """Markers of the failed seeds of cells; the statuses marked."""
    marked = set()
    foot = ax.get_xaxis_transform()
    for status, marker in FAILURE_MARKERS.items():
        hit = cells[cells[stats.STATUS_COLUMNS[status]] > 0]
        for row in hit.itertuples():
            mean = row.map_at_r_mean
            if math.isnan(mean):
                ax.scatter([getattr(row, x)], [0.03], marker=marker, color=colour, s=40, transform=foot, zorder=3,
                           label=status)
            else:
                ax.scatter([getattr(row, x)], [mean], marker=marker, facecolor="none", edgecolor=colour, s=70,
                           zorder=3, label=status)
            marked.add(status)
    return marked


def _one_variant(cells: pd.DataFrame) -> pd.DataFrame:
    """Each loss's cells of one variant per dataset × protocol (that of its selected cell, else of its best cell on
    validation), so that a line joins the margins of one configuration; `cells` itself without variants."""
    if (cells.variant == "").all():
        return cells
    kept = []
    for _, group in cells.groupby(["dataset", "protocol", "loss"], sort=False):
        chosen = group[group.selected]
        if chosen.empty:
            chosen = group.sort_values("val_map_at_r_mean", ascending=False, na_position="last", kind="stable")
        kept.append(group[group.variant == chosen.variant.iloc[0]])
    return pd.concat(kept)


def _cell_lines(ax: Axes, panel: pd.DataFrame, x: str, losses: list[str], colours: dict[str, Any],
                drawn: Drawn, block: tuple[int, str] = (0, "")) -> list[float]:
    """Each loss's cells of one panel (summary rows) against `x`: seed means with bands (in the style of budget
    block number block[0]; labelled "loss, block[1]" where it is named), failed seeds marked, the selected cell
    starred; the values drawn."""
    values: list[float] = []
    for loss in losses:
        line = panel[panel.loss == loss].sort_values(x)
        finite = line[line.map_at_r_mean.notna()]
        if len(finite):
            values += _band(ax, list(finite[x]), [stats.Interval(r.map_at_r_mean, r.map_at_r_std, r.map_at_r_ci95,
                                                                 r.n_valid) for r in finite.itertuples()],
                            colours[loss], f"{loss}, {block[1]}" if block[1] else loss, block=block[0])
            drawn.counts += list(finite.n_valid)
        drawn.marks |= _failures(ax, line, x, colours[loss])
        chosen = finite[finite.selected]
        if len(chosen):
            ax.scatter(chosen[x], chosen.map_at_r_mean, color=colours[loss], label="selected", **SELECTED)
            drawn.marks.add("selected")
    return values


LEGEND_ROW_INCHES, TITLE_LINE_INCHES = 0.24, 0.2  # a "small" legend entry's height, a "medium" title line's


def _legend(figure: Figure, colours: dict[str, Any], losses: list[str], baselines: list[str],
            marks: set[str], levels: tuple[str, ...] = ()) -> None:
    """The figure's legend at its right: losses (those in `levels` drawn as a level line, not against x),
    baselines, then the marks drawn."""
    handles = [Line2D([], [], color=colours[loss], linestyle="-.", label=f"{loss} (no margin: its selected cell's "
                      "level)") if loss in levels else Line2D([], [], color=colours[loss], marker="o", label=loss)
               for loss in losses]
    handles += [Line2D([], [], **BASELINE_STYLE[name]) for name in stats.BASELINES if name in baselines]
    handles += [Line2D([], [], **style) for name, style in MARKS.items() if name in marks]
    figure.legend(handles=handles, loc="outside right center", fontsize="small")
    # the legend stands beside the panels, below the title: a figure shorter than both grows to hold them
    needed = LEGEND_ROW_INCHES * len(handles) + TITLE_LINE_INCHES * (figure.get_suptitle().count("\n") + 1) + 0.4
    figure.set_figheight(max(figure.get_figheight(), needed))


def _wrapped(*lines: str, width: int = 62) -> str:
    """A panel title: each line wrapped to `width` characters (never inside a hyphenated loss name)."""
    return "\n".join(part for line in lines for part in textwrap.wrap(line, width, break_on_hyphens=False))


def _title(figure: Figure, experiment: str, question: str, detail: str) -> None:
    """The figure's title, wrapped to its width: the experiment (with its citation), the question, what is shown."""
    width = max(40, int(figure.get_figwidth() * 11))
    figure.suptitle(_wrapped(f"{experiment}: {question} {detail}", width=width), fontsize="medium")


def _ordered(losses: Any, order: tuple[str, ...]) -> list[str]:
    return sorted(set(losses) - set(stats.BASELINES), key=lambda loss: stats.loss_rank(loss, order))


def margins(summary: pd.DataFrame, trials: pd.DataFrame, order: tuple[str, ...], experiment: str) -> Figure | str:
    """Test MAP@R of every cell against the margin (seed mean, 95% band), a row per batch size, a column per
    dataset × protocol (each its own x-axis), baselines as lines, failed cells marked, selected cells starred."""
    cells = summary[~summary.loss.isin(stats.BASELINES)]
    if cells.map_at_r_mean.notna().sum() == 0:
        return "no cell has a finite test MAP@R"
    if cells.margin.nunique() < 2:
        return f"a single margin ({', '.join(f'{v:g}' for v in sorted(cells.margin.unique()))}) in the grid"
    varied = (cells.variant != "").any()
    cells = _one_variant(cells)
    colours, losses = palette(order, list(cells.loss)), _ordered(cells.loss, order)
    controls, cells = cells[cells.loss.isin(CONTROLS)], cells[~cells.loss.isin(CONTROLS)]  # no margin: a level
    panels, sizes = _panels(summary), sorted(cells.batch_size.unique())
    figure, axes = plt.subplots(len(sizes), len(panels), figsize=(4.2 * len(panels) + 2.4, 3.2 * len(sizes)),
                                squeeze=False, sharex="col", layout="constrained")
    drawn = Drawn()
    for column, (dataset, protocol) in enumerate(panels):
        for row, size in enumerate(sizes):
            ax = axes[row][column]
            panel, ran = _in(cells, dataset, protocol), _in(trials, dataset, protocol)
            values = _cell_lines(ax, panel[panel.batch_size == size], "margin", losses, colours, drawn)
            level = _in(controls, dataset, protocol)
            for row in level[level.selected & (level.batch_size == size)].itertuples():
                ax.axhline(row.map_at_r_mean, color=colours[row.loss], linestyle="-.", linewidth=1.2)
                values.append(float(row.map_at_r_mean))
            _zoom(ax, values, _levels(summary, dataset, protocol))
            ax.set_title(f"{dataset}, {protocol} classes, batch {size:g}\n{_budget(ran[ran.batch_size == size])}",
                         fontsize="medium")
            ax.set(xlabel="margin m", ylabel=METRIC_LABEL)
            _few_ticks(ax.xaxis)
    _title(figure, experiment, "Which margin does each mining strategy need, at equal samples?",
           ("Test MAP@R of each loss's cells at the variant (lr, normalisation, …) of its selected cell"
            if varied else "Test MAP@R of every cell")
           + f"; {_spread(drawn.counts)}; ★ each loss's validation-selected cell.")
    _legend(figure, colours, losses, list(summary.loss.unique()), drawn.marks, tuple(controls.loss.unique()))
    return figure


def _single_batch_size(rows: pd.DataFrame) -> str:
    """Why a batch-size plot is not made: the one batch size of `rows`."""
    return f"a single batch size ({', '.join(f'{v:g}' for v in sorted(rows.batch_size.unique()))}) in the grid"


def _best_per_batch_size(cells: pd.DataFrame) -> pd.DataFrame:
    """Each loss's validation-best eligible cell at each batch size among `cells` (summary rows of one budget;
    stats.select's rule within one batch size), their `selected` still the overall selection."""
    picked = [stats.select(cells[cells.batch_size == size]) for size in sorted(cells.batch_size.unique())]
    index = sorted(i for chosen in picked for i in chosen.index[chosen.selected])
    return cells.loc[index]


def _margins_per_size(rows: pd.DataFrame, sizes: list[float], losses: list[str]) -> str:
    """The margin of each loss at each batch size, e.g. "batch-all 0.2/0.4" for B 64/256 ("–": no eligible cell)."""
    def margin(loss: str, size: float) -> str:
        found = rows[(rows.loss == loss) & (rows.batch_size == size)]
        return f"{found.margin.iloc[0]:g}" if len(found) else "–"

    return ", ".join(f"{loss} {'/'.join(margin(loss, size) for size in sizes)}" for loss in losses
                     if loss in set(rows.loss))


# the batch-size plot's budget blocks: line style and marker (not the baselines' dashes and dots)
BLOCK_STYLES = ({"linestyle": "-", "marker": "o"}, {"linestyle": "-.", "marker": "s"},
                {"linestyle": (0, (6, 2, 1, 2, 1, 2)), "marker": "^"})


def _block_style(block: int) -> dict[str, Any]:
    """The line style and marker of budget block number `block` (the styles repeat past the last)."""
    return BLOCK_STYLES[block % len(BLOCK_STYLES)]


def _budget_name(samples: float | None, steps: float | None, seconds: float | None) -> str:
    """A budget block's name: "equal steps (3.1k each)", "equal samples (200k each[, or 600 s])", "equal time
    (600 s each)" or "budget not recorded"."""
    if steps is not None:
        return f"equal steps ({short(steps)} each)"
    if samples is not None:
        return f"equal samples ({short(samples)} each" + (f", or {seconds:g} s)" if seconds is not None else ")")
    return f"equal time ({seconds:g} s each)" if seconds is not None else "budget not recorded"


def _blocks(cells: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """cells (summary rows) split by their configured budget (stats.budget_of), each named: "equal steps (3.1k
    each)" where the steps are fixed (the samples grow with B), else "equal samples (200k each)" (or seconds); the
    blocks with fixed steps first, then by samples."""
    named = []
    for (samples, steps, seconds), block in cells.groupby(stats.budget_of(cells), sort=False):
        named.append(((steps is None, samples or 0), _budget_name(samples, steps, seconds), block))
    return [(name, block) for _, name, block in sorted(named, key=lambda item: item[0])]


def batch_sizes(summary: pd.DataFrame, trials: pd.DataFrame, order: tuple[str, ...],
                experiment: str) -> Figure | str:
    """Test MAP@R against batch size of each loss at the margin best on validation at each batch size (seed mean,
    95% band), a line per loss and training budget (equal steps, equal samples: cpu-batch's two blocks), a column
    per dataset × protocol, baselines as lines, failed cells marked, the selected cell starred."""
    cells = summary[~summary.loss.isin(stats.BASELINES)]
    if cells.batch_size.nunique() < 2:
        return _single_batch_size(cells)
    panels = {panel: [(name, best) for name, block in _blocks(_in(cells, *panel))
                      if len(best := _best_per_batch_size(block))] for panel in _panels(cells)}
    panels = {panel: blocks for panel, blocks in panels.items() if blocks}
    if not panels:
        return _no_selection(summary)
    every = pd.concat([best for blocks in panels.values() for _, best in blocks])
    colours, losses = palette(order, list(every.loss)), _ordered(every.loss, order)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 2.4, 4.0), squeeze=False,
                                layout="constrained")
    drawn, kinds = Drawn(), set()
    for ax, ((dataset, protocol), blocks) in zip(axes[0], panels.items(), strict=True):
        values, margins = [], []
        for number, (name, rows) in enumerate(blocks):
            values += _cell_lines(ax, rows, "batch_size", losses, colours, drawn,
                                  (number, name if len(blocks) > 1 else ""))
            sizes = sorted(rows.batch_size.unique())
            margins.append(f"{name + ': ' if len(blocks) > 1 else ''}B = {'/'.join(f'{s:g}' for s in sizes)}: "
                           f"{_margins_per_size(rows, sizes, losses)}")
            kinds.add(name.split(" (")[0])
        _zoom(ax, values, _levels(summary, dataset, protocol))
        _batch_axis(ax, sorted(_in(cells, dataset, protocol).batch_size.unique()))
        ax.set_title(_wrapped(f"{dataset}, {protocol} classes; {_budget(_in(trials, dataset, protocol))}",
                              "margin best on validation at " + "; ".join(margins)), fontsize="small")
        ax.set_ylabel(METRIC_LABEL)
        if len(blocks) > 1:  # the line styles (top left: the baselines off the axis are named bottom right)
            ax.legend(handles=[Line2D([], [], color="0.3", markersize=4, label=name, **_block_style(number))
                               for number, (name, _) in enumerate(blocks)], fontsize="x-small", loc="upper left",
                      handlelength=3)
    question = {("equal samples",): "at equal samples (fewer steps at larger B)?",
                ("equal steps",): "at equal steps (more samples at larger B)?"}.get(
        tuple(kinds), "at equal steps (more samples at larger B) and at equal samples?")
    _title(figure, experiment, f"Does the batch size matter, {question}",
           "Test MAP@R of each loss at each batch size, at the margin best on validation there"
           + (" within each budget" if len(kinds) > 1 else "")
           + f"; {_spread(drawn.counts)}; "
           + ("★ each loss's validation-selected cell." if "selected" in drawn.marks else f"{_no_selection(summary)}."))
    _legend(figure, colours, losses, list(summary.loss.unique()), drawn.marks)
    return figure


def _on_subsets(points: pd.DataFrame) -> pd.Series:
    """Per checkpoint row: whether its test metrics come from test subsets, i.e. fewer test queries or gallery
    images than its trial's largest evaluation (the last checkpoint's whole test set)."""
    flags = pd.Series(False, index=points.index)
    for column in ("test_queries_size", "test_gallery_size"):
        if column in points:
            flags |= points[column] < points.groupby("trial_id")[column].transform("max")
    return flags


def _eval_sizes(points: pd.DataFrame, subset: pd.Series) -> str:
    """The test queries and gallery of the subset and the whole-set checkpoints of `points`, in words."""
    if "test_queries_size" not in points or points.test_queries_size.isna().all():
        return "test sizes not recorded"

    def sizes(rows: pd.DataFrame) -> str:
        return " or ".join(f"{short(q)}/{short(g)}" for q, g in sorted(set(zip(
            rows.test_queries_size, rows.test_gallery_size, strict=True))))

    whole = sizes(points[~subset])
    if not subset.any():
        return f"test queries/gallery {whole}"
    return f"test queries/gallery: subset {sizes(points[subset])} before the last checkpoint, whole set {whole} at it"


def _curve(ax: Axes, points: pd.DataFrame, x: str, colour: Any, label: str, drawn: Drawn) -> list[float]:
    """One cell's test MAP@R over training (points: its checkpoint rows): the seed mean per checkpoint, test-subset
    checkpoints open and dashed, whole-set ones filled, the two never joined; the values drawn."""
    subset = _on_subsets(points)
    rows = [(group[x].mean(), stats.t_interval(group.map_at_r), bool(subset[group.index].any()))
            for _, group in sorted(points.groupby("checkpoint"), key=lambda item: item[0])]
    part = [(at, interval) for at, interval, on_subset in rows if on_subset]
    whole = [(at, interval) for at, interval, on_subset in rows if not on_subset]
    values: list[float] = []
    if part:
        values += _band(ax, [at for at, _ in part], [i for _, i in part], colour, f"{label}, test subsets", True)
        drawn.marks |= {"subset", "whole"}
    if len(whole) == 1:
        values += _point(ax, whole[0][0], whole[0][1], colour, label)
    elif whole:
        values += _band(ax, [at for at, _ in whole], [i for _, i in whole], colour, label)
    drawn.counts += [interval.n for _, interval, _ in rows]
    return values


def _last(ax: Axes, cells: pd.DataFrame, losses: list[str], colours: dict[str, Any]) -> None:
    """The selected cells' final test MAP@R (whole test set; seed mean with its 95% t error bar) side by side, one
    x position per loss of `losses`, the y-axis zoomed on them."""
    values: list[float] = []
    for position, loss in enumerate(losses):
        for cell in cells[cells.loss == loss].itertuples():
            values += _point(ax, position, stats.Interval(cell.map_at_r_mean, cell.map_at_r_std, cell.map_at_r_ci95,
                                                          cell.n_valid), colours[loss], loss)
    _zoom(ax, values, {})
    ax.set_xlim(-0.6, len(losses) - 0.4)
    ax.set_xticks([])
    ax.set_title("last checkpoint,\nwhole test set", fontsize="small")
    ax.set_xlabel("loss (colour)")


def curves(summary: pd.DataFrame, checkpoints: pd.DataFrame, x: str, order: tuple[str, ...],
           experiment: str) -> Figure | str:
    """Test MAP@R over training (x = samples_seen or train_seconds) of each loss's selected cell: the seed mean
    at each checkpoint with its 95% band, baselines as lines, and beside it the last checkpoint's values zoomed;
    a pair of panels per dataset × protocol."""
    chosen = summary[summary.selected]
    if x not in checkpoints or checkpoints[x].isna().all():
        return f"the records predate {x}"
    if chosen.empty:
        return _every_cell_curves(summary, checkpoints, x, experiment) if summary.mixed_budget.any() \
            else _no_selection(summary)
    valid = checkpoints[checkpoints.status.isin(stats.IN_MEAN)]
    panels = _panels(chosen)
    colours, losses = palette(order, list(chosen.loss)), _ordered(chosen.loss, order)
    figure, axes = plt.subplots(1, 2 * len(panels), figsize=(6.0 * len(panels) + 2.8, 4.0), squeeze=False,
                                layout="constrained", width_ratios=[1, 0.25] * len(panels))
    drawn = Drawn()
    for index, (dataset, protocol) in enumerate(panels):
        ax = axes[0][2 * index]
        values: list[float] = []
        shown: list[pd.DataFrame] = []
        for cell in _in(chosen, dataset, protocol).itertuples():
            points = _in(valid, dataset, protocol)
            points = points[stats.in_cell(points, cell)]
            values += _curve(ax, points, x, colours[cell.loss],
                             f"{cell.loss} ({stats.setting_text(cell.loss, cell.margin, cell.batch_size)})", drawn)
            shown.append(points)
        _zoom(ax, values, _levels(summary, dataset, protocol))
        every = pd.concat(shown)
        settings = ", ".join(f"{row.loss} {stats.setting_text(row.loss, row.margin, row.batch_size, ' ')}"
                             for row in _in(chosen, dataset, protocol).itertuples())
        ax.set_title(_wrapped(f"{dataset}, {protocol} classes; {_budget(stats.final_rows(every))}",
                              f"selected: {settings}", _eval_sizes(every, _on_subsets(every))), fontsize="small")
        ax.set(xlabel=CURVES[x][1], ylabel=METRIC_LABEL)
        _few_ticks(ax.xaxis)
        _last(axes[0][2 * index + 1], _in(chosen, dataset, protocol), losses, colours)
    _title(figure, experiment, CURVES[x][0],
           f"Test MAP@R over training of each loss's validation-selected cell; {_spread(drawn.counts)}.")
    _legend(figure, colours, losses, list(summary.loss.unique()), drawn.marks)
    return figure


MAX_CELL_CURVES = 12  # a grid without a selection draws every cell's curve, up to this many per panel


def _every_cell_curves(summary: pd.DataFrame, checkpoints: pd.DataFrame, x: str, experiment: str) -> Figure | str:
    """Test MAP@R over training of every cell of a grid whose cells differ in budget (cpu-batch: no cell is
    selected), a colour per cell (labelled by its setting and budget block), a panel per dataset × protocol."""
    cells = summary[~summary.loss.isin(stats.BASELINES) & summary.map_at_r_mean.notna()]
    panels = _panels(cells)
    crowded = [f"{d}/{p}" for d, p in panels if len(_in(cells, d, p)) > MAX_CELL_CURVES]
    if not panels:
        return _no_selection(summary)
    if crowded:
        return f"{_no_selection(summary)}; more than {MAX_CELL_CURVES} cells to draw in {', '.join(crowded)}"
    valid = checkpoints[checkpoints.status.isin(stats.IN_MEAN)]
    figure, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels) + 3.4, 4.4), squeeze=False,
                                layout="constrained")
    drawn = Drawn()
    for ax, (dataset, protocol) in zip(axes[0], panels, strict=True):
        values: list[float] = []
        shown: list[pd.DataFrame] = []
        named = [(name, row) for name, block in _blocks(_in(cells, dataset, protocol))
                 for row in block.sort_values(["loss", "batch_size", "margin"]).itertuples()]
        labels = [f"{cell.loss} {stats.setting_text(cell.loss, cell.margin, cell.batch_size, ' ')}, {name}"
                  for name, cell in named]
        for index, ((_, cell), label) in enumerate(zip(named, labels, strict=True)):
            points = _in(valid, dataset, protocol)
            points = points[(points.experiment == cell.experiment) & stats.in_cell(points, cell)]
            values += _curve(ax, points, x, TAB10[index % len(TAB10)], label, drawn)
            shown.append(points)
        _zoom(ax, values, _levels(summary, dataset, protocol))
        every = pd.concat(shown)
        ax.set_title(_wrapped(f"{dataset}, {protocol} classes; {_budget(stats.final_rows(every))}",
                              _eval_sizes(every, _on_subsets(every))), fontsize="small")
        ax.set(xlabel=CURVES[x][1], ylabel=METRIC_LABEL)
        _few_ticks(ax.xaxis)
        handles = [Line2D([], [], color=TAB10[index % len(TAB10)], marker="o", markersize=4, label=label)
                   for index, label in enumerate(labels)]
        handles += [Line2D([], [], **BASELINE_STYLE[name]) for name in stats.BASELINES if name in set(summary.loss)]
        handles += [Line2D([], [], **MARKS[mark]) for mark in ("subset", "whole") if mark in drawn.marks]
        ax.legend(handles=handles, fontsize="x-small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    _title(figure, experiment, "How does each cell learn over training?",
           "Test MAP@R over training of every cell (none is selected: the cells differ in budget); "
           f"{_spread(drawn.counts)}.")
    return figure


def systems(summary: pd.DataFrame, final: pd.DataFrame, metric: str, label: str, order: tuple[str, ...],
            experiment: str) -> Figure | str:
    """A systems metric (throughput or peak memory) of the experiment's own finished trials against batch size: mean
    over margins and seeds with its 95% band, a column per dataset × protocol."""
    valid = final[(final.kind == "trial") & final.status.isin(stats.IN_MEAN) & final[metric].notna()]
    if valid.empty:
        return f"no finished trial has a finite {metric}"
    if valid.batch_size.nunique() < 2:
        return _single_batch_size(valid)
    panels = _panels(summary)
    colours, losses = palette(order, list(valid.loss)), _ordered(valid.loss, order)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels) + 2.2, 3.6), squeeze=False,
                                layout="constrained")
    drawn = Drawn()
    for ax, (dataset, protocol) in zip(axes[0], panels, strict=True):
        panel = _in(valid, dataset, protocol)
        for loss in losses:
            groups = sorted(panel[panel.loss == loss].groupby("batch_size"), key=lambda item: item[0])
            if groups:
                intervals = [stats.t_interval(g[metric]) for _, g in groups]
                _band(ax, [size for size, _ in groups], intervals, colours[loss], loss)
                drawn.counts += [i.n for i in intervals]
        _batch_axis(ax, sorted(panel.batch_size.unique()))
        ax.set_title(f"{dataset}, {protocol} classes", fontsize="medium")
        ax.set_ylabel(label)
    where = "; ".join(sorted({str(v) for v in valid.get("provenance_hardware", pd.Series(dtype=object)).dropna()}))
    _title(figure, experiment, SYSTEMS_QUESTION[metric],
           f"{label.split(' (')[0].capitalize()} measured in this experiment's own trials, while other trials "
           f"shared the machine ({where or 'hardware not recorded'}); over margins and seeds, "
           f"{_spread(drawn.counts, 'trial')}.")
    _legend(figure, colours, losses, [], set())
    return figure


def isolated_systems(rows: pd.DataFrame, datasets: list[str], metric: str, label: str, order: tuple[str, ...],
                     experiment: str, caption: str) -> Figure | str:
    """A systems metric of the isolated step benchmark (rows: its measured points without torch.compile, numeric)
    against batch size, one line per loss (dashed for a second precision), a column per dataset of the experiment;
    the title says that the numbers come from that benchmark's run (`caption`), not from the experiment's trials."""
    valid = rows[rows.dataset.isin(datasets) & rows[metric].notna()]
    if valid.empty:
        return f"the isolated step benchmark has no {metric} for {', '.join(datasets)}"
    if valid.batch_size.nunique() < 2:
        return f"a single batch size ({', '.join(f'{v:g}' for v in sorted(valid.batch_size.unique()))}) measured"
    panels = sorted(valid.dataset.unique())
    precisions = sorted(valid.precision.unique())
    styles = {p: ["-", "--", ":", "-."][i % 4] for i, p in enumerate(precisions)}
    colours, losses = palette(order, list(valid.loss)), _ordered(valid.loss, order)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels) + 2.2, 3.8), squeeze=False,
                                layout="constrained")
    for ax, dataset in zip(axes[0], panels, strict=True):
        panel = valid[valid.dataset == dataset]
        for loss in losses:
            for precision in precisions:
                line = panel[(panel.loss == loss) & (panel.precision == precision)].sort_values("batch_size")
                if not line.empty:
                    ax.plot(line.batch_size, line[metric], marker="o", markersize=4, color=colours[loss],
                            linestyle=styles[precision], label=f"{loss}, {precision}")
        _batch_axis(ax, sorted(panel.batch_size.unique()))
        ax.set_title(f"{dataset}: step benchmark", fontsize="medium")
        ax.set_ylabel(label)
    _title(figure, experiment, SYSTEMS_QUESTION[metric],
           f"NOT measured in this experiment's trials: {label.split(' (')[0]} of the training step in isolation, "
           f"from the step benchmark's run ({caption}); one measurement per point, no band.")
    _legend(figure, colours, losses, [], set())
    if len(precisions) > 1:
        figure.legend(handles=[Line2D([], [], color="0.3", linestyle=styles[p], label=p) for p in precisions],
                      loc="outside lower center", fontsize="small", ncols=len(precisions))
    return figure


def fractions(summary: pd.DataFrame, checkpoints: pd.DataFrame, order: tuple[str, ...],
              experiment: str) -> Figure | str:
    """Easy / semi-hard / hard triplet fractions of the last training batch over training, in each loss's
    selected cell (seed mean, 95% band): a row per dataset × protocol, a column per loss."""
    chosen = summary[summary.selected]
    if chosen.empty:
        return _no_selection(summary)
    valid = checkpoints[checkpoints.status.isin(stats.IN_MEAN)]
    panels, losses = _panels(chosen), _ordered(chosen.loss, order)
    figure, axes = plt.subplots(len(panels), len(losses), figsize=(3.4 * len(losses) + 1.8, 3.0 * len(panels)),
                                squeeze=False, sharey=True, layout="constrained")
    drawn = Drawn()
    for row_index, (dataset, protocol) in enumerate(panels):
        budget = _budget(stats.final_rows(_in(valid, dataset, protocol)))
        for column, loss in enumerate(losses):
            ax = axes[row_index][column]
            cell = _in(chosen, dataset, protocol)
            cell = cell[cell.loss == loss]
            if cell.empty:
                ax.set_title(f"{dataset}, {protocol}: {loss}", fontsize="small")
                ax.text(0.5, 0.5, "no selected cell\n(no eligible cell)", ha="center", va="center",
                        transform=ax.transAxes, fontsize="small", color="0.3")
                ax.axis("off")
                continue
            cell = cell.iloc[0]
            points = _in(valid, dataset, protocol)
            points = points[stats.in_cell(points, cell)]
            by_checkpoint = sorted(points.groupby("checkpoint"), key=lambda item: item[0])
            for name, (label, colour) in FRACTION_COLOURS.items():
                intervals = [stats.t_interval(g[name]) for _, g in by_checkpoint]
                _band(ax, [g.samples_seen.mean() for _, g in by_checkpoint], intervals, colour, label)
                drawn.counts += [i.n for i in intervals]
            ax.set_title(f"{dataset}, {protocol}: {loss}\nselected "
                         f"{stats.setting_text(loss, cell.margin, cell.batch_size)}; {budget}", fontsize="small")
            ax.set(xlabel=SAMPLES_LABEL, ylabel="fraction of triplets")
            _few_ticks(ax.xaxis)
    handles = [Line2D([], [], color=colour, marker="o", label=label) for label, colour in FRACTION_COLOURS.values()]
    figure.legend(handles=handles, loc="outside right center", fontsize="small")
    _title(figure, experiment, "Which triplets does each mining strategy train on?",
           f"Easy / semi-hard / hard shares of the last training batch's triplets at each checkpoint, "
           f"validation-selected cells; {_spread(drawn.counts)}.")
    return figure


def class_names(dataset: str, labels: list[int]) -> list[str]:
    """The names of a data set's class labels (CLASS_NAMES), "class <label>" where it has none."""
    names = CLASS_NAMES.get(dataset, ())
    return [names[label] if 0 <= label < len(names) else f"class {label}" for label in labels]


def _embedded(cell: Any, final: pd.DataFrame, notes: list[str]) -> tuple[np.ndarray, np.ndarray, Any] | None:
    """The t-SNE of ≤ TSNE_POINTS stored test embeddings of a selected cell's lowest stored seed, their labels and
    that seed; None (with a note) when there are none."""
    stored = final[stats.in_cell(final, cell) & final.embeddings.notna()].sort_values("seed")
    where = f"t-SNE panel {cell.dataset} {cell.protocol} {cell.loss}"
    if stored.empty:
        notes.append(f"{where}: its selected cell stored no embeddings")
        return None
    try:
        with np.load(stored.embeddings.iloc[0]) as npz:
            points, labels = npz["embeddings"][:TSNE_POINTS].astype(np.float64), npz["labels"][:TSNE_POINTS]
    except (OSError, KeyError, ValueError) as err:
        notes.append(f"{where}: {stored.embeddings.iloc[0]} unreadable ({err})")
        return None
    if len(points) < 5:
        notes.append(f"{where}: only {len(points)} stored embeddings")
        return None
    embedding = TSNE(perplexity=min(30.0, (len(points) - 1) / 3), init="pca", method="exact",
                     random_state=0).fit_transform(points)
    return embedding, labels, stored.seed.iloc[0]


def tsne(summary: pd.DataFrame, final: pd.DataFrame, order: tuple[str, ...], experiment: str,
         notes: list[str]) -> Figure | str:
    """2-D t-SNE of ≤ TSNE_POINTS stored test embeddings of each selected cell's lowest stored seed, coloured by
    class: a row per dataset × protocol, a column per loss and a last column with that row's class legend (its
    class names). Exact method, PCA init, random_state 0, perplexity min(30, (n - 1) / 3)."""
    chosen = summary[summary.selected]
    if chosen.empty:
        return _no_selection(summary)
    chosen = chosen.assign(_rank=chosen.loss.map(lambda loss: stats.loss_rank(loss, order)))
    rows: dict[tuple[str, str], list[tuple[Any, np.ndarray, np.ndarray, Any]]] = {}
    for cell in chosen.sort_values(["dataset", "protocol", "_rank"]).itertuples():
        made = _embedded(cell, final, notes)
        if made is not None:
            rows.setdefault((cell.dataset, cell.protocol), []).append((cell, *made))
    if not rows:
        return "no selected cell has stored test embeddings"
    columns = max(len(panels) for panels in rows.values())
    figure, axes = plt.subplots(len(rows), columns + 1, figsize=(3.4 * columns + 1.8, 3.4 * len(rows)),
                                squeeze=False, layout="constrained", width_ratios=[1] * columns + [0.4])
    for axes_row, ((dataset, _), panels) in zip(axes, rows.items(), strict=True):
        classes = sorted({int(label) for _, _, labels, _ in panels for label in labels})
        colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20").colors
        for ax, (cell, xy, labels, seed) in zip(axes_row, panels, strict=False):
            for index, label in enumerate(classes):
                mask = labels == label
                ax.scatter(xy[mask, 0], xy[mask, 1], s=5, linewidths=0, color=colours[index % len(colours)])
            ax.set(title=f"{cell.dataset}, {cell.protocol}: {cell.loss}\nselected "
                         f"{stats.setting_text(cell.loss, cell.margin, cell.batch_size)}, seed {seed:g}",
                   xticks=[], yticks=[],
                   xlabel="t-SNE 1 (no unit)", ylabel="t-SNE 2 (no unit)")
            ax.title.set_fontsize("small")
        for ax in axes_row[len(panels):]:
            ax.axis("off")
        handles = [Line2D([], [], linestyle="none", marker="o", color=colours[i % len(colours)], label=name)
                   for i, name in enumerate(class_names(dataset, classes))]
        axes_row[-1].legend(handles=handles, loc="center left", fontsize="small", title=f"{dataset} test class")
    _title(figure, experiment, "Do the selected cells' test embeddings separate the classes?",
           f"t-SNE of ≤ {TSNE_POINTS} test embeddings of each loss's validation-selected cell.")
    return figure


def make_plots(checkpoints: pd.DataFrame, summary: pd.DataFrame, order: tuple[str, ...], citation: str,
               isolated: tuple[pd.DataFrame, str] | None = None) -> dict[str, Figure | str]:
    """Every figure of one experiment (checkpoints and summary rows of that experiment only), by file stem.

    `citation` (stats.citation: seeds, citable or not) follows the experiment's name in every title. `isolated` is
    the step benchmark's points (numeric columns) and a caption naming its hardware; with it the throughput and
    memory plots show it for the experiment's datasets, else the grid's own observations."""
    experiment = f"{summary.experiment.iloc[0]} ({citation})"
    final = stats.final_rows(checkpoints)
    trials = final[final.kind == "trial"]
    notes: list[str] = []
    figures: dict[str, Figure | str] = {
        "map_vs_margin": margins(summary, trials, order, experiment),
        "map_vs_batch_size": batch_sizes(summary, trials, order, experiment),
        "map_vs_samples_seen": curves(summary, checkpoints[checkpoints.kind == "trial"], "samples_seen", order,
                                      experiment),
        "map_vs_train_seconds": curves(summary, checkpoints[checkpoints.kind == "trial"], "train_seconds", order,
                                       experiment),
        **{name: (systems(summary, final, metric, label, order, experiment) if isolated is None else
                  isolated_systems(isolated[0], sorted(trials.dataset.unique()), metric, label, order, experiment,
                                   isolated[1]))
           for name, metric, label in (("throughput_vs_batch_size", "samples_per_second", "throughput (images/s)"),
                                       ("peak_memory_vs_batch_size", "peak_memory_mib", "peak training memory (MiB)"))},
        "triplet_fractions": fractions(summary, checkpoints[checkpoints.kind == "trial"], order, experiment),
        "tsne": tsne(summary, trials, order, experiment, notes),
    }
    for index, note in enumerate(notes):
        figures[f"tsne panel {index + 1}"] = note
    return figures


def save(figures: dict[str, Figure | str], folder: Path) -> list[Path]:
    """Write each Figure as folder/<name>.png (no date or software metadata) and close it; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in figures.items():
        if isinstance(figure, str):
            continue
        written.append(write_atomic(folder / f"{name}.png",
                                    lambda file, figure=figure: figure.savefig(file, format="png", dpi=DPI,
                                                                               metadata={"Software": None})))
        plt.close(figure)
    return written
