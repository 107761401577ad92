"""bench.reporting.plots and the loss benchmark's plot read as figures before saving: axes, labels, lines, points,
colours, legends, titles, and tick labels that never overlap."""

import io
import itertools
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, ScalarFormatter

from bench.loss_benchmark import plot_figure
from bench.reporting import plots, stats
from bench.reporting.fake_records import baseline_record, trial_record, write_experiment, write_smoke_results
from bench.reporting.frame import load_records
from losses import LOSSES

ORDER = tuple(LOSSES)
# the reference grid's shape: CIFAR-10 at 200k samples and MNIST at 60k, 8 checkpoints, subsets before the last
BUDGETS = {"cifar10": 200_000, "mnist": 60_000}
BASELINE_LEVELS = {"cifar10": {"pixels": 0.04, "untrained": 0.02}, "mnist": {"pixels": 0.31, "untrained": 0.20}}
SUBSETS = {"test_queries_size": 200, "test_gallery_size": 800, "val_queries_size": 100, "val_gallery_size": 400}
CITED_AXES = {"dataset": ["cifar10", "mnist"], "loss": ["batch-all", "batch-hard"], "margin": [0.1, 0.2],
              "batch_size": [50, 200], "seed": [0, 1]}


def _made(results: Path, citation: str) -> tuple[dict, object, pd.DataFrame]:
    loaded = load_records(results)
    summary = stats.summarize(loaded.checkpoints, loaded.grids, ORDER)
    return plots.make_plots(loaded.checkpoints, summary, ORDER, citation), loaded, summary


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory):
    made = _made(write_smoke_results(tmp_path_factory.mktemp("results")) / "full", "n = 3 seeds; citable")
    yield made
    plt.close("all")


def _mnist_values(loss: str, margin: float, batch_size: int, seed: int) -> dict[str, float]:
    """MNIST-like final metrics: every cell within a point of 0.98, as on the reference grid."""
    level = 0.975 + 0.004 * CITED_AXES["loss"].index(loss) + 0.002 * CITED_AXES["margin"].index(margin) \
        + 0.001 * CITED_AXES["batch_size"].index(batch_size) + 0.001 * seed * (1 + len(loss) % 3)
    return {"map_at_r": level, "val_map_at_r": level - 0.002}


@pytest.fixture(scope="module")
def cited(tmp_path_factory: pytest.TempPathFactory):
    """The figures of a grid shaped like the reference one (two datasets, their own budgets and baselines)."""
    records = []
    for dataset, budget in BUDGETS.items():
        records.append(baseline_record("cited", "pixels", None, {"map_at_r": BASELINE_LEVELS[dataset]["pixels"],
                                                                 "knn_accuracy": 0.5, "precision_at_1": 0.5},
                                       dataset=dataset))
        records += [baseline_record("cited", "untrained", seed, {"map_at_r": BASELINE_LEVELS[dataset]["untrained"],
                                                                 "knn_accuracy": 0.4, "precision_at_1": 0.4},
                                    dataset=dataset) for seed in CITED_AXES["seed"]]
        for loss, margin, batch, seed in itertools.product(*(CITED_AXES[k] for k in ("loss", "margin", "batch_size",
                                                                                      "seed"))):
            records.append(trial_record("cited", loss, margin, batch, seed, dataset=dataset, checkpoints=8,
                                        steps=budget // batch, subsets=SUBSETS,
                                        values=_mnist_values(loss, margin, batch, seed) if dataset == "mnist"
                                        else None))
    results = write_experiment(tmp_path_factory.mktemp("results"), "cited", records, CITED_AXES, embeddings=True,
                               citable=True)
    made = _made(results, "n = 2 seeds; citable")
    yield made
    plt.close("all")


def _lines(ax) -> dict[str, object]:
    """The labelled lines of ax by label (not an error bar's caps)."""
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def _title(figure: Figure) -> str:
    return figure._suptitle.get_text().replace("\n", " ")


def _legend(figure: Figure) -> list[str]:
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def _marks(ax, label: str) -> list[PathCollection]:
    return [c for c in ax.collections if isinstance(c, PathCollection) and c.get_label() == label]


