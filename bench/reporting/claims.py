"""claims.md: the source tutorial's and blog's claims, each tested on the reference records it can be tested on.

One row per claim: the cells that test it, the numbers (generated here from the records, with their intervals) and a
verdict by a stated rule. The verdict words:
- *supported*: the effect the claim predicts is detected (two-sided paired t-test over seeds, p < ALPHA; Holm over
  the claim's comparisons where it makes several; the seed is the unit, a seed's pairs over several cells averaged
  first, since a seed fixes every cell's initialisation and batches; a claim about failures, collapsed or
  diverged runs, an exact McNemar test over runs matched on setting and seed, each distinct run a separate
  training: a t-test over 3 seeds' failure rates would give p = 0 whenever every seed shows the same rate);
- *contradicted*: the opposite effect is detected, or the rule fails where the claim says it holds;
- *not detected at this n*: no effect is detected either way; at this n that is not evidence of no effect;
- *not measured yet*: no complete record tests it (the preset that will is named).
Paired comparisons pair trials on the same seed (the same initialisation and batches) and otherwise equal
settings; the differences of several cells are pooled into one test where a claim is about all of them.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import pandas as pd
from scipy import stats as scipy_stats

from bench.experiment.provenance import THREADS
from bench.reporting import stats, tables
from bench.reporting.frame import FRESH
from bench.reporting.markdown import table
from losses import LOSSES

# the experiment whose selected cells cpu-budget and cpu-seeds repeat (the cpu grid's choice too), run on their machine:
# across CPUs a seed fixes no metric (bf16 kernels round differently), so they are compared with it, not with cpu
SAME_MACHINE = "cpu-losses"


class Budget(NamedTuple):
    """A budget experiment (its cells at 1M samples) and the experiment of its 200k side (the same cells, seeds,
    precision and kind of CPU), with the words that tell its claim row apart."""

    long: str
    short: str
    label: str


# cpu-budget (bf16) pairs with SAME_MACHINE; cpu-budget-fp32 runs the question where bf16 is not native, its 200k
# side beside it (cpu-losses is bf16 on another CPU)
BUDGETS = (Budget("cpu-budget", SAME_MACHINE, ""),
           Budget("cpu-budget-fp32", "cpu-budget-fp32-200k", " (fp32)"))
RULES = (
    f"Verdicts: *supported*, the predicted effect is detected (paired t-test over seeds, p < {stats.ALPHA}, "
    "Holm-adjusted over a claim's comparisons; the seed is the unit: a seed's pairs over several cells are "
    "averaged first; a claim about failures, an exact McNemar test over matched distinct runs); *contradicted*, the "
    "opposite is detected or the stated rule fails; *not detected at this n*, neither (not evidence of no effect); "
    "*not measured yet*, no complete record tests it. Numbers: means with 95% t-intervals over seeds; Δ is a "
    "paired difference over seeds (same initialisation and batches).")


class Claim(NamedTuple):
    """One row of claims.md."""

    claim: str
    source: str
    cells: str
    numbers: str
    verdict: str


class Paired(NamedTuple):
    """A paired comparison over seeds: mean difference, its 95% t-interval, p, the seeds (n) and the paired trials
    averaged into them (`trials`; `dropped`: pairs left out because both trials collapsed)."""

    mean: float
    lo: float
    hi: float
    p: float
    n: int
    trials: int = 0
    dropped: int = 0


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if not math.isfinite(value) else tables.signed(value, digits)


def _p(p: float) -> str:
    return "p n/a" if not math.isfinite(p) else tables.p_clause(p)


def _delta(result: Paired, digits: int = 3) -> str:
    """A paired difference and its 95% t-interval: "+0.020 [−0.002, +0.043]"."""
    return f"{_fmt(result.mean, digits)} [{_fmt(result.lo, digits)}, {_fmt(result.hi, digits)}]"


def _paired_text(result: Paired, what: str, digits: int = 3) -> str:
    pooled = f" ({result.trials} paired trials, averaged within each seed)" if result.trials > result.n else ""
    dropped = f", {result.dropped} pairs of two collapsed trials left out" if result.dropped else ""
    return f"{what} Δ {_delta(result, digits)}, {_p(result.p)}, n = {result.n} seeds{pooled}{dropped}"


def _direction(result: Paired | Failures, predicted: int, p: float | None = None) -> str:
    """The verdict of one comparison whose predicted sign is `predicted` (+1 or −1), at its (adjusted) p (for
    failures, +1: the first side fails more often)."""
    p = result.p if p is None else p
    if not math.isfinite(p) or p >= stats.ALPHA:
        return "not detected at this n"
    return "supported" if math.copysign(1, result.mean) == predicted else "contradicted"


def paired(final: pd.DataFrame, first: pd.Series, second: pd.Series, on: list[str], metric: str,
           both_collapsed: bool = True) -> Paired:
    """first − second of `metric` over the trials the two masks select, matched on the columns `on` and seed, with
    the seed as the unit: a seed fixes the initialisation and batches of every cell, so its pairs are averaged
    before the paired t-test over seeds. Without `both_collapsed`, pairs whose two trials both collapsed are left
    out (the gap between two collapsed nets says nothing of how they learn)."""
    keys = [*on, "seed"]
    left = final[first & final.status.isin(stats.IN_MEAN)][[*keys, metric, "status"]]
    right = final[second & final.status.isin(stats.IN_MEAN)][[*keys, metric, "status"]]
    merged = left.merge(right, on=keys, suffixes=("_a", "_b")).dropna(subset=[f"{metric}_a", f"{metric}_b"])
    both = (merged.status_a == "collapsed") & (merged.status_b == "collapsed")
    dropped = 0 if both_collapsed else int(both.sum())
    if not both_collapsed:
        merged = merged[~both]
    per_seed = merged.groupby("seed")[[f"{metric}_a", f"{metric}_b"]].mean()
    diff = stats.paired_difference(per_seed[f"{metric}_a"].to_dict(), per_seed[f"{metric}_b"].to_dict())
    return Paired(diff.mean, diff.lo, diff.hi, diff.p, diff.n, len(merged), dropped)


class Failures(NamedTuple):
    """Matched runs of two sides: how many failed on each, the pairs where only one failed, and the exact McNemar
    p over those (NaN when no pair is discordant)."""

    first: int
    second: int
    pairs: int
    only_first: int
    only_second: int
    p: float

    @property
    def mean(self) -> int:
        """The signed excess of the first side's lone failures (its sign is what _direction reads)."""
        return self.only_first - self.only_second


