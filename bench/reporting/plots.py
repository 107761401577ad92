"""The report's figures: one fixed colour per loss, seed means with 95% Student-t bands, baselines as lines.

`make_plots` returns {name: Figure or the reason it cannot be made} for one experiment, so that tests can read
the figures before `save` writes them. Every figure is deterministic: fixed loss order and palette, t-SNE with
a fixed seed and PCA init, and PNGs saved without a Software/date entry, so the same records give the same bytes.
Time axes are training seconds (evaluation and data loading excluded), never elapsed seconds.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from bench.engine.files import write_atomic  # noqa: E402
from bench.reporting import stats  # noqa: E402

TAB10 = plt.get_cmap("tab10").colors
BASELINE_STYLE = {"pixels": {"color": "0.45", "linestyle": "--", "label": "baseline: raw pixels"},
                  "untrained": {"color": "black", "linestyle": ":", "label": "baseline: untrained network"}}
# a cell with at least one seed of this status gets this marker (at its mean, or at the panel's foot without one)
FAILURE_MARKERS = {"collapsed": "v", "diverged": "X", "OOM": "s", "error": "P"}
FRACTION_COLOURS = {"fraction_easy": ("easy", "tab:green"), "fraction_semihard": ("semi-hard", "tab:orange"),
                    "fraction_hard": ("hard", "tab:red")}
FACET = {"margin": "margin", "batch_size": "batch"}
WORDS = {"margin": "margin m", "batch_size": "batch size B (images)"}
METRIC_LABEL = "test MAP@R (fraction, 0 to 1)"
TSNE_POINTS = 500
DPI = 100


def palette(order: tuple[str, ...], losses: list[str]) -> dict[str, Any]:
    """loss -> colour: the i-th loss of `order` (the registry) always gets tab10's i-th colour; others after it."""
    extra = sorted(set(losses) - set(order))
    return {loss: TAB10[i % len(TAB10)] for i, loss in enumerate([*order, *extra])}


def _budget(trials: pd.DataFrame) -> str:
    samples = [f"{v:g}" for v in sorted(set(trials.budget_samples.dropna().astype(float)))]
    seconds = [f"{v:g}" for v in sorted(set(trials.budget_seconds.dropna().astype(float)))]
    return (f"budget {'/'.join(samples) or '?'} samples" + (f" or {'/'.join(seconds)} s" if seconds else ""))


def _panels(summary: pd.DataFrame) -> list[tuple[str, str]]:
    trials = summary[~summary.loss.isin(stats.BASELINES)]
    return sorted(set(zip(trials.dataset, trials.protocol, strict=True)))


def _baselines(ax: Axes, summary: pd.DataFrame, dataset: str, protocol: str) -> None:
    for row in summary[(summary.dataset == dataset) & (summary.protocol == protocol)
                       & summary.loss.isin(stats.BASELINES)].itertuples():
        if not math.isnan(row.map_at_r_mean):
            ax.axhline(row.map_at_r_mean, linewidth=1.2, **BASELINE_STYLE[row.loss])


def _band(ax: Axes, x: list[float], intervals: list[stats.Interval], colour: Any, label: str) -> None:
    """The seed means as a line with markers and, where n ≥ 2, the 95% t band."""
    mean = np.array([i.mean for i in intervals])
    ci = np.array([i.ci95 for i in intervals])
    ax.plot(x, mean, marker="o", markersize=4, color=colour, label=label)
    if np.isfinite(ci).any():
        ax.fill_between(x, mean - ci, mean + ci, color=colour, alpha=0.2, linewidth=0)


