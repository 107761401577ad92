"""Batch-all, batch-hard (hinge and soft margin), semi-hard, adaptive-mu triplet and quadruplet losses, and mining
statistics.

Notation: d is the Euclidean distance matrix, a valid triplet (a, p, n) has a ≠ p, y_a = y_p and
y_n ≠ y_a, and [x]₊ = max(x, 0). Every loss takes embeddings [B, D], integer labels [B] and a margin
≥ 0 and returns a scalar that stays attached to the graph: a batch with nothing to learn from gives
exactly 0, never NaN. Nothing of size B³ or B⁴ is built; see losses/counting.py for how.

Every loss but quadruplet also comes as `<loss>_from_distances(d, pos, neg, margin)`: each row of d [B, R]
holds one anchor's distances to R candidates, the batch itself or a separate reference set (losses/pml.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from losses.counting import (
    count_below_per_row,
    count_exceeding_ranks,
    group_order,
    merge_order,
    merged_counts,
)
from losses.distance import check_inputs, pair_masks, pairwise_distance

INF = float("inf")


def _prepare(
    embeddings: Tensor, labels: Tensor, margin: float, check_finite: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Check the inputs; return distances d [B, B] and the positive and negative masks [B, B]."""
    check_inputs(embeddings, labels, margin, check_finite)
    return pairwise_distance(embeddings), *pair_masks(labels)


def _hinge_mean(d: Tensor, weights: Tensor, count: Tensor, margin: Tensor | float) -> Tensor:
    """Mean active hinge term (Σ weights·d + margin·count) / count, 0 when count is 0; float64 sums."""
    total = torch.sum(weights * d, dtype=torch.float64) + margin * count.double()
    return (total / count.clamp_min(1)).to(d.dtype)