def _texts(figure: Figure) -> list[tuple[int, str, object]]:
    """(axes index, kind, window extent) of every visible tick label, title and axis label, the figure drawn."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    found = []
    for index, ax in enumerate(figure.axes):
        if not ax.axison:
            continue
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            low, high = sorted(axis.get_view_interval())
            for label in axis.get_ticklabels():
                where = label.get_position()[0 if name == "x" else 1]
                if label.get_visible() and label.get_text() and low <= where <= high:
                    found.append((index, f"{name} tick {label.get_text()}", label.get_window_extent(renderer)))
        for kind, text in (("title", ax.title), ("x label", ax.xaxis.label), ("y label", ax.yaxis.label)):
            if text.get_visible() and text.get_text():
                found.append((index, kind, text.get_window_extent(renderer)))
    return found


def overlaps(figure: Figure) -> list[str]:
    """Pairs of texts that overlap: tick labels of one axis among themselves, any text of one panel with any of
    another panel."""
    clashes = []
    for (i, a, first), (j, b, second) in itertools.combinations(_texts(figure), 2):
        if i == j and not (a.split()[:2] == b.split()[:2] and "tick" in a):
            continue
        width = min(first.x1, second.x1) - max(first.x0, second.x0)
        height = min(first.y1, second.y1) - max(first.y0, second.y0)
        if width > 0 and height > 0:
            clashes.append(f"axes {i} {a!r} / axes {j} {b!r}")
    return clashes


def test_every_figure_is_made(made, cited) -> None:
    for figures in (made[0], cited[0]):
        assert set(figures) == {"map_vs_margin", "map_vs_batch_size", "map_vs_samples_seen", "map_vs_train_seconds",
                                "throughput_vs_batch_size", "peak_memory_vs_batch_size", "triplet_fractions", "tsne"}
        assert not any(isinstance(figure, str) for figure in figures.values())


def test_no_tick_labels_overlap_in_any_figure(made, cited) -> None:
    for name, figure in [*made[0].items(), *cited[0].items()]:
        assert overlaps(figure) == [], name


def test_the_overlap_check_sees_dense_ticks(cited) -> None:
    """The old axis (a plain tick every 25000 samples on a 200k axis) is what the check catches."""
    figure = plots.curves(cited[2], cited[1].checkpoints, "samples_seen", ORDER, "cited")
    ax = figure.axes[0]
    ax.xaxis.set_major_locator(FixedLocator(np.arange(25_000, 200_001, 25_000)))
    ax.xaxis.set_major_formatter(ScalarFormatter(useOffset=False))
    ax.ticklabel_format(axis="x", style="plain")
    assert any("x tick 100000" in clash for clash in overlaps(figure))
    plt.close(figure)


def test_every_title_asks_its_question_with_the_citation(cited) -> None:
    for name, figure in cited[0].items():
        title = _title(figure)
        assert title.startswith("cited (n = 2 seeds; citable): ") and "?" in title, name


def test_margin_plot_has_a_panel_per_batch_size_bands_baselines_and_failure_marks(made) -> None:
    figures, _, summary = made
    figure = figures["map_vs_margin"]
    assert len(figure.axes) == 2  # batch sizes 16 and 32, one dataset × protocol
    for ax, batch in zip(figure.axes, (16, 32), strict=True):
        assert ax.get_xlabel() == "margin m" and ax.get_ylabel() == "test MAP@R (fraction, 0 to 1)"
        assert ax.get_title() == f"mnist, seen classes, batch {batch}\nbudget {plots.short(60 * 32)} samples"
        lines = _lines(ax)
        assert {"batch-all", "batch-hard", "quadruplet"} <= set(lines)
        hard = summary[(summary.loss == "batch-hard") & (summary.batch_size == batch)].sort_values("margin")
        np.testing.assert_allclose(lines["batch-hard"].get_ydata(), hard.map_at_r_mean)
    first, second = figure.axes
    assert len(_lines(second)["quadruplet"].get_xdata()) == 1  # its m 0.2 cell ran out of memory
    assert len(_marks(second, "OOM")) == 1 and len(_marks(first, "diverged")) == 1
    assert {"cell with a OOM seed", "cell with a diverged seed"} <= set(_legend(figure))
    assert "budget" not in _title(figure)  # in each panel's title, in the panels' order


def test_the_margin_plot_draws_a_control_as_a_level_not_at_margin_0(tmp_path: Path) -> None:
    """The normalised softmax has no margin: its selected cell is a dash-dot level across the panel, named so in the
    legend, never a point at m = 0 beside the triplet losses' margins."""
    records = [trial_record("ctl", loss, margin, 16, seed, values={"map_at_r": level + seed / 100,
                                                                    "val_map_at_r": level})
               for loss, margin, level in (("batch-all", 0.1, 0.5), ("batch-all", 0.2, 0.6),
                                           ("normalized-softmax", 0.0, 0.7)) for seed in (0, 1)]
    figures, _, summary = _made(write_experiment(tmp_path, "ctl", records, {
        "dataset": ["mnist"], "loss": ["batch-all", "normalized-softmax"], "margin": [0.0, 0.1, 0.2],
        "batch_size": [16], "seed": [0, 1]}), "n = 2 seeds")
    ax = figures["map_vs_margin"].axes[0]
    assert "normalized-softmax" not in _lines(ax) and "batch-all" in _lines(ax)
    level = float(summary[summary.loss == "normalized-softmax"].map_at_r_mean.iloc[0])
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "-." and line.get_ydata()[0] == level]
    assert len(dashed) == 1
    assert "normalized-softmax (no margin: its selected cell's level)" in _legend(figures["map_vs_margin"])
    curves = figures["map_vs_samples_seen"].axes[0].get_title().replace("\n", " ")
    assert "normalized-softmax B 16" in curves and "batch-all m 0.2 B 16" in curves, curves
    for figure in figures.values():  # its own figures only: the module's fixtures keep theirs open
        if not isinstance(figure, str):
            plt.close(figure)