def failures(final: pd.DataFrame, first: pd.Series, second: pd.Series, on: list[str]) -> Failures:
    """Failed (collapsed or diverged) runs of the first trials against the second's, matched on `on` and seed; OOM
    and error trials (the machine's failures, not the training's) are left out. A run identical to another of its
    side and seed but for the margin (batch-hard's gradient does not depend on m while every hinge is active, so
    its collapsed runs are the same computation at every margin) is counted once: the test is the exact McNemar
    test over distinct runs, each a separate training."""
    trained = final.status.isin(("ok", "collapsed", "diverged"))
    keys = [*on, "seed"]
    same = [key for key in keys if key != "margin"] + ["map_at_r", "val_map_at_r"]
    flags = final.assign(failed=final.status.isin(("collapsed", "diverged")))
    sides = [flags[mask & trained].drop_duplicates(subset=same)[[*keys, "failed"]] for mask in (first, second)]
    merged = sides[0].merge(sides[1], on=keys, suffixes=("_a", "_b"))
    only_first = int((merged.failed_a & ~merged.failed_b).sum())
    only_second = int((merged.failed_b & ~merged.failed_a).sum())
    discordant = only_first + only_second
    p = scipy_stats.binomtest(only_first, discordant).pvalue if discordant else math.nan
    return Failures(int(merged.failed_a.sum()), int(merged.failed_b.sum()), len(merged), only_first, only_second,
                    float(p))


def _failures_text(result: Failures, first: str, second: str) -> str:
    return (f"failed in {result.pairs} matched distinct runs: {first} {result.first}, {second} {result.second}; only "
            f"{first} failed in {result.only_first}, only {second} in {result.only_second}, exact McNemar "
            f"{_p(result.p)}")


def _counts(final: pd.DataFrame, mask: pd.Series) -> str:
    """'c/n collapsed[, d diverged]' of the trials `mask` selects."""
    chosen = final[mask]
    diverged = int((chosen.status == "diverged").sum())
    return (f"{int((chosen.status == 'collapsed').sum())}/{len(chosen)} collapsed"
            + (f", {diverged} diverged" if diverged else ""))


def _samples(trials: pd.DataFrame, size: int) -> str:
    """'800,000 samples (3,125 steps)': what the trials of batch size `size` saw (the first, when they differ)."""
    row = trials[trials.batch_size == size].iloc[0]
    return f"{row.samples_seen:,.0f} samples ({row.samples_seen / size:,.0f} steps)"


def _trials(final: pd.DataFrame, experiment: str) -> pd.DataFrame:
    return final[(final.experiment == experiment) & (final.kind == "trial")]


def _complete(summary: pd.DataFrame, experiment: str) -> bool:
    """Whether the experiment exists and every cell of its grid has all its seeds recorded."""
    cells = summary[summary.experiment == experiment]
    return bool(len(cells)) and not stats.missing_cells(cells).shape[0]


def _pending(experiment: str, summary: pd.DataFrame) -> str:
    cells = summary[summary.experiment == experiment]
    if not len(cells):
        return f"not measured yet (preset {experiment} not run)"
    missing = stats.missing_cells(cells).shape[0]
    cells_lack = "1 cell still lacks" if missing == 1 else f"{missing} cells still lack"
    return f"not measured yet ({experiment}: {cells_lack} seeds)"


def margin_rule(summary: pd.DataFrame, final: pd.DataFrame) -> Claim:
    """The tutorial's rule: a margin with at most half the triplets easy at the start."""
    claim = Claim("choose the margin so that at most 50% of triplets are easy at the start", "tutorial",
                  "cpu: every cell's margin check (train mode, first 8 batches) against its validation MAP@R, per "
                  "dataset, loss and batch size",
                  "", "")
    if not _complete(summary, "cpu"):
        return claim._replace(verdict=_pending("cpu", summary))
    cells = summary[(summary.experiment == "cpu") & summary.eligible]
    parts, widest = [], 0.0
    for (dataset, loss, size), group in cells.groupby(["dataset", "loss", "batch_size"], sort=True):
        passing = group[group.initial_fraction_easy_mean <= stats.EASY_LIMIT]
        best = group.loc[group.val_map_at_r_mean.idxmax()]
        if len(passing) > 1:  # margins to choose among
            widest = max(widest, passing.val_map_at_r_mean.max() - passing.val_map_at_r_mean.min())
            parts.append(f"{dataset} {loss} B {size:g}: {len(passing)}/{len(group)} margins pass, val MAP@R "
                         f"{passing.val_map_at_r_mean.min():.3f}–{passing.val_map_at_r_mean.max():.3f}"
                         f"{'' if best.initial_fraction_easy_mean <= stats.EASY_LIMIT else ', best fails'}")
    detectable = float(summary[(summary.experiment == "cpu") & summary.selected].mdd_map_at_r.max())
    rule = (f"Rule: contradicted if the cells that pass span more validation MAP@R than a headline table detects "
            f"({detectable:.3f}): the rule then admits margins that are measurably worse.")
    if not parts or not math.isfinite(detectable):
        return claim._replace(numbers="; ".join(parts), verdict="not measured yet (no two passing margins to "
                                                                "choose among, or no detectable difference)")
    verdict = "contradicted (the rule does not select)" if widest > detectable else "not detected at this n"
    return claim._replace(numbers="; ".join(parts) + f". Widest span {widest:.3f}. {rule}", verdict=verdict)


