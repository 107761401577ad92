"""Tables and plots from a results folder: `python -m bench.report --results DIR --reports DIR`.

RESULTS is either one experiment folder (grid.json and records/*.json, as bench.grid writes them) or a
folder of such experiments. It reads only those files: no training, no Ray. Under REPORTS it writes
- summary.csv: one row per experiment × dataset × loss × margin × batch size, sorted, fixed float format,
  so that the same records always give the same bytes;
- summary.md and summary.tex: per experiment, the provenance (from the records), the headline table,
  the margin check, the full grid and the non-ok trials; summary.md also shows the plots and names
  every plot it could not make, with the reason;
- plots/<experiment>/*.png.

Aggregation over seeds: a cell's mean and sample standard deviation (ddof=1; empty for a single
trial) are taken over the final checkpoint of its trials whose status is in IN_MEAN: "ok" and
"collapsed" (both trained to the end of the budget; a collapse is an outcome of the loss, so it counts
against it). Diverged, OOM and error trials have no final metrics: they are counted in the n_<status>
columns and listed, never dropped. The best margin per loss and dataset is the cell with the highest
mean k-NN accuracy (ties: smaller margin, then smaller batch); all cells of an experiment share its
budget. The margin check averages the first checkpoint's fraction_easy over every trial that reached
one (NaN, a batch without a valid triplet, is skipped) and flags it above EASY_LIMIT.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from bench.cli import Parser
from bench.config import DEFAULTS, METRICS, STATUSES

IN_MEAN = ("ok", "collapsed")
EASY_LIMIT = 0.5
TSNE_POINTS = 500
CELL = ["experiment", "dataset", "loss", "margin", "batch_size"]
TRIAL = ["experiment", "trial_id"]
# checkpoint metric -> column; the metric `loss` (training loss) would shadow the config key `loss` (its name)
NUMERIC = {m: "train_loss" if m == "loss" else m for m in METRICS if m != "status"}
REQUIRED = ("trial_id", "experiment", "preset", "config", "status", "history", "provenance")
PROVENANCE = ("date", "git_commit", "hardware", "torch", "ray", "command")
STATUS_COLUMNS = {status: f"n_{status.lower()}" for status in STATUSES}
AGGREGATES = {
    "knn_accuracy": ("mean", "std"),
    "precision_at_1": ("mean", "std"),
    "map_at_r": ("mean", "std"),
    "samples_per_second": ("mean",),
    "peak_memory_mib": ("mean",),
}
FRACTIONS = {"fraction_easy": "easy", "fraction_semihard": "semi-hard", "fraction_hard": "hard"}


class ReportError(ValueError):
    """A results folder that cannot be reported; the message is one line naming the folder or file."""


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


def _trial_rows(record: Any, path: Path, grid_trials: int) -> list[dict[str, Any]]:
    """One row per checkpoint (one row of NaN metrics when there is none) of a checked record."""
    if not isinstance(record, dict):
        raise ReportError(f"{path}: not a trial record (expected a JSON object)")
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    missing = [key for key in REQUIRED if key not in record]
    missing += [f"config.{key}" for key in ("dataset", "loss", "margin", "batch_size", "seed") if key not in config]
    if missing:
        raise ReportError(f"{path}: not a trial record (missing {', '.join(missing)})")
    if record["status"] not in STATUSES:
        raise ReportError(f"{path}: unknown status {record['status']!r}; valid: {', '.join(STATUSES)}")
    history = record["history"]
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        raise ReportError(f"{path}: history is not a list of checkpoints")
    for entry in history:
        lacking = [key for key in ("checkpoint", *NUMERIC) if key not in entry]
        if lacking:
            raise ReportError(f"{path}: a checkpoint lacks {', '.join(lacking)} (partial record?)")
    provenance = record["provenance"] if isinstance(record["provenance"], dict) else {}
    base = {
        **DEFAULTS,
        **config,
        **{key: record[key] for key in ("experiment", "preset", "trial_id", "status")},
        "reason": record.get("reason"),
        **{f"provenance_{key}": provenance.get(key) for key in PROVENANCE},
        "embeddings": str(path.parent / record["embeddings"]) if record.get("embeddings") else None,
        "grid_trials": grid_trials,
    }
    rows = [{**base, "checkpoint": entry["checkpoint"], **{NUMERIC[m]: entry[m] for m in NUMERIC}} for entry in history]
    return rows or [base]


def load_records(results_dir: Path | str) -> pd.DataFrame:
    """All trials as one row per checkpoint (config, status, provenance_*, metrics), sorted by trial and checkpoint.

    A trial without checkpoints has one row of NaN metrics; config keys a record lacks take bench.config's
    DEFAULTS; the metric `loss` is the column `train_loss`; `grid_trials` is the experiment's grid size.
    Raises ReportError on a missing or foreign folder, an experiment without records, or a bad record.
    """
    rows: list[dict[str, Any]] = []
    for folder in experiment_dirs(Path(results_dir)):
        grid = _read_json(folder / "grid.json") if (folder / "grid.json").is_file() else None
        axes = grid.get("axes") if isinstance(grid, dict) else None
        if not isinstance(axes, dict) or not all(isinstance(values, list) for values in axes.values()):
            raise ReportError(f"{folder / 'grid.json'}: missing or not a grid (expected an 'axes' object of lists)")
        paths = sorted((folder / "records").glob("*.json"))
        if not paths:
            raise ReportError(f"{folder / 'records'}: no trial records")
        grid_trials = math.prod(len(values) for values in axes.values())
        for path in paths:
            rows += _trial_rows(_read_json(path), path, grid_trials)
    frame = pd.DataFrame(rows)
    columns = ["checkpoint", *NUMERIC.values()]
    frame[columns] = frame.reindex(columns=columns).apply(pd.to_numeric, errors="coerce")
    return frame.sort_values([*TRIAL, "checkpoint"], na_position="first", ignore_index=True)


def final_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its last checkpoint (NaN metrics when it has none)."""
    return frame.groupby(TRIAL, sort=False).tail(1)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per CELL: n_seeds (all trials), n_valid (IN_MEAN trials), metric means/stds, status counts."""
    final = final_rows(frame)
    valid = final[final.status.isin(IN_MEAN)]
    stats = valid.groupby(CELL).agg(
        n_valid=("trial_id", "size"),
        **{f"{metric}_{how}": (metric, how) for metric, hows in AGGREGATES.items() for how in hows},
    )
    easy = frame.groupby(TRIAL, sort=False).head(1).groupby(CELL).fraction_easy.mean()
    counts = pd.crosstab([final[key] for key in CELL], final.status).reindex(columns=list(STATUSES), fill_value=0)
    summary = (
        final.groupby(CELL).size().rename("n_seeds").to_frame()
        .join(stats).join(easy.rename("fraction_easy_first_mean")).join(counts.rename(columns=STATUS_COLUMNS))
        .reset_index()
    )
    summary["n_valid"] = summary.n_valid.fillna(0).astype(int)
    return summary


def best_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """Per experiment × dataset × loss, the cell with the highest mean k-NN accuracy (ties: smaller margin, batch)."""
    ranked = summary[summary.n_valid > 0].sort_values(
        ["knn_accuracy_mean", "margin", "batch_size"], ascending=[False, True, True], kind="stable"
    )
    return ranked.groupby(["experiment", "dataset", "loss"]).head(1).sort_values(CELL, ignore_index=True)


# ---- text: blocks rendered as Markdown or LaTeX -------------------------------------------------

Block = tuple[str, Any]


def _number(value: float, digits: int = 4) -> str:
    return "–" if pd.isna(value) else f"{value:.{digits}f}"


def _statuses(row: pd.Series) -> str:
    counts = {status: getattr(row, column) for status, column in STATUS_COLUMNS.items()}
    return ", ".join(f"{n} {status}" for status, n in counts.items() if n)


def _knn(row: pd.Series, with_n: bool = False) -> str:
    """'mean ± std' (and '(n=…)') of a cell, or its failures ('2 OOM') when no trial counts into the mean."""
    if not row.n_valid:
        return _statuses(row)
    text = f"{_number(row.knn_accuracy_mean)} ± {_number(row.knn_accuracy_std)}"
    return f"{text} (n={row.n_valid})" if with_n else text


def _values(column: pd.Series) -> str:
    return ", ".join(sorted({str(value) for value in column.dropna()})) or "unknown"


def _budget(final: pd.DataFrame) -> str:
    parts = []
    for dataset, trials in final.groupby("dataset"):
        seconds = _values(trials.budget_seconds)
        limit = "no time limit" if seconds == "unknown" else f"{seconds} s"
        parts.append(f"{dataset}: {_values(trials.budget_samples)} samples, {limit}")
    return "; ".join(parts)


def _provenance(final: pd.DataFrame) -> list[tuple[str, str]]:
    dates = sorted(final.provenance_date.dropna().astype(str))
    counts = final.status.value_counts()
    return [
        ("date", " to ".join(dict.fromkeys([dates[0], dates[-1]])) if dates else "unknown"),
        ("git commit", _values(final.provenance_git_commit)),
        ("hardware", _values(final.provenance_hardware)),
        ("torch", _values(final.provenance_torch)),
        ("Ray", _values(final.provenance_ray.fillna("none (local backend)"))),
        ("preset", _values(final.preset)),
        ("budget", _budget(final)),
        ("seeds", f"{final.seed.nunique()} ({_values(final.seed)})"),
        ("trials", f"{len(final)} of {final.grid_trials.iloc[0]} in the grid: "
                   + ", ".join(f"{counts[s]} {s}" for s in STATUSES if s in counts)),
        ("command", _values(final.provenance_command)),
    ]


def _experiment_blocks(frame: pd.DataFrame, summary: pd.DataFrame, plots: list[Path], notes: list[str],
                       reports_dir: Path) -> list[Block]:
    """The provenance, headline, margin check, full grid, failures and plots of one experiment."""
    final = final_rows(frame)
    best = best_cells(summary).set_index(["dataset", "loss"])
    headline = []
    for (dataset, loss), cells in summary.groupby(["dataset", "loss"]):
        if (dataset, loss) in best.index:
            row = best.loc[(dataset, loss)]
            headline.append([dataset, loss, f"{row.margin:g}", str(row.batch_size), _knn(row, with_n=True),
                             _number(row.precision_at_1_mean), _number(row.map_at_r_mean), _statuses(row)])
        else:
            totals = cells[list(STATUS_COLUMNS.values())].sum()
            headline.append([dataset, loss, "–", "–", "no trial finished", "–", "–", _statuses(totals)])
    easy = frame.groupby(TRIAL, sort=False).head(1).groupby(["dataset", "loss", "margin"]).fraction_easy
    margin_check = [
        [dataset, loss, f"{margin:g}", _number(value, 3), str(n),
         "–" if pd.isna(value) else f"> {EASY_LIMIT:.0%} easy" if value > EASY_LIMIT else "ok"]
        for (dataset, loss, margin), value, n in zip(easy.mean().index, easy.mean(), easy.count(), strict=True)
    ]
    grid = [
        [row.dataset, row.loss, f"{row.margin:g}", str(row.batch_size), _knn(row), _number(row.precision_at_1_mean),
         _number(row.map_at_r_mean), _number(row.samples_per_second_mean, 0), _number(row.peak_memory_mib_mean, 0),
         _number(row.fraction_easy_first_mean, 3), _statuses(row)]
        for row in summary.itertuples()
    ]
    failed = final[final.status != "ok"].sort_values(["dataset", "loss", "margin", "batch_size", "seed"])
    failures = [[row.dataset, row.loss, f"{row.margin:g}", str(row.batch_size), str(row.seed), row.status,
                 str(row.reason or "")] for row in failed.itertuples()]
    blocks: list[Block] = [
        ("h2", f"Experiment {frame.experiment.iloc[0]}"),
        ("items", _provenance(final)),
        ("h3", "Headline: best margin per loss and dataset"),
        ("p", "Best cell by mean k-NN accuracy at the final checkpoint, all at the experiment's budget; "
              "mean ± sample std over seeds (n = trials in the mean)."),
        ("table", (["dataset", "loss", "margin", "batch", "k-NN accuracy", "P@1", "MAP@R", "trials"], headline)),
        ("h3", "Margin check"),
        ("p", f"Mean fraction of easy triplets at the first checkpoint, over batch sizes and seeds (n trials); "
              f"the source's rule of thumb is at most {EASY_LIMIT:.0%} easy at the start of training."),
        ("table", (["dataset", "loss", "margin", "easy at first checkpoint", "n", "check"], margin_check)),
        ("h3", "Full grid"),
        ("table", (["dataset", "loss", "margin", "batch", "k-NN accuracy", "P@1", "MAP@R", "samples/s", "peak MiB",
                    "easy at 1st", "trials"], grid)),
        ("h3", "Trials not ok"),
        ("table", (["dataset", "loss", "margin", "batch", "seed", "status", "reason"], failures)) if failures
        else ("p", "None: every trial finished ok."),
        ("h3", "Plots"),
        *[("image", path.relative_to(reports_dir)) for path in plots],
    ]
    if notes:
        blocks.append(("items", [("not made", note) for note in notes]))
    return blocks


def _markdown(blocks: list[Block]) -> str:
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
            header, rows = content
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
                      for cells in [header, ["---"] * len(header), *rows]] + [""]
    return "\n".join(lines)


TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
       "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--", ">": r"$>$"}


def _tex(text: str) -> str:
    """text with LaTeX's special characters escaped and `code` in \\texttt."""
    text = re.sub("|".join(map(re.escape, TEX)), lambda match: TEX[match.group()], text)
    return re.sub(r"`([^`]*)`", r"\\texttt{\1}", text)