def test_no_legend_runs_into_the_title(made, cited) -> None:
    """A legend beside one row of panels can be taller than the panels: the figure grows so that it stays below the
    title (cpu-losses' margin plot, 11 entries under a 4-line title, had its legend over the title's last line)."""
    figure, _ = plt.subplots(1, 1, figsize=(6.6, 3.2), layout="constrained")
    plots._title(figure, "cpu-losses (n = 3 seeds; citable)", "Which margin does each mining strategy need, at "
                 "equal samples?", "Test MAP@R of each loss's cells at the variant (lr, normalisation, …) of its "
                 "selected cell; mean of n = 3 seeds, 95% t band; ★ each loss's validation-selected cell.")
    losses = [*ORDER, "normalized-softmax"]
    plots._legend(figure, plots.palette(tuple(losses), losses), losses, list(stats.BASELINES), {"selected"},
                  ("normalized-softmax",))
    for figures in (made[0], cited[0], {"one panel": figure}):
        for name, made_figure in figures.items():
            if isinstance(made_figure, str):  # not made, and why
                continue
            made_figure.canvas.draw()
            renderer = made_figure.canvas.get_renderer()
            title = made_figure._suptitle.get_window_extent(renderer)
            for legend in made_figure.legends:
                assert not title.overlaps(legend.get_window_extent(renderer)), name
    plt.close(figure)


def test_baselines_are_lines_in_view_or_named_off_the_axis(made, cited) -> None:
    for figures, summary in ((made[0], made[2]), (cited[0], cited[2])):
        for name in ("map_vs_margin", "map_vs_batch_size", "map_vs_samples_seen"):
            figure = figures[name]
            assert {"baseline: raw pixels", "baseline: untrained network"} <= set(_legend(figure)), name
            for ax in figure.axes:
                if ax.get_ylabel() != plots.METRIC_LABEL:
                    continue
                dataset = ax.get_title().split(",")[0]
                levels = {row.loss: row.map_at_r_mean for row in summary[(summary.dataset == dataset)
                                                                          & summary.loss.isin(stats.BASELINES)]
                          .itertuples()}
                low, high = ax.get_ylim()
                notes = " ".join(text.get_text() for text in ax.texts)
                for baseline, level in levels.items():
                    label = plots.BASELINE_STYLE[baseline]["label"]
                    line = _lines(ax).get(label)
                    if line is not None:
                        assert low <= line.get_ydata()[0] <= high
                    else:
                        words = label.removeprefix("baseline: ")
                        assert f"{words} {level:.2f} {'↓' if level < low else '↑'}" in notes, (name, dataset)