def larger_batches(summary: pd.DataFrame, final: pd.DataFrame) -> Claim:
    """Larger batches give online mining more, and harder, triplets."""
    claim = Claim("larger batches (512) improve online mining", "tutorial",
                  "cpu: the largest batch against the smallest at equal samples (same dataset, loss, margin, seed); "
                  "cpu-batch: the largest batch against the smallest at equal steps and at equal samples; cpu-budget: "
                  "the smallest batch run to more samples, against the largest equal-steps batch that saw fewer",
                  "", "")
    if not _complete(summary, "cpu"):
        return claim._replace(verdict=_pending("cpu", summary))
    trials = final[(final.experiment == "cpu") & (final.kind == "trial")]
    datasets = sorted(trials.dataset.unique())
    small, large = int(trials.batch_size.min()), int(trials.batch_size.max())
    results = [paired(trials, (trials.dataset == d) & (trials.batch_size == large),
                      (trials.dataset == d) & (trials.batch_size == small), ["dataset", "loss", "margin", "variant"],
                      "map_at_r", both_collapsed=False) for d in datasets]
    adjusted = stats.holm([r.p for r in results])
    parts = [_paired_text(r, f"{d} test MAP@R (B {large} − B {small}, equal samples: B {small} takes "
                             f"{large // small}× the updates; every loss and margin)") + f", Holm {_p(p)}"
             for d, r, p in zip(datasets, results, adjusted, strict=True)]
    verdicts = [_direction(r, +1, p) for r, p in zip(results, adjusted, strict=True)]
    verdict = "at equal samples " + " / ".join(f"{d}: {v}" for d, v in zip(datasets, verdicts, strict=True))
    if not _complete(summary, "cpu-batch"):
        return claim._replace(numbers="; ".join(parts) + "; equal steps: " + _pending("cpu-batch", summary)
                              + ". Holm over the datasets.", verdict=verdict)
    budget = _trials(final, "cpu-budget") if _complete(summary, "cpu-budget") else None
    batch_parts, batch_verdicts = _batch_size_tests(_trials(final, "cpu-batch"), budget)
    tests = {2: "two", 3: "three"}
    return claim._replace(numbers="; ".join(parts) + ". Holm over the datasets; " + "; ".join(batch_parts)
                          + f". Holm over cpu-batch's {tests[len(batch_parts)]}.",
                          verdict=f"{verdict}; cpu-batch {batch_verdicts}")


def _batch_size_tests(trials: pd.DataFrame, budget: pd.DataFrame | None) -> tuple[list[str], str]:
    """cpu-batch's largest batch against its smallest, paired over seeds, in each of its blocks: at equal steps
    (budget_steps set; the larger batch sees more samples) and at equal samples (no step limit, the lr scaled by
    √B). With cpu-budget's trials (the smallest batch's cell run to more samples), a third: the largest equal-steps
    batch that saw no more samples than they did, against them; if it still leads, more samples alone do not explain
    the gain at equal steps. The numbers and the verdicts."""
    steps = trials[trials.budget_steps.notna()]
    blocks = [("at equal steps", steps, "sees {k}× the samples"),
              ("at equal samples (√-scaled lr)", trials[trials.budget_steps.isna()], "takes 1/{k} of the steps")]
    results, labels = [], []
    for name, block, cost in blocks:
        small, large = int(block.batch_size.min()), int(block.batch_size.max())
        results.append(paired(block, block.batch_size == large, block.batch_size == small,
                              ["dataset", "loss", "margin"], "map_at_r", both_collapsed=False))
        labels.append((name, f"{name}: test MAP@R (B {large} − B {small}; B {large} {cost.format(k=large // small)})"))
    small = int(steps.batch_size.min())
    longer = (budget[budget.batch_size == small].merge(steps[["dataset", "loss", "margin"]].drop_duplicates())
              if budget is not None else steps.iloc[:0])
    fewer = steps[steps.samples_seen <= longer.samples_seen.min()] if len(longer) else steps.iloc[:0]
    if len(fewer) and (large := int(fewer.batch_size.max())) > small:
        both = pd.concat([fewer[fewer.batch_size == large], longer])
        results.append(paired(both, both.experiment == "cpu-batch", both.experiment == "cpu-budget",
                              ["dataset", "loss", "margin"], "map_at_r", both_collapsed=False))
        name = f"B {large} on fewer samples"
        labels.append((name, f"{name}: test MAP@R (B {large} at {_samples(fewer, large)} − B {small} at "
                             f"{_samples(longer, small)}, cpu-budget)"))
    adjusted = stats.holm([r.p for r in results])
    parts = [_paired_text(r, label) + f", Holm {_p(p)}" for r, (_, label), p in zip(results, labels, adjusted,
                                                                                     strict=True)]
    verdicts = " / ".join(f"{name}: {_direction(r, +1, p)}" for r, (name, _), p in zip(results, labels, adjusted,
                                                                                        strict=True))
    return parts, verdicts


def batch_hard_unstable(summary: pd.DataFrame, final: pd.DataFrame) -> Claim:
    """Batch-hard alone fails (collapses or diverges) where batch-all, in the same settings, does not: the runs of
    the settings both ran, matched on setting and seed (an exact McNemar test)."""
    claim = Claim("batch-hard alone may be unstable", "tutorial",
                  "cpu and cpu-losses: failed (collapsed or diverged) trials of batch-hard against batch-all in the "
                  "settings both ran (dataset, margin, batch size, lr, seed)", "", "")
    trials = final[final.kind == "trial"]
    if trials.empty:
        return claim._replace(verdict="not measured yet")
    parts, tests, pending = [], [], []
    for (experiment, dataset), group in trials.groupby(["experiment", "dataset"], sort=True):
        if experiment.endswith(FRESH) or experiment not in ("cpu", "cpu-losses"):
            continue
        if not _complete(summary, experiment):  # only experiments with every seed recorded count
            pending.append(_pending(experiment, summary).removeprefix("not measured yet (").removesuffix(")"))
            continue
        if not {"batch-hard", "batch-all"} <= set(group.loss):
            continue
        counts = ", ".join(f"{loss} {_counts(group, group.loss == loss)}"
                           for loss in ("batch-hard", "batch-all", "batch-hard-soft") if loss in set(group.loss))
        result = failures(group, group.loss == "batch-hard", group.loss == "batch-all",
                          ["dataset", "margin", "batch_size", "variant"])
        tests.append(result)
        parts.append((f"{experiment} {dataset}: {counts}", result))
    adjusted = stats.holm([r.p for r in tests])
    texts = [f"{where}; " + _failures_text(result, "batch-hard", "batch-all") + f", Holm {_p(p)}"
             for (where, result), p in zip(parts, adjusted, strict=True)]
    verdicts = [_direction(result, +1, p) for result, p in zip(tests, adjusted, strict=True)]
    remedies = _remedies(final) if _complete(summary, "cpu-losses") else ""
    rule = ("Rule: supported where batch-hard fails detectably more often than batch-all in the same settings "
            "(exact McNemar test over matched distinct runs, Holm over the experiments and datasets); "
            "contradicted where it fails detectably less often and nowhere more.")
    waiting = f" Not counted yet: {'; '.join(sorted(set(pending)))}." if pending else ""
    if not texts:
        return claim._replace(numbers=waiting.strip(), verdict="not measured yet")
    verdict = ("supported" if "supported" in verdicts else
               "contradicted" if "contradicted" in verdicts else "not detected at this n")
    return claim._replace(numbers="; ".join(texts) + (f"; {remedies}" if remedies else "") + f". {rule}{waiting}",
                          verdict=verdict)