def _failures(ax: Axes, cells: pd.DataFrame, x: str, colour: Any) -> set[str]:
    """Markers of the failed seeds of cells; the statuses marked."""
    marked = set()
    foot = ax.get_xaxis_transform()
    for status, marker in FAILURE_MARKERS.items():
        hit = cells[cells[stats.STATUS_COLUMNS[status]] > 0]
        for row in hit.itertuples():
            mean = row.map_at_r_mean
            if math.isnan(mean):
                ax.scatter([getattr(row, x)], [0.03], marker=marker, color=colour, s=40, transform=foot, zorder=3)
            else:
                ax.scatter([getattr(row, x)], [mean], marker=marker, facecolor="none", edgecolor=colour, s=70,
                           zorder=3)
            marked.add(status)
    return marked


def _legend(figure: Figure, colours: dict[str, Any], losses: list[str], baselines: list[str],
            marked: set[str]) -> None:
    handles = [Line2D([], [], color=colours[loss], marker="o", label=loss) for loss in losses]
    handles += [Line2D([], [], **BASELINE_STYLE[name]) for name in stats.BASELINES if name in baselines]
    handles += [Line2D([], [], linestyle="none", marker=marker, color="0.3", markerfacecolor="none",
                       label=f"cell with a {status} seed") for status, marker in FAILURE_MARKERS.items()
                if status in marked]
    figure.legend(handles=handles, loc="outside right center", fontsize="small")


def _title(figure: Figure, text: str) -> None:
    """A figure title wrapped to the figure's width."""
    width = max(40, int(figure.get_figwidth() * 11))
    figure.suptitle("\n".join(textwrap.wrap(text, width)), fontsize="medium")


def _ordered(losses: Any, order: tuple[str, ...]) -> list[str]:
    return sorted(set(losses) - set(stats.BASELINES), key=lambda loss: stats.loss_rank(loss, order))


def versus(summary: pd.DataFrame, trials: pd.DataFrame, x: str, facet: str, order: tuple[str, ...],
           experiment: str) -> Figure | str:
    """Test MAP@R (seed mean, 95% band) against `x` (margin or batch_size), a row per value of `facet`,
    a column per dataset × protocol (each its own x-axis), baselines as lines, failed cells marked."""
    cells = summary[~summary.loss.isin(stats.BASELINES)]
    if cells.map_at_r_mean.notna().sum() == 0:
        return "no cell has a finite test MAP@R"
    if cells[x].nunique() < 2:
        return f"a single {x.replace('_', ' ')} ({', '.join(f'{v:g}' for v in sorted(cells[x].unique()))}) in the grid"
    panels, facets = _panels(summary), sorted(cells[facet].unique())
    colours, losses = palette(order, list(cells.loss)), _ordered(cells.loss, order)
    figure, axes = plt.subplots(len(facets), len(panels), figsize=(4.2 * len(panels) + 2.2, 3.2 * len(facets)),
                                squeeze=False, sharex="col", layout="constrained")
    marked: set[str] = set()
    for column, (dataset, protocol) in enumerate(panels):
        for row_index, value in enumerate(facets):
            ax = axes[row_index][column]
            panel = cells[(cells.dataset == dataset) & (cells.protocol == protocol) & (cells[facet] == value)]
            for loss in losses:
                line = panel[panel.loss == loss].sort_values(x)
                finite = line[line.map_at_r_mean.notna()]
                if len(finite):
                    _band(ax, list(finite[x]), [stats.Interval(r.map_at_r_mean, r.map_at_r_std, r.map_at_r_ci95,
                                                               r.n_valid) for r in finite.itertuples()],
                          colours[loss], loss)
                marked |= _failures(ax, line, x, colours[loss])
            _baselines(ax, summary, dataset, protocol)
            ax.set_title(f"{dataset}, {protocol} classes, {FACET[facet]} {value:g}", fontsize="medium")
            ax.set_xlabel(WORDS[x])
            ax.set_ylabel(METRIC_LABEL)
            if x == "batch_size":
                sizes = sorted(panel[x].unique())
                ax.set_xscale("log", base=2)
                ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
                ax.minorticks_off()
    _title(figure, f"{experiment}: test MAP@R vs {WORDS[x].split(' (')[0]}, every cell (no selection); mean over "
                    f"seeds, 95% t band; {_budget(trials)}")
    _legend(figure, colours, losses, list(summary.loss.unique()), marked)
    return figure