def test_mnist_panels_are_zoomed_on_cells_near_098(cited) -> None:
    figure = cited[0]["map_vs_margin"]
    for ax in figure.axes:
        if ax.get_title().startswith("mnist"):
            low, high = ax.get_ylim()
            assert 0.9 < low and high < 1.01  # not 0.2 to 1.0
            assert "baseline off the axis: raw pixels 0.31 ↓, untrained network 0.20 ↓" in [t.get_text()
                                                                                            for t in ax.texts]


def test_panels_state_their_own_budget(cited) -> None:
    for name in ("map_vs_margin", "map_vs_batch_size", "map_vs_samples_seen", "triplet_fractions"):
        for ax in cited[0][name].axes:
            title = ax.get_title()
            for dataset, budget in BUDGETS.items():
                if title.startswith(dataset):
                    assert f"budget {budget // 1000}k samples" in title, (name, title)


def test_selected_cells_are_starred(cited) -> None:
    figures, _, summary = cited
    selected = summary[summary.selected]
    for name in ("map_vs_margin", "map_vs_batch_size"):
        stars = {}
        for ax in figures[name].axes:
            for mark in _marks(ax, "selected"):
                stars[ax.get_title().split(",")[0], tuple(mark.get_offsets()[0])] = mark
        x = "margin" if name == "map_vs_margin" else "batch_size"
        assert sorted(stars) == sorted((row.dataset, (getattr(row, x), row.map_at_r_mean))
                                       for row in selected.itertuples()), name
        assert "validation-selected cell" in _legend(figures[name])


def test_batch_size_plot_takes_the_margin_best_on_validation_at_each_batch_size(cited) -> None:
    figures, _, summary = cited
    ax = figures["map_vs_batch_size"].axes[1]
    assert ax.get_title().startswith("mnist") and ax.get_xlabel() == "batch size B (images)"
    cells = summary[(summary.dataset == "mnist") & (summary.loss == "batch-hard")]
    best = [cells[cells.batch_size == size].sort_values("val_map_at_r_mean").iloc[-1] for size in (50, 200)]
    np.testing.assert_allclose(_lines(ax)["batch-hard"].get_ydata(), [row.map_at_r_mean for row in best])
    assert "batch-hard 0.2/0.2" in ax.get_title().replace("\n", " ")
    assert len(figures["map_vs_batch_size"].axes) == 2  # one panel per dataset, not one per margin


def test_subset_checkpoints_are_drawn_apart_from_the_whole_set(cited) -> None:
    figures, loaded, summary = cited
    figure = figures["map_vs_samples_seen"]
    ax = figure.axes[0]
    assert ax.get_title().startswith("cifar10") and ax.get_xlabel() == "samples seen (images)"
    cell = summary[summary.selected & (summary.dataset == "cifar10") & (summary.loss == "batch-all")].iloc[0]
    label = f"batch-all (m {cell.margin:g}, B {cell.batch_size:g})"
    subset, whole = _lines(ax)[f"{label}, test subsets"], _lines(ax)[label]
    assert subset.get_linestyle() == "--" and subset.get_markerfacecolor() == "white"
    assert len(subset.get_xdata()) == 7 and max(subset.get_xdata()) < whole.get_xdata()[0]
    assert whole.get_linestyle() == "None" and whole.get_ydata()[0] == pytest.approx(cell.map_at_r_mean)
    assert {"checkpoints before the last: test subset", "last checkpoint: whole test set"} <= set(_legend(figure))
    assert "subset 200/800 before the last checkpoint, whole set 1k/5.4k at it" in ax.get_title().replace("\n", " ")
    last = figure.axes[1]
    assert last.get_title() == "last checkpoint,\nwhole test set"
    assert [line.get_ydata()[0] for line in _lines(last).values()] == pytest.approx(
        list(summary[summary.selected & (summary.dataset == "cifar10")].map_at_r_mean))