def _remedies(final: pd.DataFrame) -> str:
    """cpu-losses: batch-hard's collapsed trials per learning rate, and the soft margin's."""
    trials = _trials(final, "cpu-losses")
    hard = trials[trials.loss.isin(["batch-hard", "batch-hard-soft"])]
    if hard.empty:
        return ""
    groups = hard.groupby(["loss", "variant"], sort=True)
    return "cpu-losses by lr: " + ", ".join(f"{loss} [{variant}] {int((g.status == 'collapsed').sum())}/{len(g)}"
                                            for (loss, variant), g in groups)


def _headline_row(summary: pd.DataFrame, experiment: str, loss: str) -> pd.Series | None:
    rows = summary[(summary.experiment == experiment) & summary.selected & (summary.loss == loss)]
    return rows.iloc[0] if len(rows) else None


def _top_triplet(summary: pd.DataFrame, chooser: str, cells: pd.DataFrame) -> pd.Series | None:
    """Of `cells` (one experiment's selected cells), the triplet loss's that is best on validation in experiment
    `chooser`, the selection seeds' (so a fresh-seed experiment's own seeds choose nothing); None when that loss
    has no selected cell among `cells` (a fresh seed of it failed)."""
    chosen = summary[(summary.experiment == chooser) & summary.selected & summary.loss.isin(LOSSES)
                     & summary.dataset.isin(cells.dataset)]
    if chosen.empty:
        return None
    rows = cells[cells.loss == chosen.loc[chosen.val_map_at_r_mean.idxmax()].loss]
    return rows.iloc[0] if len(rows) else None


def _fresh_pending(summary: pd.DataFrame, experiment: str) -> str | None:
    """None once `experiment` and its fresh seeds (the test numbers to cite) are complete, else the verdict that
    says what is missing: a claim on the selection seeds' test numbers would carry their winner's curse."""
    if not _complete(summary, experiment):
        return _pending(experiment, summary)
    if not _complete(summary, f"{experiment}{FRESH}"):
        return f"not measured yet (the fresh seeds of {experiment}, the test numbers to cite, are not complete)"
    return None


def semi_hard(summary: pd.DataFrame, final: pd.DataFrame) -> Claim:
    """FaceNet's semi-hard negatives: a good balance between easy and hardest."""
    claim = Claim("semi-hard mining gives a good balance (FaceNet)", "tutorial",
                  "cpu-losses' fresh seeds: semi-hard's validation-selected cell against the best triplet loss's "
                  "(the control left out) and against batch-hard's", "", "")
    waiting = _fresh_pending(summary, "cpu-losses")
    if waiting:
        return claim._replace(verdict=waiting)
    experiment = f"cpu-losses{FRESH}"
    row = _headline_row(summary, experiment, "semi-hard")
    hard = _headline_row(summary, experiment, "batch-hard")
    same = summary[(summary.experiment == experiment) & summary.selected & (summary.dataset == row.dataset)
                   & (summary.protocol == row.protocol)] if row is not None else summary.iloc[:0]
    top = _top_triplet(summary, "cpu-losses", same)
    if row is not None and hard is not None and (hard.dataset, hard.protocol) != (row.dataset, row.protocol):
        hard = None  # semi-hard is compared within its own dataset and protocol
    if row is None or top is None or hard is None:
        return claim._replace(verdict="not measured yet (the fresh seeds of semi-hard, batch-hard or the best triplet "
                                      "loss failed)")
    trials = _trials(final, experiment)
    none = Paired(math.nan, math.nan, math.nan, math.nan, 0)

    def versus(other: pd.Series | None) -> Paired:
        if other is None or other.loss == "semi-hard":
            return none
        return paired(trials, stats.in_cell(trials, row), stats.in_cell(trials, other), ["dataset"], "map_at_r")

    versus_top, versus_hard = versus(top), versus(hard)
    p_top, p_hard = stats.holm([versus_top.p, versus_hard.p])
    best = ("the best triplet loss on validation" if top.loss == "semi-hard"
            else _paired_text(versus_top, f"against the best triplet loss on validation ({top.loss}):")
            + f", Holm {_p(p_top)}")
    worse = _direction(versus_top, +1, p_top) == "contradicted"
    better_than_hard = _direction(versus_hard, +1, p_hard) == "supported"
    verdict = "contradicted" if worse else ("supported" if better_than_hard else "not detected at this n")
    return claim._replace(
        numbers=(f"{experiment}: {tables.loss_text(row)} m {row.margin:g} test MAP@R "
                 f"{tables.interval(row, 'map_at_r')}; {best}; "
                 + _paired_text(versus_hard, "against batch-hard's selected cell:") + f", Holm {_p(p_hard)}"
                 + ". Rule: supported if it is not detected worse than the best triplet loss and detected better than "
                   "batch-hard; contradicted if detected worse than the best triplet loss (Holm over the two)."),
        verdict=verdict)


def normalisation(summary: pd.DataFrame, final: pd.DataFrame) -> Claim:
    """L2 normalisation stabilises training: normalised soft-margin batch-hard trials fail (collapse or diverge) less
    often than unnormalised ones of the same lr and seed (an exact McNemar test over the matched runs)."""
    claim = Claim("L2 normalisation stabilises training", "tutorial",
                  "cpu-losses: soft-margin batch-hard with L2 normalisation on against off (same lr and seed)", "", "")
    trials = _trials(final, "cpu-losses")
    soft = trials[trials.loss == "batch-hard-soft"]
    if not _complete(summary, "cpu-losses") or soft.empty:
        return claim._replace(verdict=_pending("cpu-losses", summary))
    soft = soft.assign(setting=[  # the cell's variant but normalize: what an on and an off trial share
        json.dumps({k: v for k, v in json.loads(values).items() if k != "normalize"}, sort_keys=True)
        for values in soft.variant_values])
    on, off = soft.normalize.eq(True), soft.normalize.eq(False)
    keys = ["dataset", "margin", "batch_size", "setting"]
    result = failures(soft, on, off, keys)
    score = paired(soft, on, off, keys, "map_at_r", both_collapsed=False)
    return claim._replace(
        numbers=(f"on: {_counts(soft, on)}; off: {_counts(soft, off)}; " + _failures_text(result, "on", "off") + "; "
                 + _paired_text(score, "test MAP@R (on − off), every lr pooled:")
                 + " (not the rule: a collapsed trial's MAP@R says nothing of stability). Rule: supported if "
                   "normalised runs fail detectably less often (exact McNemar test over runs matched on lr and "
                   "seed)."),
        verdict=_direction(result, -1))