def _latex(blocks: list[Block]) -> str:
    lines = [r"\documentclass{article}", r"\usepackage[margin=2cm]{geometry}",
             r"\usepackage{booktabs,graphicx,longtable}", r"\usepackage[utf8]{inputenc}", r"\begin{document}", ""]
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            command = {"h1": "section*", "h2": "subsection*", "h3": "subsubsection*"}[kind]
            lines += [f"\\{command}{{{_tex(content)}}}", ""]
        elif kind == "p":
            lines += [_tex(content), ""]
        elif kind == "items":
            lines += [r"\begin{description}", *[f"\\item[{_tex(k)}] {_tex(v)}" for k, v in content],
                      r"\end{description}", ""]
        elif kind == "image":
            lines += [f"\\includegraphics[width=\\linewidth]{{{content.as_posix()}}}", ""]
        elif kind == "table":
            header, rows = content
            lines += [f"\\begin{{longtable}}{{{'l' * len(header)}}}", r"\toprule",
                      " & ".join(map(_tex, header)) + r" \\", r"\midrule", r"\endhead",
                      *[" & ".join(map(_tex, cells)) + r" \\" for cells in rows],
                      r"\bottomrule", r"\end{longtable}", ""]
    return "\n".join([*lines, r"\end{document}", ""])