def curves(summary: pd.DataFrame, checkpoints: pd.DataFrame, x: str, order: tuple[str, ...],
           experiment: str) -> Figure | str:
    """Test MAP@R over training (x = samples_seen or train_seconds) of each loss's selected cell: the seed mean
    at each checkpoint with its 95% band, a column per dataset × protocol; baselines as lines."""
    chosen = summary[summary.selected]
    if chosen.empty:
        return ("selection not possible: no validation metrics" if not stats.has_validation(summary).any()
                else "no loss has an eligible cell")
    if x not in checkpoints or checkpoints[x].isna().all():
        return f"the records predate {x}"
    valid = checkpoints[checkpoints.status.isin(stats.IN_MEAN)]
    panels = sorted(set(zip(chosen.dataset, chosen.protocol, strict=True)))
    colours, losses = palette(order, list(chosen.loss)), _ordered(chosen.loss, order)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels) + 2.2, 3.6), squeeze=False,
                                layout="constrained")
    for ax, (dataset, protocol) in zip(axes[0], panels, strict=True):
        for cell in chosen[(chosen.dataset == dataset) & (chosen.protocol == protocol)].itertuples():
            points = valid[(valid.dataset == dataset) & (valid.protocol == protocol) & (valid.loss == cell.loss)
                           & (valid.margin == cell.margin) & (valid.batch_size == cell.batch_size)]
            by_checkpoint = sorted(points.groupby("checkpoint"), key=lambda item: item[0])
            _band(ax, [group[x].mean() for _, group in by_checkpoint],
                  [stats.t_interval(group.map_at_r) for _, group in by_checkpoint], colours[cell.loss],
                  f"{cell.loss} (m {cell.margin:g}, B {cell.batch_size:g})")
        _baselines(ax, summary, dataset, protocol)
        ax.set_title(f"{dataset}, {protocol} classes", fontsize="medium")
        ax.set_xlabel("training time (s, evaluation excluded)" if x == "train_seconds" else "samples seen (images)")
        ax.set_ylabel(METRIC_LABEL)
    _title(figure, f"{experiment}: test MAP@R over training, each loss's validation-selected cell; mean over seeds, "
                    f"95% t band; {_budget(checkpoints)}")
    _legend(figure, colours, losses, list(summary.loss.unique()), set())
    return figure