def quadruplet_compactness(summary: pd.DataFrame, final: pd.DataFrame) -> Claim:
    """The blog: the quadruplet term tightens classes and separates them further than its triplet term alone."""
    claim = Claim("quadruplet gives smaller intra-class and larger inter-class distances", "blog",
                  "cpu-losses: quadruplet against adaptive-mu (its own triplet term) at the same margin, lr and seed: "
                  "mean intra-class over inter-class distance of the whole test set", "", "")
    trials = _trials(final, "cpu-losses")
    if not _complete(summary, "cpu-losses") or "intra_class_distance" not in trials:
        return claim._replace(verdict=_pending("cpu-losses", summary))
    trials = trials.assign(class_ratio=trials.intra_class_distance / trials.inter_class_distance)
    on = ["dataset", "margin", "batch_size", "variant"]
    ratio, intra, inter, score = (paired(trials, trials.loss == "quadruplet", trials.loss == "adaptive-mu", on, metric)
                                  for metric in ("class_ratio", "intra_class_distance", "inter_class_distance",
                                                 "map_at_r"))
    return claim._replace(
        numbers=(_paired_text(ratio, "intra/inter ratio (quadruplet − adaptive-mu):") + "; "
                 + _paired_text(intra, "intra-class distance:") + "; " + _paired_text(inter, "inter-class distance:")
                 + "; " + _paired_text(score, "test MAP@R:")
                 + ". Rule: supported if quadruplet's ratio is lower (the ratio is what 'tighter and further apart' "
                   "means whatever the embeddings' scale; the two distances are shown for the reader)."),
        verdict=_direction(ratio, -1))


def three_seeds(summary: pd.DataFrame, final: pd.DataFrame) -> Claim:
    """n = 3 seeds rank the losses."""
    claim = Claim("3 seeds are enough to rank the losses", "common practice (both sources report one run)",
                  "every complete experiment's headline tables: the minimal detectable MAP@R difference (80% power) "
                  "and which comparisons survive Holm; and cpu-seeds (n = 10) against cpu-losses-fresh (n = 3) on the "
                  "same cells and machine", "", "")
    complete = [name for name in summary.experiment.unique() if _complete(summary, name) and name != "cpu-seeds"]
    selected = summary[summary.selected & summary.experiment.isin(complete)]
    if selected.empty:
        return claim._replace(verdict="not measured yet")
    parts, ranked_all = [], True
    for (experiment, dataset, protocol), group in selected.groupby(["experiment", "dataset", "protocol"], sort=True):
        where = f"{experiment} {dataset}" + ("" if protocol == "seen" else f" ({protocol})")
        compared = group[group.p_holm_map_at_r.notna()]
        detected = compared[compared.p_holm_map_at_r < stats.ALPHA]
        ranked_all &= len(detected) == len(compared)
        parts.append(f"{where}: detects {group.mdd_map_at_r.max():.3f}, {len(detected)} of "
                     f"{len(compared)} differences from the best detected")
    rule = "Rule: supported if every difference from the best is detected in every table."
    tested = selected.p_holm_map_at_r.notna().any()
    verdict = ("not measured yet (no table has a comparison)" if not tested else "supported" if ranked_all
               else "not detected at this n (some gaps are below what n = 3 resolves)")
    cited = f"{SAME_MACHINE}{FRESH}"  # its selected cells on seeds 3-5: the cells cpu-seeds runs on seeds 6-15
    if not (_complete(summary, "cpu-seeds") and _complete(summary, cited)):
        waiting = _pending("cpu-seeds" if _complete(summary, cited) else cited, summary)
        return claim._replace(numbers="; ".join(parts) + f". {rule} n = 10: {waiting}.", verdict=verdict)
    ten = _trials(final, "cpu-seeds")
    three = _trials(final, cited)
    three = three[three.dataset.isin(set(ten.dataset)) & three.protocol.isin(set(ten.protocol))]
    order = list(ten.groupby("loss").map_at_r.mean().sort_values(ascending=False).index)  # the better first
    many, few = _seed_pairs(ten, order), _seed_pairs(three, order)
    found = {pair: result for pair, result in many.items() if pair in few and result.p < stats.ALPHA}
    missed = [f"{a} − {b}" for (a, b) in found if not few[(a, b)].p < stats.ALPHA]
    flipped = [f"{a} − {b}" for (a, b), result in found.items()
               if few[(a, b)].p < stats.ALPHA and math.copysign(1, result.mean) != math.copysign(1, few[(a, b)].mean)]
    texts = [f"{label}: " + "; ".join(_paired_text(r, f"{a} − {b}").replace(_p(r.p), f"Holm {_p(r.p)}")
                                      for (a, b), r in pairs.items())
             for label, pairs in (("n = 10 (cpu-seeds, test MAP@R)" + _off_selection(summary, "cpu-seeds"), many),
                                  (f"n = 3 ({cited}, the same cells)", few))]
    rule = ("Rule, on the cells both ran (once cpu-seeds is complete, this decides): contradicted if n = 10 detects "
            "a gap that n = 3 did not, or the opposite sign; supported if n = 10 detects gaps and n = 3 found each "
            "with the same sign; not detected if n = 10 detects none (Holm over each n's pairs).")
    verdict = (f"contradicted (n = 3 missed {', '.join(missed + flipped)})" if missed or flipped
               else "supported (n = 3 found every gap that n = 10 detects)" if found
               else "not detected at this n (n = 10 detects no gap either)")
    return claim._replace(numbers="; ".join(parts) + ". " + ". ".join(texts) + f". {rule}", verdict=verdict)


