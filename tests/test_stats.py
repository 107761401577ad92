"""bench.reporting.stats against independent references (scipy.stats, statistics) on generated records with known
values."""

import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from bench.reporting import stats
from bench.reporting.fake_records import baseline_record, trial_record, write_experiment
from bench.reporting.frame import load_records
from losses import LOSSES

ORDER = tuple(LOSSES)
SEEDS = [0, 1, 2, 3]
# distinct per-seed final values: (map_at_r, precision_at_1, knn_accuracy, samples/s, peak MiB)
DISTINCT = {0: (0.61, 0.83, 0.87, 1210.5, 402.25), 1: (0.64, 0.80, 0.91, 1177.0, 388.0),
            2: (0.58, 0.86, 0.85, 1302.25, 431.5), 3: (0.66, 0.79, 0.90, 1150.75, 395.0)}


def _distinct(seed: int) -> dict:
    m, p1, knn, speed, memory = DISTINCT[seed]
    return {"map_at_r": m, "precision_at_1": p1, "knn_accuracy": knn, "samples_per_second": speed,
            "peak_memory_mib": memory, "val_map_at_r": m - 0.01, "val_knn_accuracy": knn - 0.01,
            "val_precision_at_1": p1 - 0.01}


def test_t_interval_matches_scipy() -> None:
    values = [0.912, 0.934, 0.901, 0.955, 0.921]
    interval = stats.t_interval(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert interval.mean == pytest.approx(statistics.mean(values), rel=1e-14)
    assert interval.std == pytest.approx(statistics.stdev(values), rel=1e-14)
    assert interval.ci95 == pytest.approx((high - low) / 2, rel=1e-12)
    assert interval.n == 5
    two = stats.t_interval([1.0, 2.0, math.nan])  # NaN is not a value; n = 2 uses t(0.975, 1) = 12.706
    assert two.n == 2 and two.ci95 == pytest.approx(12.7062047 * math.sqrt(0.5) / math.sqrt(2), rel=1e-7)
    one = stats.t_interval([0.5])
    assert (one.mean, one.n) == (0.5, 1) and math.isnan(one.std) and math.isnan(one.ci95)
    assert stats.t_interval([0.8, 0.8, 0.8]).std == 0.0  # exactly, not 1e-16


def test_paired_p_matches_scipy_and_pairs_by_seed() -> None:
    first = {0: 0.91, 1: 0.93, 2: 0.90, 3: 0.95}
    second = {3: 0.94, 2: 0.90, 1: 0.91, 0: 0.88, 7: 0.5}  # other order, an unpaired seed
    p, pairs = stats.paired_p(first, second)
    assert pairs == 4
    assert p == pytest.approx(scipy_stats.ttest_rel([0.91, 0.93, 0.90, 0.95], [0.88, 0.91, 0.90, 0.94]).pvalue,
                              rel=1e-12)
    assert p != pytest.approx(scipy_stats.ttest_ind([0.91, 0.93, 0.90, 0.95], [0.88, 0.91, 0.90, 0.94]).pvalue)
    assert math.isnan(stats.paired_p({0: 0.9}, {0: 0.8})[0])  # one seed: not testable
    assert stats.paired_p({0: 0.9, 1: 0.8}, {0: 0.9, 1: 0.8}) == (1.0, 2)


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory):
    """Cells whose validation and test rankings disagree, an incomplete and a failed cell with the best
    validation, distinct per-seed values, baselines."""
    root = tmp_path_factory.mktemp("results")
    records = [baseline_record("e", "pixels", None, {"map_at_r": 0.3, "knn_accuracy": 0.9, "precision_at_1": 0.88})]
    records += [baseline_record("e", "untrained", seed, {"map_at_r": 0.2 + seed / 100, "knn_accuracy": 0.8,
                                                         "precision_at_1": 0.79}) for seed in SEEDS]
    for seed in SEEDS:
        # batch-hard: m 0.1 is better on validation, m 0.2 better on test -> 0.1 is selected
        records.append(trial_record("e", "batch-hard", 0.1, 8, seed, values={**_distinct(seed), "val_map_at_r": 0.9}))
        records.append(trial_record("e", "batch-hard", 0.2, 8, seed, values={"map_at_r": 0.95, "val_map_at_r": 0.7}))
        # batch-all: m 0.2 has the best validation but a diverged seed; m 0.1 B 16 best validation but a seed missing
        records.append(trial_record("e", "batch-all", 0.1, 8, seed, values={"map_at_r": 0.5 + seed / 50,
                                                                            "val_map_at_r": 0.6}))
        records.append(trial_record("e", "batch-all", 0.2, 8, seed, status="diverged" if seed == 1 else "ok",
                                    values={"val_map_at_r": 0.99}))
        if seed != 3:
            records.append(trial_record("e", "batch-all", 0.1, 16, seed, values={"val_map_at_r": 0.99}))
        records.append(trial_record("e", "batch-all", 0.2, 16, seed, status="collapsed",
                                    values={"val_map_at_r": 0.1}, collapsed=[False, True, True]))
        records.append(trial_record("e", "batch-hard", 0.1, 16, seed, pinned=[True, True, False],
                                    values={"val_map_at_r": 0.1, "initial_fraction_easy": 0.75}))
        records.append(trial_record("e", "batch-hard", 0.2, 16, seed, values={"val_map_at_r": 0.1}))
    write_experiment(root, "e", records, {"dataset": ["mnist"], "loss": ["batch-all", "batch-hard"],
                                          "margin": [0.1, 0.2], "batch_size": [8, 16], "seed": SEEDS})
    loaded = load_records(root)
    return stats.summarize(loaded.checkpoints, loaded.grids, ORDER), loaded