def test_one_colour_per_loss_in_every_figure(made) -> None:
    figures, _, _ = made
    colours = plots.palette(ORDER, [])
    for name in ("map_vs_margin", "map_vs_batch_size", "map_vs_train_seconds", "throughput_vs_batch_size"):
        for ax in figures[name].axes:
            for label, line in _lines(ax).items():
                loss = label.split(" (")[0]
                if loss in colours:
                    assert line.get_color() == colours[loss], (name, label)
    assert colours["batch-hard"] == plt.get_cmap("tab10").colors[list(LOSSES).index("batch-hard")]


def test_curves_are_seed_means_on_training_seconds(made) -> None:
    figures, loaded, summary = made
    ax = figures["map_vs_train_seconds"].axes[0]
    assert ax.get_xlabel() == "training time (s, evaluation excluded)"
    cell = summary[summary.selected & (summary.loss == "batch-hard")].iloc[0]
    line = _lines(ax)[f"batch-hard (m {cell.margin:g}, B {cell.batch_size:g})"]
    trials = loaded.checkpoints[(loaded.checkpoints.loss == "batch-hard") & (loaded.checkpoints.margin == cell.margin)
                                & (loaded.checkpoints.batch_size == cell.batch_size)]
    for index, checkpoint in enumerate(sorted(trials.checkpoint.unique())):
        at = trials[trials.checkpoint == checkpoint]
        assert line.get_xdata()[index] == pytest.approx(statistics.mean(at.train_seconds))
        assert line.get_ydata()[index] == pytest.approx(statistics.mean(at.map_at_r), rel=1e-12)
    assert line.get_linestyle() == "-"  # every checkpoint on the whole test set: one line
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 3  # a 95% band per selected cell
    assert "checkpoints before the last: test subset" not in _legend(figures["map_vs_train_seconds"])
    assert figures["map_vs_samples_seen"].axes[0].get_xlabel() == "samples seen (images)"
    assert "Which mining strategy is best at equal training time?" in _title(figures["map_vs_train_seconds"])


def test_one_seed_says_no_band_and_draws_none(tmp_path: Path) -> None:
    records = [trial_record("one", loss, margin, batch, 0) for loss in ("batch-all", "batch-hard")
               for margin in (0.1, 0.2) for batch in (8, 16)]
    with plt.rc_context({"figure.max_open_warning": 40}):  # beside the module's two sets of figures
        figures, _, _ = _made(write_experiment(tmp_path, "one", records, {
            "dataset": ["mnist"], "loss": ["batch-all", "batch-hard"], "margin": [0.1, 0.2], "batch_size": [8, 16],
            "seed": [0]}, embeddings=True), "n = 1 seed; NOT FOR CITING")
    for name in ("map_vs_margin", "map_vs_batch_size", "map_vs_samples_seen", "map_vs_train_seconds",
                 "triplet_fractions"):
        title = _title(figures[name])
        assert "95% t band" not in title and "n = 1 seed, no band" in title, name
        assert not any(isinstance(c, PolyCollection) for ax in figures[name].axes for c in ax.collections), name
    for figure in figures.values():
        plt.close(figure)


def test_spread_words() -> None:
    assert plots._spread([3, 3]) == "mean of n = 3 seeds, 95% t band"
    assert plots._spread([1, 3, 2]) == "mean of n = 1–3 seeds, 95% t band where n ≥ 2"
    assert plots._spread([1]) == "n = 1 seed, no band"
    assert [plots.short(v) for v in (200_000, 1_500_000, 60_000, 0.25, 64)] == ["200k", "1.5M", "60k", "0.25", "64"]