def control_baseline(summary: pd.DataFrame, final: pd.DataFrame) -> Claim:
    """MLRC's finding, tested here: the best triplet loss against the normalised-softmax control."""
    claim = Claim("online triplet mining learns better embeddings than a classification loss", "implied by both "
                  "sources (MLRC, Musgrave et al. 2020, found it mostly does not)",
                  "cpu-losses (seen classes) and cpu-unseen (unseen), their fresh seeds: the best triplet loss on "
                  "validation against the normalised softmax's selected cell (each one's tuning budget is in its "
                  "headline)", "", "")
    done = [name for name in ("cpu-losses", "cpu-unseen") if _fresh_pending(summary, name) is None]
    if not done:
        return claim._replace(verdict=_fresh_pending(summary, "cpu-losses") or "not measured yet")
    results, knn, labels = [], [], []
    for name in done:
        cited = f"{name}{FRESH}"
        cells = summary[(summary.experiment == cited) & summary.selected & (summary.dataset == "cifar10")]
        triplets, control = cells[cells.loss.isin(LOSSES)], cells[cells.loss == "normalized-softmax"]
        top = _top_triplet(summary, name, triplets)
        if top is None or control.empty:
            continue
        baseline = control.iloc[0]
        trials = _trials(final, cited)
        first, second = stats.in_cell(trials, top), stats.in_cell(trials, baseline)
        results.append(paired(trials, first, second, ["dataset"], "map_at_r"))
        knn.append(paired(trials, first, second, ["dataset"], "knn_accuracy"))
        labels.append(f"{cited}: {top.loss} − normalized-softmax")
    if not results:
        return claim._replace(verdict="not measured yet (no finished fresh cell of the control or of the best "
                                      "triplet loss)")
    adjusted, adjusted_knn = stats.holm([r.p for r in results]), stats.holm([r.p for r in knn])
    verdicts = [_direction(r, +1, p) + ("" if _direction(k, +1, q) == _direction(r, +1, p)
                                        else f" (on k-NN accuracy: {_direction(k, +1, q)})")
                for r, p, k, q in zip(results, adjusted, knn, adjusted_knn, strict=True)]
    numbers = "; ".join(_paired_text(r, f"{label}, test MAP@R") + f", Holm {_p(p)}; "
                        + _paired_text(k, "test k-NN accuracy") + f", Holm {_p(q)}"
                        for r, label, p, k, q in zip(results, labels, adjusted, knn, adjusted_knn, strict=True))
    waiting = "".join(f"; {_fresh_pending(summary, name)}" for name in ("cpu-losses", "cpu-unseen")
                      if name not in done)
    return claim._replace(numbers=numbers + waiting + ". Rule: supported if the best triplet loss is detected "
                          "better than the control on test MAP@R (MLRC's primary metric), contradicted if detected "
                          "worse (Holm over the protocols); a different verdict on k-NN accuracy is named beside it.",
                          verdict=" / ".join(f"{label.split(':')[0]}: {v}" for label, v in zip(labels, verdicts,
                                                                                               strict=True)))


def _seed_pairs(trials: pd.DataFrame, order: list[str], cells: pd.DataFrame | None = None
                ) -> dict[tuple[str, str], Paired]:
    """Every pair (a, b) of `order`'s losses (a first) that `trials` holds: a − b of test MAP@R paired over seeds,
    with Holm's p over the pairs in place of the raw p. A loss's trials are those of its row in `cells` where given
    (an experiment with several cells per loss), else all of its trials (one cell each per dataset)."""
    order = [loss for loss in order if loss in set(trials.loss) and (cells is None or loss in set(cells.loss))]

    def side(loss: str) -> pd.Series:
        return trials.loss == loss if cells is None else stats.in_cell(trials, cells[cells.loss == loss].iloc[0])

    pairs = {(a, b): paired(trials, side(a), side(b), ["dataset"], "map_at_r")
             for i, a in enumerate(order) for b in order[i + 1:]}
    adjusted = stats.holm([r.p for r in pairs.values()])
    return {key: r._replace(p=p) for (key, r), p in zip(pairs.items(), adjusted, strict=True)}


def batch_table(summary: pd.DataFrame) -> list[list[str]]:
    """cpu-batch's rows: per batch size, the cell at equal steps (a budget_steps variant) and at equal samples (the
    lr scaled by √B), each with its samples, steps, lr and test MAP@R; [] without the experiment."""
    cells = summary[(summary.experiment == "cpu-batch") & ~summary.loss.isin(stats.BASELINES)]
    rows = []
    for size in sorted(cells.batch_size.dropna().unique()):
        at = cells[cells.batch_size == size]
        steps = at[at.variant.str.contains("budget_steps") & ~at.variant.str.contains("budget_steps default")]
        samples = at[at.variant.str.contains("lr_scaling sqrt")]
        row = [f"{size:g}"]
        for chosen in (steps, samples):
            if chosen.empty:
                row += ["–", "–"]
                continue
            cell = chosen.iloc[0]
            if not math.isfinite(float(cell.planned_steps)):  # no record of the cell yet: nothing to state
                row += ["not run yet", "–"]
                continue
            steps_planned = float(cell.planned_steps)
            row += [f"{steps_planned * size:,.0f} samples, {steps_planned:,.0f} steps, lr {float(cell.lr):.2g}",
                    str(tables.interval(cell, "map_at_r"))]
        rows.append(row)
    return rows


def _ranking(cells: pd.DataFrame) -> list[str]:
    """The losses of selected cells, best test MAP@R mean first."""
    return list(cells.sort_values("map_at_r_mean", ascending=False, kind="stable").loss)


def _off_selection(summary: pd.DataFrame, experiment: str) -> str:
    """' (cells other than cpu-losses' selection: …)' when a loss's cell in `experiment` (cpu-budget, cpu-seeds:
    run on SAME_MACHINE's validation-selected CIFAR-10 cells) has another margin, batch size or lr than it
    selected; else ''."""
    chosen = summary[(summary.experiment == SAME_MACHINE) & summary.selected]
    cells = summary[(summary.experiment == experiment) & ~summary.loss.isin(stats.BASELINES)]
    wrong = [f"{row.loss} m {row.margin:g} B {row.batch_size:g} lr {row.lr:g}" for row in cells.itertuples()
             if not ((chosen.dataset == row.dataset) & (chosen.loss == row.loss) & (chosen.margin == row.margin)
                     & (chosen.batch_size == row.batch_size) & (chosen.lr == row.lr)).any()]
    return f" (cells other than {SAME_MACHINE}' selection: {', '.join(wrong)})" if wrong else ""