def systems(summary: pd.DataFrame, final: pd.DataFrame, metric: str, label: str, order: tuple[str, ...],
            experiment: str) -> Figure | str:
    """A systems metric (throughput or peak memory) of finished trials against batch size: mean over margins and
    seeds with its 95% band, a column per dataset × protocol."""
    valid = final[(final.kind == "trial") & final.status.isin(stats.IN_MEAN) & final[metric].notna()]
    if valid.empty:
        return f"no finished trial has a finite {metric}"
    if valid.batch_size.nunique() < 2:
        return f"a single batch size ({', '.join(f'{v:g}' for v in sorted(valid.batch_size.unique()))}) in the grid"
    panels = _panels(summary)
    colours, losses = palette(order, list(valid.loss)), _ordered(valid.loss, order)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels) + 2.2, 3.6), squeeze=False,
                                layout="constrained")
    for ax, (dataset, protocol) in zip(axes[0], panels, strict=True):
        panel = valid[(valid.dataset == dataset) & (valid.protocol == protocol)]
        for loss in losses:
            groups = sorted(panel[panel.loss == loss].groupby("batch_size"), key=lambda item: item[0])
            if groups:
                _band(ax, [size for size, _ in groups], [stats.t_interval(g[metric]) for _, g in groups],
                      colours[loss], loss)
        sizes = sorted(panel.batch_size.unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
        ax.minorticks_off()
        ax.set_title(f"{dataset}, {protocol} classes", fontsize="medium")
        ax.set_xlabel("batch size B (images)")
        ax.set_ylabel(label)
    _title(figure, f"{experiment}: {label.split(' (')[0]} as observed in the grid (machine shared), mean over "
                    f"margins and seeds, 95% t band; {_budget(final)}")
    _legend(figure, colours, losses, [], set())
    return figure


def isolated_systems(rows: pd.DataFrame, datasets: list[str], metric: str, label: str, order: tuple[str, ...],
                     experiment: str, caption: str) -> Figure | str:
    """A systems metric of the isolated step benchmark (rows: its measured points without torch.compile, numeric)
    against batch size, one line per loss (dashed for a second precision), a column per dataset of the experiment."""
    valid = rows[rows.dataset.isin(datasets) & rows[metric].notna()]
    if valid.empty:
        return f"the isolated step benchmark has no {metric} for {', '.join(datasets)}"
    if valid.batch_size.nunique() < 2:
        return f"a single batch size ({', '.join(f'{v:g}' for v in sorted(valid.batch_size.unique()))}) measured"
    panels = sorted(valid.dataset.unique())
    precisions = sorted(valid.precision.unique())
    styles = {p: ["-", "--", ":", "-."][i % 4] for i, p in enumerate(precisions)}
    colours, losses = palette(order, list(valid.loss)), _ordered(valid.loss, order)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels) + 2.2, 3.6), squeeze=False,
                                layout="constrained")
    for ax, dataset in zip(axes[0], panels, strict=True):
        panel = valid[valid.dataset == dataset]
        for loss in losses:
            for precision in precisions:
                line = panel[(panel.loss == loss) & (panel.precision == precision)].sort_values("batch_size")
                if not line.empty:
                    ax.plot(line.batch_size, line[metric], marker="o", markersize=4, color=colours[loss],
                            linestyle=styles[precision])
        sizes = sorted(panel.batch_size.unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
        ax.minorticks_off()
        ax.set_title(dataset, fontsize="medium")
        ax.set_xlabel("batch size B (images)")
        ax.set_ylabel(label)
    _title(figure, f"{experiment}: {label.split(' (')[0]} of the training step in isolation ({caption})")
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
        return ("selection not possible: no validation metrics" if not stats.has_validation(summary).any()
                else "no loss has an eligible cell")
    valid = checkpoints[checkpoints.status.isin(stats.IN_MEAN)]
    panels, losses = sorted(set(zip(chosen.dataset, chosen.protocol, strict=True))), _ordered(chosen.loss, order)
    figure, axes = plt.subplots(len(panels), len(losses), figsize=(3.4 * len(losses) + 1.8, 3.0 * len(panels)),
                                squeeze=False, sharey=True, layout="constrained")
    for row_index, (dataset, protocol) in enumerate(panels):
        for column, loss in enumerate(losses):
            ax = axes[row_index][column]
            cell = chosen[(chosen.dataset == dataset) & (chosen.protocol == protocol) & (chosen.loss == loss)]
            ax.set_xlabel("samples seen (images)")
            ax.set_ylabel("fraction of triplets")
            if cell.empty:
                ax.set_title(f"{dataset}, {protocol}: {loss}\nno selected cell", fontsize="small")
                continue
            cell = cell.iloc[0]
            points = valid[(valid.dataset == dataset) & (valid.protocol == protocol) & (valid.loss == loss)
                           & (valid.margin == cell.margin) & (valid.batch_size == cell.batch_size)]
            by_checkpoint = sorted(points.groupby("checkpoint"), key=lambda item: item[0])
            for name, (label, colour) in FRACTION_COLOURS.items():
                _band(ax, [g.samples_seen.mean() for _, g in by_checkpoint],
                      [stats.t_interval(g[name]) for _, g in by_checkpoint], colour, label)
            ax.set_title(f"{dataset}, {protocol}: {loss}\nselected m {cell.margin:g}, B {cell.batch_size:g}",
                         fontsize="small")
    handles = [Line2D([], [], color=colour, marker="o", label=label) for label, colour in FRACTION_COLOURS.values()]
    figure.legend(handles=handles, loc="outside right center", fontsize="small")
    _title(figure, f"{experiment}: triplet fractions of the last training batch, validation-selected cells; "
                    f"{_budget(checkpoints)}")
    return figure


def tsne(summary: pd.DataFrame, final: pd.DataFrame, order: tuple[str, ...], experiment: str,
         notes: list[str]) -> Figure | str:
    """2-D t-SNE of ≤ TSNE_POINTS stored test embeddings of each selected cell's lowest stored seed, coloured by
    class with a class legend. Exact method, PCA init, random_state 0, perplexity min(30, (n - 1) / 3)."""
    chosen = summary[summary.selected]
    if chosen.empty:
        return ("selection not possible: no validation metrics" if not stats.has_validation(summary).any()
                else "no loss has an eligible cell")
    chosen = chosen.assign(_rank=chosen.loss.map(lambda loss: stats.loss_rank(loss, order)))
    panels = []
    for cell in chosen.sort_values(["dataset", "protocol", "_rank"]).itertuples():
        stored = final[(final.dataset == cell.dataset) & (final.protocol == cell.protocol) & (final.loss == cell.loss)
                       & (final.margin == cell.margin) & (final.batch_size == cell.batch_size)
                       & final.embeddings.notna()].sort_values("seed")
        where = f"t-SNE panel {cell.dataset} {cell.protocol} {cell.loss}"
        if stored.empty:
            notes.append(f"{where}: its selected cell stored no embeddings")
            continue
        try:
            with np.load(stored.embeddings.iloc[0]) as npz:
                points, labels = npz["embeddings"][:TSNE_POINTS].astype(np.float64), npz["labels"][:TSNE_POINTS]
        except (OSError, KeyError, ValueError) as err:
            notes.append(f"{where}: {stored.embeddings.iloc[0]} unreadable ({err})")
            continue
        if len(points) < 5:
            notes.append(f"{where}: only {len(points)} stored embeddings")
            continue
        embedding = TSNE(perplexity=min(30.0, (len(points) - 1) / 3), init="pca", method="exact",
                         random_state=0).fit_transform(points)
        panels.append((cell, embedding, labels, stored.seed.iloc[0]))
    if not panels:
        return "no selected cell has stored test embeddings"
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns + 1.6, 3.4 * rows), squeeze=False,
                                layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    classes = sorted({int(label) for _, _, labels, _ in panels for label in labels})
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20").colors
    for ax, (cell, xy, labels, seed) in zip(axes.flat, panels, strict=False):
        for index, label in enumerate(classes):
            mask = labels == label
            ax.scatter(xy[mask, 0], xy[mask, 1], s=5, linewidths=0, color=colours[index % len(colours)])
        ax.set(title=f"{cell.dataset}, {cell.protocol}: {cell.loss}\nselected m {cell.margin:g}, "
                     f"B {cell.batch_size:g}, seed {seed:g}", xticks=[], yticks=[],
               xlabel="t-SNE 1 (no unit)", ylabel="t-SNE 2 (no unit)")
        ax.title.set_fontsize("small")
    handles = [Line2D([], [], linestyle="none", marker="o", color=colours[i % len(colours)], label=f"class {label}")
               for i, label in enumerate(classes)]
    figure.legend(handles=handles, loc="outside right center", fontsize="small", title="test class")
    _title(figure, f"{experiment}: t-SNE of test embeddings (≤ {TSNE_POINTS}), validation-selected cells")
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
        "map_vs_margin": versus(summary, trials, "margin", "batch_size", order, experiment),
        "map_vs_batch_size": versus(summary, trials, "batch_size", "margin", order, experiment),
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
