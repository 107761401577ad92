"""bench.reporting.plots and the loss benchmark's plot read as figures before saving: axes, labels, lines, points,
colours."""

import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection

from bench.loss_benchmark import plot_figure
from bench.reporting import plots, stats
from bench.reporting.fake_records import baseline_record, trial_record, write_experiment, write_smoke_results
from bench.reporting.frame import load_records
from losses import LOSSES

ORDER = tuple(LOSSES)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory):
    loaded = load_records(write_smoke_results(tmp_path_factory.mktemp("results")) / "full")
    summary = stats.summarize(loaded.checkpoints, loaded.grids, ORDER)
    figures = plots.make_plots(loaded.checkpoints, summary, ORDER, "n = 3 seeds; citable")
    yield figures, loaded, summary
    plt.close("all")


def _lines(ax) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines()}


def test_every_figure_is_made(made) -> None:
    figures, _, _ = made
    assert set(figures) == {"map_vs_margin", "map_vs_batch_size", "map_vs_samples_seen", "map_vs_train_seconds",
                            "throughput_vs_batch_size", "peak_memory_vs_batch_size", "triplet_fractions", "tsne"}
    assert not any(isinstance(figure, str) for figure in figures.values())


def test_margin_plot_has_a_panel_per_batch_size_bands_baselines_and_failure_marks(made) -> None:
    figures, _, summary = made
    figure = figures["map_vs_margin"]
    assert len(figure.axes) == 2  # batch sizes 16 and 32, one dataset × protocol
    for ax, batch in zip(figure.axes, (16, 32), strict=True):
        assert ax.get_xlabel() == "margin m" and ax.get_ylabel() == "test MAP@R (fraction, 0 to 1)"
        assert ax.get_title() == f"mnist, seen classes, batch {batch}"
        lines = _lines(ax)
        assert set(lines) == {"batch-all", "batch-hard", "quadruplet", "baseline: raw pixels",
                              "baseline: untrained network"}
        hard = summary[(summary.loss == "batch-hard") & (summary.batch_size == batch)].sort_values("margin")
        np.testing.assert_allclose(lines["batch-hard"].get_ydata(), hard.map_at_r_mean)
        np.testing.assert_allclose(lines["baseline: raw pixels"].get_ydata(), [0.3, 0.3])
    first, second = figure.axes
    assert len(_lines(second)["quadruplet"].get_xdata()) == 1  # its m 0.2 cell ran out of memory
    markers = [c for c in second.collections if isinstance(c, PathCollection)]
    assert len(markers) == 1  # the OOM cell
    assert len([c for c in first.collections if isinstance(c, PathCollection)]) == 1  # the diverged seed's cell
    assert "budget 960/1920 samples" in figure._suptitle.get_text()


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
    assert len(ax.get_lines()) == 3 + 2  # three selected cells, two baselines
    assert len(ax.collections) == 3  # a 95% band per selected cell
    assert figures["map_vs_samples_seen"].axes[0].get_xlabel() == "samples seen (images)"


def test_tsne_has_a_class_legend_and_is_deterministic(made) -> None:
    figures, loaded, summary = made
    figure = figures["tsne"]
    assert len(figure.axes) == 3
    legend = figure.legends[0]
    assert [text.get_text() for text in legend.get_texts()] == ["class 0", "class 1", "class 2", "class 3"]
    assert all(len(ax.collections) == 4 for ax in figure.axes)  # one scatter per class
    again = plots.tsne(summary, stats.final_rows(loaded.checkpoints), ORDER, "full", [])
    for first, second in zip(figure.axes, again.axes, strict=True):
        for a, b in zip(first.collections, second.collections, strict=True):
            np.testing.assert_array_equal(a.get_offsets(), b.get_offsets())
    assert "selected m" in figure.axes[0].get_title()


def test_separate_x_axis_per_dataset(tmp_path: Path) -> None:
    records = [trial_record("two", "batch-hard", margin, 8, seed, dataset=dataset)
               for dataset in ("mnist", "cifar10") for margin in (0.1, 0.2) for seed in (0, 1)]
    records += [baseline_record("two", "pixels", None, {"map_at_r": 0.2, "knn_accuracy": 0.5,
                                                        "precision_at_1": 0.5}, dataset="cifar10")]
    loaded = load_records(write_experiment(tmp_path, "two", records, {
        "dataset": ["mnist", "cifar10"], "loss": ["batch-hard"], "margin": [0.1, 0.2], "batch_size": [8],
        "seed": [0, 1]}))
    summary = stats.summarize(loaded.checkpoints, loaded.grids, ORDER)
    figure = plots.versus(summary, stats.final_rows(loaded.checkpoints), "margin", "batch_size", ORDER, "two")
    cifar, mnist = figure.axes
    assert (cifar.get_title(), mnist.get_title()) == ("cifar10, seen classes, batch 8", "mnist, seen classes, batch 8")
    assert not cifar.get_shared_x_axes().joined(cifar, mnist)
    assert len(cifar.get_lines()) == 2 and len(mnist.get_lines()) == 1  # the pixels baseline only on cifar10
    plt.close(figure)


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