def _budget_cells(summary: pd.DataFrame, budget: Budget) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The selected cells of budget.short (200k samples) of budget.long's datasets and losses, and budget.long's
    own."""
    long = summary[(summary.experiment == budget.long) & summary.selected]
    short = summary[(summary.experiment == budget.short) & summary.selected & summary.dataset.isin(set(long.dataset))
                    & summary.loss.isin(set(long.loss))]
    return short, long


def budget_table(summary: pd.DataFrame, final: pd.DataFrame, budget: Budget = BUDGETS[0]) -> list[list[str]]:
    """Per loss of budget.long: its cell's test MAP@R at 200k samples (budget.short's selected cell) and at 1M,
    with the rank at each, and 1M − 200k paired over seeds (the same seeds, machine and config but the budget);
    [] without budget.long."""
    short, long = _budget_cells(summary, budget)
    if long.empty or short.empty:
        return []
    ranks = {name: {loss: i + 1 for i, loss in enumerate(_ranking(cells))} for name, cells in
             (("short", short), ("long", long))}
    trials = pd.concat([_trials(final, budget.short), _trials(final, budget.long)])
    rows = []
    for loss in _ranking(short):
        before, after = short[short.loss == loss].iloc[0], long[long.loss == loss].iloc[0]
        gain = paired(trials, (trials.experiment == after.experiment) & stats.in_cell(trials, after),
                      (trials.experiment == before.experiment) & stats.in_cell(trials, before), ["dataset"], "map_at_r")
        rows.append([loss, f"{before.margin:g}", str(tables.interval(before, "map_at_r")), str(ranks["short"][loss]),
                     str(tables.interval(after, "map_at_r")), str(ranks["long"].get(loss, "–")),
                     f"{_delta(gain)} (n = {gain.n}, {_p(gain.p)})"])
    return rows


def budget_ranking(summary: pd.DataFrame, final: pd.DataFrame, budget: Budget = BUDGETS[0]) -> Claim:
    """The ranking at 200k samples is the ranking at 1M (budget.short against budget.long): judged pair by pair,
    each pair's gap paired over seeds at each budget, Holm over the pairs within a budget."""
    claim = Claim(f"the ranking at 200k samples holds at 1M samples{budget.label}", "this benchmark's own budget",
                  f"{budget.short} (200k samples) against {budget.long} (its selected CIFAR-10 cells at 1M samples, "
                  "seeds 0-2, the same precision and kind of CPU)", "", "")
    if not _complete(summary, budget.long) or not _complete(summary, budget.short):
        waiting = [name for name in (budget.long, budget.short) if not _complete(summary, name)]
        return claim._replace(verdict="; ".join(_pending(name, summary) for name in waiting))
    short, long = _budget_cells(summary, budget)
    before, after = _ranking(short), _ranking(long)
    order = [loss for loss in before if loss in after]
    at_short = _seed_pairs(_trials(final, budget.short), order, short)
    at_long = _seed_pairs(_trials(final, budget.long), order, long)
    pairs = [pair for pair in at_short if pair in at_long]
    resolved = [pair for pair in pairs if _direction(at_short[pair], +1) == "supported"]
    if any(_direction(at_long[pair], +1) == "contradicted" for pair in pairs):
        verdict = "contradicted"
    elif resolved and all(_direction(at_long[pair], +1) == "supported" for pair in resolved):
        verdict = "supported"
    else:
        verdict = "not detected at this n"

    def gap_text(gap: Paired) -> str:
        noise = _direction(gap, +1) == "not detected at this n"
        return f"{_delta(gap)} (Holm {_p(gap.p)}{', within the noise' if noise else ''})"

    gaps = "; ".join(f"{a} − {b}: {gap_text(at_short[a, b])} at 200k, {gap_text(at_long[a, b])} at 1M"
                     for a, b in pairs)
    numbers = (f"ranking by test MAP@R at 200k: {' > '.join(before)}; at 1M: {' > '.join(after)}"
               + _off_selection(summary, budget.long) + f"; test MAP@R gaps paired over seeds: {gaps}"
               + ". Rule: supported if every pair detected at 200k is detected in the same order at 1M and none is "
                 "detected reversed (a pair within the noise at 200k is no part of its ranking); contradicted if a "
                 "pair is detected at 1M in the order opposite to 200k's means; otherwise not detected at this n "
                 "(Holm over the pairs within each budget).")
    return claim._replace(numbers=numbers, verdict=verdict)


def _machines(final: pd.DataFrame, experiment: str) -> str:
    """The CPUs or GPUs an experiment's trials ran on, without their thread counts ("AMD EPYC", with its flags where
    recorded: tables.machines), joined by " and "."""
    names = tables.machines(final[final.experiment == experiment]).dropna()
    machines = {THREADS.sub("", str(name)) for name in names}
    return " and ".join(sorted(machines)) or "unrecorded hardware"


def _cited(summary: pd.DataFrame, experiment: str) -> tuple[str, pd.DataFrame]:
    """The experiment whose test numbers are cited for `experiment` (its fresh seeds' once those are complete, else
    its own) and that experiment's selected CIFAR-10 cells."""
    name = f"{experiment}{FRESH}" if _complete(summary, f"{experiment}{FRESH}") else experiment
    return name, summary[(summary.experiment == name) & summary.selected & (summary.dataset == "cifar10")]


def protocol_table(summary: pd.DataFrame) -> tuple[str, str, list[list[str]]]:
    """Per loss, its selected CIFAR-10 cell's test MAP@R on the classes it trained on (cpu) and on classes it never
    saw (cpu-unseen), with the rank at each, then raw pixels and the untrained net under each protocol: (the seen
    experiment, the unseen one, rows); no rows until cpu-unseen is complete."""
    seen_name, seen = _cited(summary, "cpu")
    unseen_name, unseen = _cited(summary, "cpu-unseen")
    if not _complete(summary, "cpu-unseen") or unseen.empty:
        return seen_name, unseen_name, []
    ranks = {name: {loss: i + 1 for i, loss in enumerate(_ranking(cells))} for name, cells in
             (("seen", seen), ("unseen", unseen))}

    def cell(cells: pd.DataFrame, loss: str, rank: dict[str, int]) -> list[str]:
        rows = cells[cells.loss == loss]
        if rows.empty:
            return ["–", "–", "–"]
        row = rows.iloc[0]
        return [stats.setting_text(loss, row.margin, row.batch_size) + (f" [{row.variant}]" if row.variant else ""),
                str(tables.interval(row, "map_at_r")), str(rank[loss])]

    order = [*_ranking(unseen), *(loss for loss in _ranking(seen) if loss not in set(unseen.loss))]
    rows = [[loss, *cell(seen, loss, ranks["seen"]), *cell(unseen, loss, ranks["unseen"])] for loss in order]

    def baseline(name: str, loss: str) -> list[str]:
        found = summary[(summary.experiment == name) & (summary.loss == loss) & (summary.dataset == "cifar10")]
        return ["–", str(tables.interval(found.iloc[0], "map_at_r")), "–"] if len(found) else ["–", "–", "–"]

    return seen_name, unseen_name, [*rows, *([f"{loss} (baseline)", *baseline(seen_name, loss),
                                              *baseline(unseen_name, loss)] for loss in stats.BASELINES)]