# ---- plots -------------------------------------------------------------------------------------


def _versus(data: pd.DataFrame, x: str, y: str, hue: str, col: str, row: str | None = None) -> Figure | str:
    """Mean ± sd over the other axes and seeds of y against x (log2 x for batch size); a reason when impossible."""
    if data[y].notna().sum() == 0:
        return f"no trial has a finite {y}"
    if data[x].nunique() < 2:
        return f"a single {x} ({_values(data[x])}) in the grid"
    grid = sns.relplot(data=data, x=x, y=y, hue=hue, col=col, row=row, kind="line", marker="o", errorbar="sd",
                       palette="viridis" if hue in ("margin", "batch_size") else "tab10", height=3)
    if x == "batch_size":
        sizes = sorted(data[x].unique())
        for ax in grid.axes.flat:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [str(size) for size in sizes])
            ax.minorticks_off()
    return grid.figure


def _curves(curves: pd.DataFrame, x: str) -> Figure | str:
    """k-NN accuracy over the checkpoints of each loss's best cell: mean ± sd over seeds, or one line per seed."""
    if curves.knn_accuracy.notna().sum() == 0:
        return "no trial of a best cell has a finite k-NN accuracy"
    per_seed = {"units": "seed", "estimator": None} if x == "elapsed_seconds" else {"errorbar": "sd"}
    return sns.relplot(data=curves, x=x, y="knn_accuracy", hue="loss", col="dataset", kind="line", marker="o",
                       height=3.5, **per_seed).figure