def _triplet_weights(
    d: Tensor, pos: Tensor, neg: Tensor, margin: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Integer weights [B, B] and #active with Σ_active (d_ap − d_an + m) = Σ weights·d + m·#active.

    A triplet is active when d_an < d_ap + m. Weight of a positive pair (a, p): its number of active
    negatives; of a negative pair (a, n): minus its number of active positives.
    """
    d = d.detach()
    negatives_sorted, order = d.masked_fill(~neg, INF).sort(dim=1)
    per_positive = count_below_per_row(negatives_sorted, d + margin).masked_fill_(~pos, 0)
    per_negative_sorted = count_exceeding_ranks(per_positive, pos, d.shape[1])
    weights = per_positive.to(d.dtype).scatter_add_(1, order, -per_negative_sorted.to(d.dtype))
    return weights, per_positive.sum()


def _quadruplet_weights(
    d: Tensor, labels: Tensor, pos: Tensor, neg: Tensor, margin: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Integer weights [B, B] and #active for Σ [d_ij − d_kl + m]₊ over Chen et al.'s quadruplets.

    Quadruplets: y_i = y_j, i ≠ j, y_k ≠ y_i, y_l ≠ y_i, y_l ≠ y_k; active when d_kl < d_ij + m. One merge
    of the thresholds d_ij + m with the values d_kl counts, per positive pair, the active negative pairs
    and, per negative pair, the active positive pairs; a second, by the class of the pair's first index,
    counts those within one class. Per positive pair (i, j) of class c, the negative pairs that touch c
    are twice those with y_k = c (d is symmetric and no negative pair has both ends in c); per negative
    pair (k, l), the positive pairs to drop are those of class y_k, counted at (k, l), and of class y_l,
    counted at (l, k).
    """
    d = d.detach()
    row_class = torch.unique(labels, return_inverse=True)[1][:, None].expand_as(d)
    n_positive = int(pos.sum())
    order = merge_order(d[pos] + margin, d[neg])
    negatives_below, positives_above = merged_counts(order, n_positive)
    group = torch.cat([row_class[pos], row_class[neg]])
    class_negatives_below, class_positives_above = merged_counts(group_order(order, group), n_positive, group)
    per_positive = negatives_below - 2 * class_negatives_below
    same_class_above = torch.zeros_like(d).masked_scatter_(neg, class_positives_above.to(d.dtype))
    per_negative = positives_above.to(d.dtype) - same_class_above[neg] - same_class_above.T[neg]
    weights = torch.zeros_like(d).masked_scatter_(pos, per_positive.to(d.dtype))
    return weights.masked_scatter_(neg, -per_negative), per_positive.sum()


def _adaptive_margin(d: Tensor, pos: Tensor, neg: Tensor, margin: float) -> Tensor:
    """m + max(μ, 0) with μ = mean negative − mean positive pair distance, without gradient."""
    d = d.detach()
    mu_pos = (d * pos).sum() / pos.sum().clamp_min(1)
    mu_neg = (d * neg).sum() / neg.sum().clamp_min(1)
    return margin + (mu_neg - mu_pos).clamp_min(0)


def batch_all(embeddings: Tensor, labels: Tensor, margin: float, check_finite: bool = True) -> Tensor:
    """Mean of [d_ap − d_an + m]₊ over the valid triplets whose term is > 0 (Hermans et al. 2017)."""
    return batch_all_from_distances(*_prepare(embeddings, labels, margin, check_finite), margin)


def batch_all_from_distances(d: Tensor, pos: Tensor, neg: Tensor, margin: Tensor | float) -> Tensor:
    """Batch-all from anchor-to-candidate distances d [B, R] and positive / negative masks [B, R]."""
    return _hinge_mean(d, *_triplet_weights(d, pos, neg, margin), margin)


def batch_hard(embeddings: Tensor, labels: Tensor, margin: float, check_finite: bool = True) -> Tensor:
    """Mean over anchors with a positive and a negative of [max_p d_ap − min_n d_an + m]₊.

    Tied hardest distances share the gradient equally (amax/amin semantics). The hardest pairs are chosen on
    pairwise_distance without gradient, and only they carry one (the distance of the difference of their two
    embeddings), so that the backward pass costs O(B·D), not a B×B matrix product and chain of element-wise steps.
    """
    gaps, anchors = _hardest_gaps(embeddings, labels, margin, check_finite)
    return torch.where(anchors, (gaps + margin).clamp_min(0), 0.0).sum() / anchors.sum().clamp_min(1)


def batch_hard_soft(embeddings: Tensor, labels: Tensor, margin: float, check_finite: bool = True) -> Tensor:
    """Batch-hard with Hermans et al.'s soft margin: mean over the same anchors of ln(1 + exp(max_p d_ap − min_n
    d_an + m)); m = 0 is theirs (no margin), a positive m shifts it."""
    gaps, anchors = _hardest_gaps(embeddings, labels, margin, check_finite)
    return torch.where(anchors, torch.nn.functional.softplus(gaps + margin), 0.0).sum() / anchors.sum().clamp_min(1)


def _hardest_gaps(embeddings: Tensor, labels: Tensor, margin: float, check_finite: bool) -> tuple[Tensor, Tensor]:
    """Per anchor max_p d_ap − min_n d_an [B] (batch_hard's selection and gradient) and whether it has both [B]."""
    check_inputs(embeddings, labels, margin, check_finite)
    pos, neg = pair_masks(labels)
    with torch.no_grad():
        d = pairwise_distance(embeddings)
    hardest_positive = _hardest(embeddings, d, pos, d.masked_fill(~pos, -INF).amax(dim=1))
    hardest_negative = _hardest(embeddings, d, neg, d.masked_fill(~neg, INF).amin(dim=1))
    anchors = pos.any(dim=1) & neg.any(dim=1)
    return torch.where(anchors, hardest_positive - hardest_negative, 0.0), anchors


def _hardest(embeddings: Tensor, d: Tensor, mask: Tensor, value: Tensor) -> Tensor:
    """Each row's hardest distance `value` [B] among `mask` (±inf without one), with amax's gradient: that of the
    mean distance of the row's tied hardest pairs, computed for those pairs alone (0 where a pair coincides)."""
    rows, cols = (mask & (d == value[:, None])).nonzero(as_tuple=True)
    ties = torch.zeros_like(value).index_add_(0, rows, torch.ones_like(rows, dtype=value.dtype))
    gap = embeddings[rows] - embeddings[cols]
    squared = gap.pow(2).sum(dim=1)
    length = torch.where(squared > 0, squared.clamp_min(torch.finfo(squared.dtype).tiny).sqrt(), 0.0)
    mean = torch.zeros_like(value).index_add(0, rows, length) / ties.clamp_min(1)
    return value + (mean - mean.detach())


def _hardest_gaps_from_distances(d: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
    """Per anchor max_p d_ap − min_n d_an [B] (0 where it lacks either) and whether it has both [B], from
    anchor-to-candidate distances d [B, R] and positive / negative masks [B, R]."""
    hardest_positive = d.masked_fill(~pos, -INF).amax(dim=1)
    hardest_negative = d.masked_fill(~neg, INF).amin(dim=1)
    anchors = pos.any(dim=1) & neg.any(dim=1)
    return torch.where(anchors, hardest_positive - hardest_negative, 0.0), anchors


def batch_hard_from_distances(d: Tensor, pos: Tensor, neg: Tensor, margin: float) -> Tensor:
    """Batch-hard from anchor-to-candidate distances d [B, R] and positive / negative masks [B, R]."""
    gaps, anchors = _hardest_gaps_from_distances(d, pos, neg)
    return torch.where(anchors, (gaps + margin).clamp_min(0), 0.0).sum() / anchors.sum().clamp_min(1)


def batch_hard_soft_from_distances(d: Tensor, pos: Tensor, neg: Tensor, margin: float) -> Tensor:
    """Soft-margin batch-hard from anchor-to-candidate distances d [B, R] and positive / negative masks [B, R]."""
    gaps, anchors = _hardest_gaps_from_distances(d, pos, neg)
    return torch.where(anchors, torch.nn.functional.softplus(gaps + margin), 0.0).sum() / anchors.sum().clamp_min(1)


def semi_hard(embeddings: Tensor, labels: Tensor, margin: float, check_finite: bool = True) -> Tensor:
    """FaceNet semi-hard: per positive pair, n* = the closest negative with d_ap < d_an < d_ap + m.

    The loss is the mean of d_ap − d_an* + m over the positive pairs that have such a negative.
    A pair without one (all its negatives are hard, or all easy) is skipped, with no fallback to
    a hard negative, as FaceNet does for stability; with m = 0 no pair has one and the loss is 0.
    Ties among negatives go to the lowest index.
    """
    return semi_hard_from_distances(*_prepare(embeddings, labels, margin, check_finite), margin)


def semi_hard_from_distances(d: Tensor, pos: Tensor, neg: Tensor, margin: float) -> Tensor:
    """Semi-hard from anchor-to-candidate distances d [B, R] and positive / negative masks [B, R]."""
    detached = d.detach()
    negatives_sorted, order = detached.masked_fill(~neg, INF).sort(dim=1, stable=True)
    first_farther = torch.searchsorted(negatives_sorted, detached, right=True)
    first_farther = first_farther.clamp_max(d.shape[1] - 1)
    chosen = pos & (negatives_sorted.gather(1, first_farther) < detached + margin)
    d_an = d.gather(1, order.gather(1, first_farther))
    terms = torch.where(chosen, d - d_an + margin, 0.0)
    return terms.sum() / chosen.sum().clamp_min(1)


def adaptive_mu(embeddings: Tensor, labels: Tensor, margin: float, check_finite: bool = True) -> Tensor:
    """Batch-all with m_eff = m + max(μ, 0), μ = mean d_neg − mean d_pos (Chen et al. 2017 at m = 0)."""
    return adaptive_mu_from_distances(*_prepare(embeddings, labels, margin, check_finite), margin)


def adaptive_mu_from_distances(d: Tensor, pos: Tensor, neg: Tensor, margin: float) -> Tensor:
    """Adaptive-mu from anchor-to-candidate distances d [B, R] and positive / negative masks [B, R]."""
    return batch_all_from_distances(d, pos, neg, _adaptive_margin(d, pos, neg, margin))


def quadruplet(embeddings: Tensor, labels: Tensor, margin: float, check_finite: bool = True) -> Tensor:
    """Adaptive-mu term + mean of active [d_ij − d_kl + m_eff/2]₊ over Chen et al.'s quadruplets."""
    d, pos, neg = _prepare(embeddings, labels, margin, check_finite)
    m_eff = _adaptive_margin(d, pos, neg, margin)
    triplet_term = _hinge_mean(d, *_triplet_weights(d, pos, neg, m_eff), m_eff)
    half = m_eff / 2
    pair_term = _hinge_mean(d, *_quadruplet_weights(d, labels, pos, neg, half), half)
    return triplet_term + pair_term


@torch.no_grad()
def mining_stats(embeddings: Tensor, labels: Tensor, margin: float) -> dict[str, float]:
    """Triplet counts of a batch: valid_triplets, fraction_easy/semihard/hard, mu_pos, mu_neg.

    easy: d_an ≥ d_ap + m; semi-hard: d_ap ≤ d_an < d_ap + m; hard: d_an < d_ap. Fractions are of
    the valid triplets (NaN when there are none); mu_pos / mu_neg are the mean positive / negative
    pair distances (NaN when there are no such pairs).
    """
    d, pos, neg = _prepare(embeddings.detach(), labels, margin, check_finite=True)
    negatives_sorted = d.masked_fill(~neg, INF).sort(dim=1).values
    hard = count_below_per_row(negatives_sorted, d)[pos].sum().item()
    not_easy = count_below_per_row(negatives_sorted, d + margin)[pos].sum().item()
    valid = (pos.sum(dim=1) * neg.sum(dim=1)).sum().item()
    fraction = (lambda n: n / valid) if valid else (lambda n: float("nan"))
    return {
        "valid_triplets": int(valid),
        "fraction_easy": fraction(valid - not_easy),
        "fraction_semihard": fraction(not_easy - hard),
        "fraction_hard": fraction(hard),
        "mu_pos": d[pos].mean().item(),
        "mu_neg": d[neg].mean().item(),
    }