def test_tsne_names_the_classes_per_dataset_and_is_deterministic(made, cited) -> None:
    figures, loaded, summary = made
    figure = figures["tsne"]
    assert len(figure.axes) == 3 + 1  # three panels and the legend's column
    assert [t.get_text() for t in figure.axes[-1].get_legend().get_texts()] == ["0", "1", "2", "3"]
    assert all(len(ax.collections) == 4 for ax in figure.axes[:3])  # one scatter per class
    again = plots.tsne(summary, stats.final_rows(loaded.checkpoints), ORDER, "full", [])
    for first, second in zip(figure.axes, again.axes, strict=True):
        for a, b in zip(first.collections, second.collections, strict=True):
            np.testing.assert_array_equal(a.get_offsets(), b.get_offsets())
    assert "selected m" in figure.axes[0].get_title()
    legends = {ax.get_legend().get_title().get_text(): [t.get_text() for t in ax.get_legend().get_texts()]
               for ax in cited[0]["tsne"].axes if ax.get_legend()}
    assert legends == {"cifar10 test class": ["airplane", "automobile", "bird", "cat"],
                       "mnist test class": ["0", "1", "2", "3"]}
    plt.close(again)


def test_grid_systems_plot_says_it_is_the_experiments_own_measurement(made) -> None:
    title = _title(made[0]["throughput_vs_batch_size"])
    assert "Which loss trains fastest?" in title
    assert "measured in this experiment's own trials" in title and "Test CPU (2 threads)" in title
    assert made[0]["peak_memory_vs_batch_size"].axes[0].get_ylabel() == "peak training memory (MiB)"


def test_isolated_systems_plot_names_the_benchmark_run_not_the_experiment() -> None:
    rows = pd.DataFrame([{"dataset": "mnist", "loss": loss, "batch_size": batch, "precision": "fp32",
                          "samples_per_second": 100.0 * batch, "peak_memory_mib": batch / 2}
                         for loss in ("batch-all", "batch-hard") for batch in (64, 256)])
    figure = plots.isolated_systems(rows, ["mnist"], "samples_per_second", "throughput (images/s)", ORDER,
                                    "cpu (n = 3 seeds; citable)", "step_benchmark.csv: Quiet CPU, commit abc")
    title = _title(figure)
    assert title.startswith("cpu (n = 3 seeds; citable): Which loss trains fastest? NOT measured in this "
                            "experiment's trials")
    assert "step benchmark's run (step_benchmark.csv: Quiet CPU, commit abc)" in title
    assert "one measurement per point, no band" in title and figure.axes[0].get_title() == "mnist: step benchmark"
    assert overlaps(figure) == []
    plt.close(figure)


def test_separate_x_axis_per_dataset(tmp_path: Path) -> None:
    records = [trial_record("two", "batch-hard", margin, 8, seed, dataset=dataset)
               for dataset in ("mnist", "cifar10") for margin in (0.1, 0.2) for seed in (0, 1)]
    records += [baseline_record("two", "pixels", None, {"map_at_r": 0.2, "knn_accuracy": 0.5,
                                                        "precision_at_1": 0.5}, dataset="cifar10")]
    loaded = load_records(write_experiment(tmp_path, "two", records, {
        "dataset": ["mnist", "cifar10"], "loss": ["batch-hard"], "margin": [0.1, 0.2], "batch_size": [8],
        "seed": [0, 1]}))
    summary = stats.summarize(loaded.checkpoints, loaded.grids, ORDER)
    figure = plots.margins(summary, stats.final_rows(loaded.checkpoints), ORDER, "two")
    cifar, mnist = figure.axes
    assert [ax.get_title().split("\n")[0] for ax in figure.axes] == ["cifar10, seen classes, batch 8",
                                                                    "mnist, seen classes, batch 8"]
    assert not cifar.get_shared_x_axes().joined(cifar, mnist)
    assert "baseline" not in " ".join(t.get_text() for t in mnist.texts) + " ".join(map(str, _lines(mnist)))
    assert "raw pixels" in " ".join(t.get_text() for t in cifar.texts) + " ".join(map(str, _lines(cifar)))
    plt.close(figure)


def test_same_records_give_the_same_bytes(cited) -> None:
    def png(figure: Figure) -> bytes:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=plots.DPI, metadata={"Software": None})
        plt.close(figure)
        return buffer.getvalue()

    _, loaded, summary = cited
    final = stats.final_rows(loaded.checkpoints)
    assert png(plots.margins(summary, final, ORDER, "x")) == png(plots.margins(summary, final, ORDER, "x"))