def _cell(summary, loss: str, margin: float, batch_size: int):
    rows = summary[(summary.loss == loss) & (summary.margin == margin) & (summary.batch_size == batch_size)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_every_aggregate_of_distinct_seeds_matches_statistics_and_scipy(summary) -> None:
    cells, _ = summary
    cell = _cell(cells, "batch-hard", 0.1, 8)
    for index, metric in enumerate(("map_at_r", "precision_at_1", "knn_accuracy", "samples_per_second",
                                    "peak_memory_mib")):
        values = [DISTINCT[seed][index] for seed in SEEDS]
        assert cell[f"{metric}_mean"] == pytest.approx(statistics.mean(values), rel=1e-14), metric
        assert cell[f"{metric}_std"] == pytest.approx(statistics.stdev(values), rel=1e-14), metric
        low, high = scipy_stats.t.interval(0.95, 3, loc=statistics.mean(values), scale=scipy_stats.sem(values))
        assert cell[f"{metric}_ci95"] == pytest.approx((high - low) / 2, rel=1e-12), metric
    val = [DISTINCT[seed][1] - 0.01 for seed in SEEDS]
    assert cell.val_precision_at_1_mean == pytest.approx(statistics.mean(val), rel=1e-14)
    assert (cell.n_seeds, cell.n_valid, cell.n_ok, cell.n_missing) == (4, 4, 4, 0)


def test_selection_follows_validation_not_test(summary) -> None:
    cells, _ = summary
    assert _cell(cells, "batch-hard", 0.1, 8).selected  # validation 0.9 beats 0.7
    assert not _cell(cells, "batch-hard", 0.2, 8).selected  # test 0.95 is the best test, never used to select
    assert _cell(cells, "batch-hard", 0.2, 8).map_at_r_mean > _cell(cells, "batch-hard", 0.1, 8).map_at_r_mean


def test_incomplete_and_failed_cells_never_win(summary) -> None:
    cells, _ = summary
    failed, incomplete = _cell(cells, "batch-all", 0.2, 8), _cell(cells, "batch-all", 0.1, 16)
    assert failed.val_map_at_r_mean > 0.9 and not failed.eligible and not failed.selected
    assert (failed.n_diverged, failed.n_valid) == (1, 3)
    assert incomplete.val_map_at_r_mean > 0.9 and not incomplete.eligible and not incomplete.selected
    assert (incomplete.n_missing, incomplete.missing_seeds) == (1, "3")
    assert _cell(cells, "batch-all", 0.1, 8).selected  # the complete cell wins
    collapsed = _cell(cells, "batch-all", 0.2, 16)
    assert collapsed.eligible and collapsed.n_collapsed == 4  # a collapse finished the budget: it counts
    assert cells[cells.selected].shape[0] == 2


def test_paired_tests_on_the_selected_cells(summary) -> None:
    """The reference is chosen on validation (batch-hard: 0.9 against batch-all's 0.6), whatever the test means say;
    each other selected cell gets its paired difference from it, its interval, raw and Holm p, and the table's MDD."""
    cells, loaded = summary
    hard, every = _cell(cells, "batch-hard", 0.1, 8), _cell(cells, "batch-all", 0.1, 8)
    assert hard.best and not every.best and math.isnan(hard.p_vs_best_map_at_r)
    for metric in stats.TESTED:
        mine = [_value(loaded, "batch-all", 0.1, 8, seed, metric) for seed in SEEDS]
        best = [_value(loaded, "batch-hard", 0.1, 8, seed, metric) for seed in SEEDS]
        test = scipy_stats.ttest_rel(mine, best)
        assert every[f"p_vs_best_{metric}"] == pytest.approx(test.pvalue, rel=1e-10)
        low, high = test.confidence_interval(0.95)
        assert (every[f"diff_lo_{metric}"], every[f"diff_hi_{metric}"]) == (pytest.approx(low), pytest.approx(high))
        assert every[f"diff_{metric}"] == pytest.approx(statistics.mean(mine) - statistics.mean(best))
        assert every[f"p_holm_{metric}"] == every[f"p_vs_best_{metric}"]  # one comparison: Holm changes nothing
        assert every[f"mdd_{metric}"] == hard[f"mdd_{metric}"] > 0
    assert cells[~cells.selected].p_vs_best_map_at_r.isna().all() and not cells[~cells.selected].best.any()


def _with_fresh_seeds(root: Path, records: list[dict]) -> pd.DataFrame:
    """Experiment e (batch-all, quadruplet, m 0.2, B 8, seeds 0-2, fresh seeds 3-5) from `records`: its cells."""
    import json

    folder = write_experiment(root, "e", records, {"dataset": ["mnist"], "loss": ["batch-all", "quadruplet"],
                                                   "margin": [0.2], "batch_size": [8], "seed": [0, 1, 2]})
    grid = json.loads((folder / "grid.json").read_text())
    (folder / "grid.json").write_text(json.dumps({**grid, "fresh_seeds": [3, 4, 5]}))
    loaded = load_records(root)
    return stats.summarize(loaded.checkpoints, loaded.grids, ORDER)


def test_a_fresh_experiment_takes_its_best_loss_from_the_selection_seeds(tmp_path: Path) -> None:
    """On seeds 0-2 batch-all is best on validation (0.9 against 0.8); on the fresh seeds 3-5 quadruplet's validation
    is higher (0.7 against 0.5): e-fresh's reference is still batch-all, and quadruplet is compared with it."""
    val = {("batch-all", False): 0.9, ("quadruplet", False): 0.8, ("batch-all", True): 0.5, ("quadruplet", True): 0.7}
    records = [trial_record("e", loss, 0.2, 8, seed, values={
        "val_map_at_r": val[(loss, seed >= 3)], "map_at_r": 0.6 + 0.01 * seed + 0.02 * (loss == "quadruplet")})
               for loss in ("batch-all", "quadruplet") for seed in range(6)]
    cells = _with_fresh_seeds(tmp_path, records)
    fresh = cells[(cells.experiment == "e-fresh") & cells.selected].set_index("loss")
    assert fresh.loc["batch-all"].best and not fresh.loc["quadruplet"].best
    assert fresh.loc["quadruplet"].diff_map_at_r == pytest.approx(0.02)
    parent = cells[(cells.experiment == "e") & cells.selected].set_index("loss")
    assert parent.loc["batch-all"].best and not parent.loc["quadruplet"].best


def test_a_fresh_experiment_whose_best_loss_failed_compares_nothing(tmp_path: Path) -> None:
    """batch-all, best on the selection seeds, diverges on a fresh seed: e-fresh has no reference, and quadruplet is
    not compared with a reference chosen on the fresh seeds."""
    records = [trial_record("e", loss, 0.2, 8, seed, status="diverged" if (loss, seed) == ("batch-all", 4) else "ok",
                            values={"val_map_at_r": 0.9 if loss == "batch-all" else 0.8})
               for loss in ("batch-all", "quadruplet") for seed in range(6)]
    cells = _with_fresh_seeds(tmp_path, records)
    fresh = cells[cells.experiment == "e-fresh"]
    assert fresh[fresh.loss == "quadruplet"].selected.all() and not fresh.best.any()
    assert fresh.p_vs_best_map_at_r.isna().all() and fresh[fresh.selected].reference_failed.all()


def test_the_tables_detectable_difference_is_at_holms_strictest_level(tmp_path: Path) -> None:
    """Three losses compared with the best: the MDD is the 80%-power difference of a paired t-test at 0.05 / 3 for
    the pooled SD of the three comparisons' differences (at 0.05 it would promise power Holm does not give)."""
    maps = {"batch-all": [0.60, 0.63, 0.61], "batch-hard": [0.50, 0.55, 0.52], "adaptive-mu": [0.58, 0.57, 0.59],
            "quadruplet": [0.40, 0.41, 0.45]}
    records = [trial_record("m", loss, 0.2, 8, seed, values={"map_at_r": maps[loss][seed],
                                                             "val_map_at_r": 0.9 if loss == "batch-all" else 0.5})
               for loss in maps for seed in range(3)]
    write_experiment(tmp_path, "m", records, {"dataset": ["mnist"], "loss": list(maps), "margin": [0.2],
                                              "batch_size": [8], "seed": [0, 1, 2]})
    loaded = load_records(tmp_path)
    cells = stats.summarize(loaded.checkpoints, loaded.grids, ORDER)
    sds = [statistics.stdev(a - b for a, b in zip(maps[loss], maps["batch-all"], strict=True))
           for loss in maps if loss != "batch-all"]
    pooled = math.sqrt(statistics.fmean(sd * sd for sd in sds))
    expected = stats.min_detectable_difference(pooled, 3, stats.ALPHA / 3)
    got = cells[cells.selected].mdd_map_at_r
    assert got.nunique() == 1 and got.iloc[0] == pytest.approx(expected, rel=1e-9)
    assert expected > 1.5 * stats.min_detectable_difference(pooled, 3)


def test_holm_against_its_definition() -> None:
    """Holm's adjusted p-values on fixed numbers (step-down, monotone, capped at 1, NaN left out)."""
    got = stats.holm([0.01, 0.04, 0.03, math.nan, 0.005])
    assert got[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(got[3]) and got[4] == pytest.approx(0.02)
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0] and stats.holm([]) == []
    assert stats.holm([0.02, 0.02]) == [0.04, 0.04]


def test_paired_difference_matches_scipy() -> None:
    first, second = {0: 0.91, 1: 0.93, 2: 0.90, 3: 0.95}, {3: 0.94, 2: 0.90, 1: 0.91, 0: 0.88}
    result = stats.paired_difference(first, second)
    test = scipy_stats.ttest_rel([0.91, 0.93, 0.90, 0.95], [0.88, 0.91, 0.90, 0.94])
    low, high = test.confidence_interval(0.95)
    assert (result.lo, result.hi, result.p, result.n) == (pytest.approx(low), pytest.approx(high),
                                                          pytest.approx(test.pvalue), 4)
    assert result.mean == pytest.approx(0.015) and result.sd == pytest.approx(statistics.stdev([0.03, 0.02, 0, 0.01]))
    one = stats.paired_difference({0: 0.9}, {0: 0.8})
    assert one.n == 1 and one.mean == pytest.approx(0.1) and math.isnan(one.p) and math.isnan(one.lo)


def test_the_minimal_detectable_difference_has_the_stated_power() -> None:
    """At the MDD, the noncentral t gives 80% power for the two-sided paired t-test; it shrinks like 1/√n and scales
    with the SD; a table of 3 seeds cannot see what one of 10 seeds can."""
    for n in (3, 5, 10):
        mdd = stats.min_detectable_difference(0.01, n)
        critical = scipy_stats.t.ppf(0.975, n - 1)
        nc = mdd / 0.01 * math.sqrt(n)
        power = scipy_stats.nct.sf(critical, n - 1, nc) + scipy_stats.nct.cdf(-critical, n - 1, nc)
        assert power == pytest.approx(0.8, abs=1e-9)
    assert stats.min_detectable_difference(0.02, 5) == pytest.approx(2 * stats.min_detectable_difference(0.01, 5))
    assert stats.min_detectable_difference(0.01, 3) > 2 * stats.min_detectable_difference(0.01, 10)
    assert math.isnan(stats.min_detectable_difference(0.01, 1)) and math.isnan(stats.min_detectable_difference(0, 5))


def test_exact_ties_on_validation_are_both_best(tmp_path) -> None:
    """Two losses with the same mean validation MAP@R are both best; the first in loss order is the reference."""
    records = [trial_record("t", loss, 0.2, 8, seed, values={"val_map_at_r": 0.8, "map_at_r": 0.5 + 0.1 * (i + seed)})
               for i, loss in enumerate(("batch-all", "batch-hard")) for seed in (0, 1, 2)]
    write_experiment(tmp_path, "t", records, {"dataset": ["mnist"], "loss": ["batch-all", "batch-hard"],
                                              "margin": [0.2], "batch_size": [8], "seed": [0, 1, 2]})
    loaded = load_records(tmp_path)
    cells = stats.summarize(loaded.checkpoints, loaded.grids, ("batch-all", "batch-hard"))
    first, second = _cell(cells, "batch-all", 0.2, 8), _cell(cells, "batch-hard", 0.2, 8)
    assert first.best and second.best and math.isnan(first.p_vs_best_map_at_r)
    assert second.diff_map_at_r == pytest.approx(0.1)


def _value(loaded, loss: str, margin: float, batch_size: int, seed: int, metric: str) -> float:
    final = stats.final_rows(loaded.checkpoints)
    row = final[(final.loss == loss) & (final.margin == margin) & (final.batch_size == batch_size)
                & (final.seed == seed)]
    return float(row[metric].iloc[0])


def test_baseline_rows(summary) -> None:
    cells, _ = summary
    assert list(cells.loss[:2]) == ["pixels", "untrained"]
    pixels, untrained = cells.iloc[0], cells.iloc[1]
    assert math.isnan(pixels.margin) and math.isnan(pixels.batch_size) and not pixels.eligible
    assert (pixels.n_seeds, pixels.map_at_r_mean) == (1, 0.3) and math.isnan(pixels.map_at_r_ci95)
    assert untrained.n_seeds == 4
    assert untrained.map_at_r_mean == pytest.approx(statistics.mean([0.2 + s / 100 for s in SEEDS]), rel=1e-14)


def test_margin_check_and_diagnostic_events(summary) -> None:
    cells, loaded = summary
    check = stats.margin_check(cells).set_index(["loss", "margin", "batch_size"])
    assert check.loc[("batch-hard", 0.1, 16), "too_easy"] and check.loc[("batch-hard", 0.1, 16), "n_initial"] == 4
    assert not check.loc[("batch-hard", 0.1, 8), "too_easy"]
    events = stats.diagnostic_events(loaded.checkpoints)
    pinned = events[events.loss == "batch-hard"]
    assert len(pinned) == 4 and set(pinned.pinned_at_margin_first) == {1} and pinned.pinned_at_margin_escaped.all()
    collapsed = events[events.loss == "batch-all"]
    assert set(collapsed.collapsed_first) == {2} and not collapsed.collapsed_escaped.any()


def test_expected_cells_from_the_grid(tmp_path: Path) -> None:
    grid = {"axes": {"dataset": ["mnist", "cifar10"], "loss": ["batch-hard"], "margin": [0.2], "batch_size": [8],
                     "seed": [0, 1]}, "fixed": {"protocol": "unseen"}, "per_dataset": {"mnist": {"protocol": "seen"}}}
    cells = stats.expected_cells(grid, "x")
    pairs = set(zip(cells.dataset, cells.protocol, strict=True))
    assert len(cells) == 4 and pairs == {("mnist", "seen"), ("cifar10", "unseen")}


def test_the_margin_check_does_not_apply_to_a_control(tmp_path: Path) -> None:
    """A control has no margin: mostly easy triplets at the start flag a triplet loss's cell, never the control's."""
    from bench.reporting.tables import margin_table

    easy = {"initial_fraction_easy": 0.9, "initial_fraction_semihard": 0.05, "initial_fraction_hard": 0.05}
    records = [trial_record("e", loss, margin, 8, seed, values=easy)
               for loss, margin in (("batch-all", 0.2), ("normalized-softmax", 0.0)) for seed in SEEDS]
    write_experiment(tmp_path, "e", records, {"dataset": ["mnist"], "loss": ["batch-all", "normalized-softmax"],
                                              "margin": [0.0, 0.2], "batch_size": [8], "seed": SEEDS})
    loaded = load_records(tmp_path)
    cells = stats.summarize(loaded.checkpoints, loaded.grids, tuple(LOSSES))
    check = stats.margin_check(cells).set_index("loss")
    assert check.loc["batch-all", "too_easy"] and not check.loc["normalized-softmax", "too_easy"]
    rows = {row[2]: row[-1] for row in margin_table("m", cells).rows}
    assert rows == {"batch-all": "> 50% easy", "normalized-softmax": "none: no margin (a control)"}


def test_a_cells_setting_names_no_margin_for_a_control() -> None:
    """Every report text that names a selected cell (plots' titles, claims' tables) says 'B 64' for the normalised
    softmax, whose config margin 0 is no margin, and 'm 0, B 64' for a triplet loss at margin 0."""
    assert stats.setting_text("normalized-softmax", 0.0, 64.0) == "B 64"
    assert stats.setting_text("adaptive-mu", 0.0, 64.0) == "m 0, B 64"
    assert stats.setting_text("batch-all", 0.2, 256.0, " ") == "m 0.2 B 256"


def test_a_random_samplers_images_per_class_is_the_seeds_mean(tmp_path: Path) -> None:
    """Each seed's random batch plan has its own images per class (6.406, 6.407, 6.408 on CIFAR-10 at B 64): the
    cell reports their mean to 2 decimals, one number that fits its column, not the three joined."""
    records = [trial_record("x", "batch-all", 0.2, 64, seed, values={"images_per_class": 6.406 + seed / 1000})
               for seed in (0, 1, 2)]
    write_experiment(tmp_path, "x", records, {"dataset": ["mnist"], "loss": ["batch-all"], "margin": [0.2],
                                              "batch_size": [64], "seed": [0, 1, 2]})
    loaded = load_records(tmp_path)
    row = stats.summarize(loaded.checkpoints, loaded.grids, tuple(LOSSES)).query("loss == 'batch-all'").iloc[0]
    assert row.images_per_class == 6.41 and row.planned_steps == 60  # a setting proper keeps its value
