"""Training diagnostics: the margin check before the first update, pinned at the margin, collapse, batch makeup.

- Effective margin: the margin a loss's triplet hinges use (losses.Loss.effective_margin: m, or m + max(μ, 0) for
  the losses that adapt it).
- Initial statistics: the mining statistics of the trial's first INITIAL_BATCHES planned batches, embedded
  before the first update, at each batch's effective margin; fractions are of all their valid triplets
  together, `effective_margin` is the mean over the batches. For a loss that mines the hardest pairs
  (losses.Loss.hardest: batch-hard), `initial_active_anchors` is the fraction of anchors (with a positive and
  a negative) whose hinge max_p d_ap − min_n d_an + m is > 0.
- pinned_at_margin: the training loss is within PINNED_TOLERANCE (relative) of its value when all distances
  are equal (losses.Loss.pinned_loss: the effective margin; 1.5 × it for quadruplet) and μ_neg is
  below the effective margin: every hinge stays active and the net only shrinks or holds the embeddings.
  A control (losses.CONTROLS; its facts are losses.facts(name)) has no margin: its effective margin is the config's
  (0), it mines no hardest pairs and is never pinned; its mining statistics are those of triplets at margin 0.
- spread: the RMS pairwise distance of a set of embeddings, √(2 · mean ‖x − x̄‖²): its size. Its reference is the
  margin check's `initial_spread`: the untrained net's spread on the first planned batches, in the state training
  sees, so that the rule is the same for L2-normalised and unnormalised embeddings and for any output scale.
- collapsed: the embeddings lost their information or their size. k-NN accuracy at most CHANCE_POINTS above chance
  (1 / the number of classes), or an effective rank below MIN_EFFECTIVE_RANK (two points, a line), or a spread
  below MIN_SPREAD of the initial spread (a point, with or without isotropic noise around it: the effective rank is
  scale-free and misses it, and a retrieval on such a ball ranks by noise).
- class distances: the mean Euclidean distance over distinct same-class pairs (`intra_class_distance`) and over
  different-class pairs (`inter_class_distance`) of the evaluated test embeddings (the whole test set at the last
  checkpoint), exact in float64 and blockwise (never N × N at once); their ratio says how tight the classes are
  against their separation, whatever the scale.
- effective rank (Roy & Vetterli 2007): exp of the Shannon entropy of the normalised singular values of the
  centred embeddings. Scale-free, so a shrunk but intact embedding keeps it; 0 for a single point, 1 for
  two points or any embedding on a line, k for k equal orthogonal directions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from losses import facts, mining_stats, pair_masks, pairwise_distance

INITIAL_BATCHES = 8
PINNED_TOLERANCE = 0.05
# 5 points above chance: an embedding with any class information left scores far higher (an untrained MNIST
# net scores ~0.9, an untrained CIFAR-10 net ~0.3 against chance 0.1), one without it scores chance ± noise
CHANCE_POINTS = 0.05
# C ≥ 3 classes that a metric embedding separates span at least a plane (3 equidistant points have effective
# rank 2); below 2 the variance lies essentially along one line: two points, or a point with a 1-d smear
MIN_EFFECTIVE_RANK = 2.0
# a fifth of the initial size: on the reference run's stored test embeddings (L2-normalised; an untrained mnist-net
# spreads 0.18, a cifar-net 0.70-0.72), the pinned batch-hard trials end at 0.0017-0.0021 and quadruplet at m = 0
# at 0.007-0.057 (under a tenth of the start), every other trial at 0.48 or more (above two thirds of it)
MIN_SPREAD = 0.2
INITIAL_KEYS = ("initial_fraction_easy", "initial_fraction_semihard", "initial_fraction_hard",
                "initial_active_anchors", "effective_margin", "initial_spread")


@torch.no_grad()
def active_anchors(embeddings: Tensor, labels: Tensor, margin: float) -> tuple[int, int]:
    """(#anchors whose batch-hard hinge max_p d_ap − min_n d_an + m is > 0, #anchors with a positive and a negative)."""
    d = pairwise_distance(embeddings.float())
    pos, neg = pair_masks(labels)
    anchors = pos.any(dim=1) & neg.any(dim=1)
    hinge = d.masked_fill(~pos, -math.inf).amax(dim=1) - d.masked_fill(~neg, math.inf).amin(dim=1) + margin
    return int((anchors & (hinge > 0)).sum()), int(anchors.sum())


def initial_statistics(batches: Iterable[tuple[Tensor, Tensor]], loss: str, margin: float) -> dict[str, Any]:
    """INITIAL_KEYS from (embeddings [B, D], labels [B]) of the first batches, each at its effective margin.

    A fraction over no valid triplets (anchors) is NaN; initial_active_anchors is None unless the loss mines the
    hardest pairs; initial_spread is the mean spread of the batches.
    """
    counts = {"easy": 0, "semihard": 0, "hard": 0}
    margins, spreads, active, anchors = [], [], 0, 0
    for embeddings, labels in batches:
        embeddings = embeddings.float()
        spreads.append(spread(embeddings))
        nominal = mining_stats(embeddings, labels, margin)
        m_eff = facts(loss).effective_margin(margin, nominal["mu_pos"], nominal["mu_neg"])
        stats = nominal if m_eff == margin else mining_stats(embeddings, labels, m_eff)
        for kind in counts:
            if stats["valid_triplets"]:
                counts[kind] += round(stats[f"fraction_{kind}"] * stats["valid_triplets"])
        margins.append(m_eff)
        if facts(loss).hardest:
            batch_active, batch_anchors = active_anchors(embeddings, labels, m_eff)
            active, anchors = active + batch_active, anchors + batch_anchors
    valid = sum(counts.values())
    return {
        **{f"initial_fraction_{kind}": count / valid if valid else math.nan for kind, count in counts.items()},
        "initial_active_anchors": (active / anchors if anchors else math.nan) if facts(loss).hardest else None,
        "effective_margin": math.fsum(margins) / len(margins) if margins else math.nan,
        "initial_spread": math.fsum(spreads) / len(spreads) if spreads else math.nan,
    }


def _centred(embeddings: Tensor) -> Tensor:
    """Embeddings [N, D] in float64 minus their mean."""
    return embeddings.double() - embeddings.double().mean(dim=0)


def spread(embeddings: Tensor) -> float:
    """The RMS pairwise distance √(2 · mean ‖x − x̄‖²) of embeddings [N, D], in float64; 0 for one point."""
    centred = _centred(embeddings)
    return math.sqrt(2 * float((centred * centred).sum(dim=1).mean()))


def effective_rank(embeddings: Tensor) -> float:
    """exp(entropy of σ / Σσ), σ the singular values of embeddings [N, D] minus their mean; 0 for one point."""
    singular = torch.linalg.svdvals(_centred(embeddings))
    total = singular.sum()
    if not total > 0:
        return 0.0
    p = singular[singular > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def class_distances(embeddings: Tensor, labels: Tensor, block: int = 1024) -> dict[str, float]:
    """intra_class_distance and inter_class_distance of embeddings [N, D] with labels [N]: mean distance over distinct
    same-class pairs and over different-class pairs, in float64 over row blocks of `block` (NaN where no such pair)."""
    centred = _centred(embeddings)
    sums = {True: 0.0, False: 0.0}
    counts = {True: 0, False: 0}
    for start in range(0, len(labels), block):
        rows = slice(start, start + block)
        distances = torch.cdist(centred[rows], centred, compute_mode="donot_use_mm_for_euclid_dist")
        same = labels[rows, None] == labels[None, :]
        same[torch.arange(same.shape[0]), torch.arange(start, start + same.shape[0])] = False  # not a pair with itself
        different = labels[rows, None] != labels[None, :]
        for key, mask in ((True, same), (False, different)):
            sums[key] += float(distances[mask].sum())
            counts[key] += int(mask.sum())
    return {
        "intra_class_distance": sums[True] / counts[True] if counts[True] else math.nan,
        "inter_class_distance": sums[False] / counts[False] if counts[False] else math.nan,
    }


def is_pinned(loss: str, loss_mean: float, m_eff: float, mu_neg: float) -> bool:
    """Whether the training loss sits at its all-distances-equal value (± PINNED_TOLERANCE) where the loss can be
    pinned there (losses.Loss.can_pin: μ_neg < m_eff under a hinge)."""
    pinned = facts(loss).pinned_loss(m_eff)
    return facts(loss).can_pin(mu_neg, m_eff) and abs(loss_mean - pinned) <= PINNED_TOLERANCE * pinned


def is_collapsed(knn_accuracy: float, n_classes: int, rank: float, size: float, reference: float) -> bool:
    """Whether k-NN accuracy ≤ chance (1 / n_classes) + CHANCE_POINTS, the effective rank < MIN_EFFECTIVE_RANK, or
    the spread `size` < MIN_SPREAD × `reference` (NaN reference: that test is skipped)."""
    shrunk = bool(size < MIN_SPREAD * reference) if math.isfinite(reference) else False
    return knn_accuracy <= 1 / n_classes + CHANCE_POINTS or rank < MIN_EFFECTIVE_RANK or shrunk


def checkpoint_diagnostics(
    loss: str, margin: float, loss_mean: float, mining: dict[str, float], knn_accuracy: float, n_classes: int,
    embeddings: Tensor, initial_spread: float,
) -> dict[str, Any]:
    """pinned_at_margin, collapsed, effective_rank and spread of a checkpoint.

    `mining` holds the last training batch's mu_pos and mu_neg (which give its effective margin), `loss_mean`
    the mean training loss since the previous checkpoint; knn_accuracy, n_classes and embeddings [N, D] are
    those of the evaluated split; initial_spread is the margin check's (module docstring).
    """
    m_eff = facts(loss).effective_margin(margin, mining["mu_pos"], mining["mu_neg"])
    rank, size = effective_rank(embeddings), spread(embeddings)
    return {
        "pinned_at_margin": is_pinned(loss, loss_mean, m_eff, mining["mu_neg"]),
        "collapsed": is_collapsed(knn_accuracy, n_classes, rank, size, initial_spread),
        "effective_rank": rank,
        "spread": size,
    }


@torch.no_grad()
def images_per_class(batch_labels: Tensor) -> float:
    """Mean over the batches of labels [S, B] of B / the number of distinct classes in the batch."""
    ordered = batch_labels.sort(dim=1).values
    distinct = 1 + (ordered.diff(dim=1) != 0).sum(dim=1)
    return float((batch_labels.shape[1] / distinct.double()).mean())