def test_saved_png_has_no_date_or_software(made, tmp_path: Path) -> None:
    figures, _, _ = made
    written = plots.save({"map_vs_margin": figures["map_vs_margin"], "skipped": "a reason"}, tmp_path)
    assert written == [tmp_path / "map_vs_margin.png"]
    data = written[0].read_bytes()
    assert data.startswith(b"\x89PNG") and b"Software" not in data and b"matplotlib" not in data


def test_old_records_give_reasons_not_figures(made) -> None:
    _, loaded, summary = made
    no_validation = summary.assign(selected=False, val_map_at_r_mean=np.nan)
    assert plots.curves(no_validation, loaded.checkpoints, "train_seconds", ORDER, "x") \
        == "selection not possible: no validation metrics"
    assert plots.batch_sizes(no_validation, stats.final_rows(loaded.checkpoints), ORDER, "x") \
        == "selection not possible: no validation metrics"
    assert plots.curves(summary, loaded.checkpoints.drop(columns="train_seconds"), "train_seconds", ORDER, "x") \
        == "the records predate train_seconds"


def test_loss_benchmark_plot_marks_failures_and_names_the_hardware() -> None:
    rows = []
    for impl in ("tripletbench", "dense"):
        for batch in (128, 256, 512):
            failed = impl == "dense" and batch == 512
            rows.append({"impl": impl, "loss": "batch-hard", "batch_size": batch, "classes": 10, "dim": 128,
                         "status": "OOM" if failed else "ok", "median_ms": np.nan if failed else batch / 100,
                         "peak_memory_mib": np.nan if failed else batch / 10})
    figure = plot_figure(pd.DataFrame(rows), "Test GPU")
    assert "Test GPU" in figure._suptitle.get_text()
    time_ax, memory_ax = figure.axes
    assert time_ax.get_ylabel() == "forward+backward time (ms, median)" and time_ax.get_xlabel().startswith("batch")
    assert [len(line.get_xdata()) for line in time_ax.get_lines()] == [2, 3]  # dense stops before its OOM
    marks = [c for c in memory_ax.collections if isinstance(c, PathCollection)]
    assert len(marks) == 1 and marks[0].get_offsets()[0][0] == 512
    assert [t.get_text() for t in memory_ax.texts] == ["OOM"]
    plt.close(figure)


def test_a_variant_axis_never_mixes_two_configurations_in_one_line(tmp_path: Path) -> None:
    """lr 1e-4 and 1e-3 cells of one loss, margin and batch: the margin plot joins the margins of the selected lr
    only, and the curve, fractions and t-SNE of the selected cell use its lr's trials alone."""
    def values(lr: float, margin: float, seed: int) -> dict[str, float]:
        score = (0.8 if lr == 1e-3 else 0.4) + margin / 10 + seed / 100
        return {"map_at_r": score, "val_map_at_r": score, "knn_accuracy": score}

    records = [trial_record("lr", "batch-all", margin, 8, seed, config={"lr": lr}, values=values(lr, margin, seed))
               for lr in (1e-4, 1e-3) for margin in (0.1, 0.2) for seed in (0, 1)]
    with plt.rc_context({"figure.max_open_warning": 40}):
        figures, loaded, summary = _made(write_experiment(tmp_path, "lr", records, {
            "dataset": ["mnist"], "loss": ["batch-all"], "margin": [0.1, 0.2], "batch_size": [8], "lr": [1e-4, 1e-3],
            "seed": [0, 1]}, embeddings=True), "n = 2 seeds; NOT FOR CITING")
    selected = summary[summary.selected].iloc[0]
    assert selected.variant == "lr 0.001" and selected.margin == 0.2
    line = _lines(figures["map_vs_margin"].axes[0])["batch-all"]
    np.testing.assert_allclose(line.get_ydata(), [0.815, 0.825])  # lr 1e-3 at m 0.1, 0.2: seed means
    assert "at the variant (lr, normalisation, …) of its selected cell" in _title(figures["map_vs_margin"])
    curve = _lines(figures["map_vs_samples_seen"].axes[0])["batch-all (m 0.2, B 8)"]
    assert curve.get_ydata()[-1] == pytest.approx(0.825)
    for figure in figures.values():
        plt.close(figure)