def _fractions(curves: pd.DataFrame) -> Figure | str:
    """Easy / semi-hard / hard triplet fractions over training in each loss's best cell (mean ± sd over seeds)."""
    long = curves.melt(id_vars=["dataset", "loss", "samples_seen"], value_vars=list(FRACTIONS),
                       var_name="triplets", value_name="fraction").replace({"triplets": FRACTIONS})
    if long.fraction.notna().sum() == 0:
        return "no trial of a best cell has finite triplet fractions"
    return sns.relplot(data=long, x="samples_seen", y="fraction", hue="triplets", col="loss", row="dataset",
                       kind="line", marker="o", errorbar="sd", height=3).figure


def _tsne(best: pd.DataFrame, trials: pd.DataFrame, notes: list[str]) -> Figure | str:
    """2-D t-SNE of ≤ TSNE_POINTS stored test embeddings of each best cell's lowest seed, coloured by label.

    Exact (faster than Barnes-Hut at this size on 2 cores), PCA init, random_state 0, perplexity ≤ (n - 1) / 3.
    """
    panels = []
    for cell in best.itertuples():
        stored = trials[(trials.dataset == cell.dataset) & (trials.loss == cell.loss) & (trials.margin == cell.margin)
                        & (trials.batch_size == cell.batch_size) & trials.embeddings.notna()].sort_values("seed")
        if stored.empty:
            notes.append(f"t-SNE panel {cell.dataset} {cell.loss}: its best cell stored no embeddings")
            continue
        try:
            with np.load(stored.embeddings.iloc[0]) as npz:
                points, labels = npz["embeddings"][:TSNE_POINTS].astype(np.float32), npz["labels"][:TSNE_POINTS]
        except (OSError, KeyError, ValueError) as err:
            notes.append(f"t-SNE panel {cell.dataset} {cell.loss}: {stored.embeddings.iloc[0]} unreadable ({err})")
            continue
        if len(points) < 5:
            notes.append(f"t-SNE panel {cell.dataset} {cell.loss}: only {len(points)} stored embeddings")
            continue
        tsne = TSNE(perplexity=min(30.0, (len(points) - 1) / 3), init="pca", method="exact", random_state=0)
        panels.append((cell, tsne.fit_transform(points), labels, int(stored.seed.iloc[0])))
    if not panels:
        return "no best cell has stored test embeddings"
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.5 * columns, 3.5 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (cell, xy, labels, seed) in zip(axes.flat, panels, strict=False):
        sns.scatterplot(x=xy[:, 0], y=xy[:, 1], hue=labels, palette="tab10", s=6, linewidth=0, legend=False, ax=ax)
        ax.set(title=f"{cell.dataset} {cell.loss}\nmargin {cell.margin:g}, batch {cell.batch_size}, seed {seed}",
               xticks=[], yticks=[])
    return figure