def sampler_table(summary: pd.DataFrame, final: pd.DataFrame) -> list[list[str]]:
    """Per loss of cpu-sampler: test MAP@R with P×K batches and with uniformly random ones, and random − P×K paired
    over seeds (same initialisation), Holm over the losses; no rows until cpu-sampler is complete."""
    if not _complete(summary, "cpu-sampler"):
        return []
    cells = summary[(summary.experiment == "cpu-sampler") & ~summary.loss.isin(stats.BASELINES)]
    trials = _trials(final, "cpu-sampler")
    losses = _ranking(cells[cells.variant == "sampler pk"])
    results = [paired(trials, (trials.loss == loss) & (trials.sampler == "random"),
                      (trials.loss == loss) & (trials.sampler == "pk"), ["dataset", "margin", "batch_size"],
                      "map_at_r") for loss in losses]
    rows = []
    for loss, result, p in zip(losses, results, stats.holm([r.p for r in results]), strict=True):
        by = {sampler: cells[(cells.loss == loss) & (cells.variant == f"sampler {sampler}")].iloc[0]
              for sampler in ("pk", "random")}
        rows.append([loss, f"{by['pk'].margin:g}", str(tables.interval(by["pk"], "map_at_r")),
                     str(tables.interval(by["random"], "map_at_r")),
                     _delta(result), _p(p),
                     "detected" if p < stats.ALPHA else "not detected at this n"])
    return rows


CLAIMS: tuple[Callable[[pd.DataFrame, pd.DataFrame], Claim], ...] = (
    margin_rule, larger_batches, batch_hard_unstable, semi_hard, normalisation, quadruplet_compactness,
    three_seeds, *(functools.partial(budget_ranking, budget=budget) for budget in BUDGETS), control_baseline,
)


def claims(summary: pd.DataFrame, final: pd.DataFrame) -> list[Claim]:
    """Every claim of CLAIMS tested on the summary (stats.summarize) and the trials' final rows."""
    return [test(summary, final) for test in CLAIMS]


def markdown(rows: list[Claim], records: int, summary: pd.DataFrame, final: pd.DataFrame) -> str:
    """claims.md: the rule, one table row per claim, then the tables behind them (batch size, budget, sampler, seen
    and unseen classes), from the summary (stats.summarize) and the trials' final rows."""
    header: list[Any] = ["claim", "source", "cells that test it", "numbers", "verdict"]
    lines = ["# Claims of the sources, tested", "",
             f"Made by `python -m bench.report` (`make report`) from {records} records of the reference runs. "
             + RULES, "", *table(header, [list(row) for row in rows]), ""]
    batches = batch_table(summary)
    lines += ["## Batch size at equal steps and at equal samples (cpu-batch)", ""]
    lines += (["Test MAP@R, mean ± 95% t half-width over seeds, of batch-all m = 0.2 on CIFAR-10 at each batch "
               "size: at equal optimiser steps (more samples at larger B) and at equal samples (fewer steps, the lr "
               "scaled by √(B / 64)).", "",
               *table(["B", "equal steps", "MAP@R (test)", "equal samples", "MAP@R (test)"], batches)]
              if batches else [_pending("cpu-batch", summary).capitalize() + "."])
    for budget in BUDGETS:
        budgets = budget_table(summary, final, budget)
        lines += ["", f"## The ranking at 200k and at 1M samples{budget.label} ({budget.short}, {budget.long})", ""]
        lines += ([f"Test MAP@R of {SAME_MACHINE}' selected CIFAR-10 cells (the cpu grid's choice too), mean ± 95% "
                   f"t half-width over seeds 0-2, at 200,000 samples ({budget.short}) and at 1,000,000 "
                   f"({budget.long}), with each loss's rank, and the gain paired over seeds (1M − 200k, its 95% "
                   "t-interval and p; the same seed, config, precision and kind of CPU, the budget aside; "
                   f"{_machines(final, budget.long)}). The cells were selected on these seeds' validation split at "
                   "200k, so the 200k side may carry a winner's curse: if anything, the gain is understated.", "",
                   *table(["loss", "margin", "200k samples", "rank", "1M samples", "rank", "1M − 200k (paired)"],
                          budgets)]
                  if budgets else [_pending(budget.long, summary).capitalize() + "."])
    samplers = sampler_table(summary, final)
    lines += ["", "## P×K against random batches (cpu-sampler)", ""]
    lines += (["Test MAP@R, mean ± 95% t half-width over seeds 0-2, of the cpu grid's selected CIFAR-10 cells with "
               "P×K batches (K = 4) and with uniformly random ones; Δ = random − P×K paired over seeds (the same "
               "initialisation; the batches differ by construction), its 95% t-interval and Holm's p over the "
               "losses.", "",
               *table(["loss", "margin", "P×K", "random", "Δ (random − P×K)", "Holm p", "difference"], samplers)]
              if samplers else [_pending("cpu-sampler", summary).capitalize() + "."])
    seen_name, unseen_name, protocols = protocol_table(summary)
    machines = {name: f"{_machines(final, name)} in {tables.precision(_trials(final, name))}"
                for name in (seen_name, unseen_name)}
    lines += ["", "## Seen and unseen classes (cpu, cpu-unseen)", ""]
    lines += ([f"Test MAP@R, mean ± 95% t half-width over seeds, of each loss's validation-selected CIFAR-10 cell, "
               f"with its rank: on held-out images of the classes it trained on ({seen_name}) and on classes it "
               f"never saw ({unseen_name}: trained on 4 classes, tested on 4 others; its own selection on its own "
               "validation classes), then raw pixels and the untrained net under each protocol. The control is in "
               "cpu-unseen only (its seen numbers are cpu-losses')."
               + ("" if machines[seen_name] == machines[unseen_name] else
                  f" {seen_name} ran on {machines[seen_name]}, {unseen_name} on {machines[unseen_name]}: across CPUs "
                  "and precisions a seed fixes no metric, so the two protocols are compared by rank, never cell by "
                  "cell."), "",
               *table(["loss", "seen: cell", "MAP@R (test)", "rank", "unseen: cell", "MAP@R (test)", "rank"],
                      protocols)]
              if protocols else [_pending("cpu-unseen", summary).capitalize() + "."])
    return "\n".join([*lines, ""])