def write_plots(frame: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> tuple[list[Path], list[str]]:
    """The PNGs of one experiment under out_dir, and one note per plot (or panel) that the data cannot make."""
    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    final = final_rows(frame)
    valid = final[final.status.isin(IN_MEAN)]
    best = best_cells(summary)
    in_best = frame.merge(best[CELL], on=CELL)
    curves = in_best[in_best.status.isin(IN_MEAN)]
    notes: list[str] = []
    figures = {
        "knn_vs_margin": _versus(valid, "margin", "knn_accuracy", "batch_size", "loss", "dataset"),
        "knn_vs_batch_size": _versus(valid, "batch_size", "knn_accuracy", "margin", "loss", "dataset"),
        "knn_vs_samples_seen": _curves(curves, "samples_seen"),
        "knn_vs_elapsed_seconds": _curves(curves, "elapsed_seconds"),
        "samples_per_second_vs_batch_size": _versus(valid, "batch_size", "samples_per_second", "loss", "dataset"),
        "peak_memory_vs_batch_size": _versus(valid, "batch_size", "peak_memory_mib", "loss", "dataset"),
        "triplet_fractions": _fractions(curves),
        "tsne": _tsne(best, valid, notes),
    }
    written = []
    for name, figure in figures.items():
        if isinstance(figure, str):
            notes.append(f"{name}.png: {figure}")
            continue
        path = out_dir / f"{name}.png"
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written, notes


# ---- files and CLI ------------------------------------------------------------------------------


def write_report(frame: pd.DataFrame, reports_dir: Path | str) -> list[Path]:
    """Write summary.csv, summary.md, summary.tex and plots/<experiment>/*.png for load_records' frame."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(frame)
    csv_path = reports_dir / "summary.csv"
    summary.assign(margin=summary.margin.map("{:g}".format)).to_csv(
        csv_path, index=False, float_format="%.6f", na_rep="", lineterminator="\n"
    )
    blocks: list[Block] = [
        ("h1", "tripletbench report"),
        ("p", f"Made by `python -m bench.report` from {len(final_rows(frame))} trial records. Statistics over "
              f"seeds use the final checkpoint of trials whose status is {' or '.join(IN_MEAN)}; diverged, OOM and "
              "error trials are counted in the trials columns and listed, never dropped. std is the sample "
              "standard deviation (ddof=1), '–' for a single trial."),
    ]
    written = [csv_path]
    for experiment, trials in frame.groupby("experiment"):
        cells = summary[summary.experiment == experiment]
        plots, notes = write_plots(trials, cells, reports_dir / "plots" / str(experiment))
        written += plots
        blocks += _experiment_blocks(trials, cells, plots, notes, reports_dir)
    for name, render in (("summary.md", _markdown), ("summary.tex", _latex)):
        (reports_dir / name).write_text(render(blocks))
        written.append(reports_dir / name)
    return written


def build_report(results_dir: Path | str, reports_dir: Path | str) -> list[Path]:
    """load_records(results_dir), then write_report into reports_dir; the paths written."""
    return write_report(load_records(results_dir), reports_dir)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: exit code 0 after writing the report, 2 with one line on stderr on bad input."""
    parser = Parser(prog="python -m bench.report", description="Tables and plots from a results folder.")
    parser.add_argument("--results", default="results", help="a results folder or one experiment in it")
    parser.add_argument("--reports", default="reports", help="where to write (existing files are overwritten)")
    args = parser.parse_args(argv)
    try:
        frame = load_records(args.results)
        written = write_report(frame, args.reports)
    except (ReportError, OSError) as err:
        print(f"python -m bench.report: error: {err}", file=sys.stderr)
        return 2
    print(f"report: {len(written)} files from {len(final_rows(frame))} trials under {args.reports}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
