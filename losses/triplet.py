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
    count_at_most,
    count_at_most_in_group,
    count_below_per_row,
    count_below_thresholds,
    count_below_thresholds_in_group,
    count_exceeding_ranks,
)
from losses.distance import check_inputs, pair_masks, pairwise_distance, root

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


def _negatives_ranked(d: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's negative distances ascending, +inf after them [B, R], and their column indices [B, R]."""
    return d.detach().masked_fill(~neg, INF).sort(dim=1)


def _positives_by_row(pos: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's positive columns, packed to the left [B, K] (K: the most positives of a row; 0 as padding), and
    which of them are real [B, K]."""
    counts = pos.sum(dim=1)
    rows, columns = pos.nonzero(as_tuple=True)
    slots = torch.arange(rows.numel(), device=pos.device) - (counts.cumsum(0) - counts)[rows]
    packed = torch.zeros(pos.shape[0], int(counts.max()) if counts.numel() else 0, dtype=torch.long,
                         device=pos.device)
    packed[rows, slots] = columns
    return packed, torch.arange(packed.shape[1], device=pos.device) < counts[:, None]


def _triplet_weights(
    d: Tensor, pos: Tensor, ranked: tuple[Tensor, Tensor], margin: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Integer weights [B, R] and #active with Σ_active (d_ap − d_an + m) = Σ weights·d + m·#active.

    A triplet is active when d_an < d_ap + m. Weight of a positive pair (a, p): its number of active
    negatives; of a negative pair (a, n): minus its number of active positives. ranked: _negatives_ranked(d, neg).
    Only the positive pairs are searched, packed per row.
    """
    d = d.detach()
    negatives_sorted, order = ranked
    columns, real = _positives_by_row(pos)
    per_positive = count_below_per_row(negatives_sorted, d.gather(1, columns) + margin).masked_fill_(~real, 0)
    per_negative_sorted = count_exceeding_ranks(per_positive, real, d.shape[1])
    weights = torch.zeros_like(d).scatter_add_(1, columns, per_positive.to(d.dtype))
    weights.scatter_add_(1, order, -per_negative_sorted.to(d.dtype))
    return weights, per_positive.sum()


def _quadruplet_weights(
    d: Tensor, labels: Tensor, pos: Tensor, neg: Tensor, ranked: tuple[Tensor, Tensor], margin: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Integer weights [B, B] and #active for Σ [d_ij − d_kl + m]₊ over Chen et al.'s quadruplets.

    Quadruplets: y_i = y_j, i ≠ j, y_k ≠ y_i, y_l ≠ y_i, y_l ≠ y_k; active when d_kl < d_ij + m. d is exactly
    symmetric, so each unordered pair is taken once (k < l) and counts twice. One search ranks every negative
    pair's distance among the sorted thresholds d_ij + m (rows' sorted negatives, ranked, shared with the triplet
    term: ascending queries), and each rank is then counted within the class of either end. Per positive pair
    (i, j) of class c, the active negative pairs are all those below it less twice those with y_k = c (no
    negative pair has both ends in c); per negative pair (k, l), the active positive pairs are all those above
    it less those of class y_k and of class y_l.
    """
    d = d.detach()
    negatives_sorted, order = ranked
    classes = torch.unique(labels, return_inverse=True)[1]
    i, j = torch.triu(pos, diagonal=1).nonzero(as_tuple=True)
    index = torch.arange(d.shape[0], device=d.device)
    k, rank_in_row = ((index < neg.sum(dim=1, keepdim=True)) & (order > index[:, None])).nonzero(as_tuple=True)
    other = order[k, rank_in_row]
    thresholds, by_value = (d[i, j] + margin).sort()
    n = thresholds.numel()
    ranks = count_at_most(thresholds, negatives_sorted[k, rank_in_row])  # ascending within each row k
    ends = torch.stack([classes[k], classes[other]], dim=1)
    class_ranks, by_class, per_class = count_at_most_in_group(ranks, ends, classes[i[by_value]])
    below = count_below_thresholds(ranks, n) - count_below_thresholds_in_group(
        class_ranks.flatten(), ends.flatten(), by_class, per_class)
    per_positive = torch.empty_like(below).scatter_(0, by_value, 2 * below)  # per ordered pair, (i, j) or (j, i)
    per_negative = 2 * (n - ranks) - 2 * (per_class[ends] - class_ranks).sum(dim=1)
    weights = torch.zeros_like(d)  # upper triangle only, doubled: d is symmetric, so Σ weights·d is the same
    weights[i, j] = 2 * per_positive.to(d.dtype)
    weights[k, other] = -2 * per_negative.to(d.dtype)
    return weights, 2 * per_positive.sum()


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
    return _hinge_mean(d, *_triplet_weights(d, pos, _negatives_ranked(d, neg), margin), margin)


def batch_hard(embeddings: Tensor, labels: Tensor, margin: float, check_finite: bool = True) -> Tensor:
    """Mean over anchors with a positive and a negative of [max_p d_ap − min_n d_an + m]₊.

    Tied hardest distances share the gradient equally (amax/amin semantics). The hardest pairs are chosen without
    gradient, and only they carry one (the distance of the difference of their two embeddings), so that the
    backward pass costs O(B·D), not a B×B matrix product and chain of element-wise steps.
    """
    gaps, anchors = _hardest_gaps(embeddings, labels, margin, check_finite)
    return torch.where(anchors, (gaps + margin).clamp_min(0), 0.0).sum() / anchors.sum().clamp_min(1)


def batch_hard_soft(embeddings: Tensor, labels: Tensor, margin: float, check_finite: bool = True) -> Tensor:
    """Batch-hard with Hermans et al.'s soft margin: mean over the same anchors of ln(1 + exp(max_p d_ap − min_n
    d_an + m)); m = 0 is theirs (no margin), a positive m shifts it."""
    gaps, anchors = _hardest_gaps(embeddings, labels, margin, check_finite)
    return torch.where(anchors, torch.nn.functional.softplus(gaps + margin), 0.0).sum() / anchors.sum().clamp_min(1)


HARDEST_BLOCK = 1 << 20  # squared distances held at once on the CPU while choosing the hardest pairs (4 MiB, float32)
HARDEST_BLOCK_ACCELERATOR = 1 << 28  # elsewhere (a GPU): one block up to B = 16384, since each block synchronises


def _hardest_gaps(embeddings: Tensor, labels: Tensor, margin: float, check_finite: bool) -> tuple[Tensor, Tensor]:
    """Per anchor max_p d_ap − min_n d_an [B] (batch_hard's selection and gradient) and whether it has both [B].

    The hardest pairs are chosen on squared distances ||a||² + ||b||² − 2a·b (the same order as the distances,
    with no square root or B×B symmetrisation), on the CPU a block of anchors at a time so that it stays in cache.
    """
    check_inputs(embeddings, labels, margin, check_finite)
    b = embeddings.shape[0]
    none = torch.zeros(0, dtype=torch.long, device=embeddings.device)
    farthest, closest = [(none, none)], [(none, none)]
    with torch.no_grad():
        x = embeddings.detach()
        sq_norms = x.pow(2).sum(dim=1)
        block = HARDEST_BLOCK if x.device.type == "cpu" else HARDEST_BLOCK_ACCELERATOR
        step = max(1, block // max(b, 1))
        for start in range(0, b, step):
            squared = torch.addmm(sq_norms, x[start:start + step], x.T, alpha=-2)
            same = labels[start:start + step, None] == labels[None, :]
            positive = torch.where(same, squared, -INF)
            positive.diagonal(offset=start).fill_(-INF)
            negative = torch.where(same, INF, squared)
            farthest.append(_ties(positive, positive.amax(dim=1, keepdim=True), start))
            closest.append(_ties(negative, negative.amin(dim=1, keepdim=True), start))
    hardest_positive, has_positive = _chosen_distance(embeddings, *map(torch.cat, zip(*farthest, strict=True)),
                                                      "amax")
    hardest_negative, has_negative = _chosen_distance(embeddings, *map(torch.cat, zip(*closest, strict=True)),
                                                      "amin")
    anchors = has_positive & has_negative
    return torch.where(anchors, hardest_positive - hardest_negative, 0.0), anchors


def _ties(block: Tensor, best: Tensor, start: int) -> tuple[Tensor, Tensor]:
    """Rows (offset by start) and columns [T] of a block's entries [R, B] equal to their row's finite best [R, 1]."""
    rows, cols = ((block == best) & best.isfinite()).nonzero(as_tuple=True)
    return rows + start, cols


def _chosen_distance(embeddings: Tensor, rows: Tensor, cols: Tensor, reduce: str) -> tuple[Tensor, Tensor]:
    """Per row, the `reduce` ("amax" or "amin") of its chosen pairs' distances [B] (0 where it has none), the
    gradient shared equally by the pairs that attain it (amax's semantics), and whether it has one [B]. Each distance
    is that of the two embeddings' difference (0, and no NaN, where they coincide). A reduction, not a mean of the
    tied pairs: equal distances give exactly their value, so that a hinge the dense reference finds at exactly 0 is
    at 0 here too (a mean of T equal values can round above them, and the hinge's gradient then flows)."""
    length = root((embeddings[rows] - embeddings[cols]).pow(2).sum(dim=1))
    chosen = torch.zeros(embeddings.shape[0], dtype=embeddings.dtype, device=embeddings.device)
    has = torch.zeros(embeddings.shape[0], dtype=torch.bool, device=embeddings.device)
    return chosen.scatter_reduce(0, rows, length, reduce=reduce, include_self=False), has.index_fill(0, rows, True)


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
    negatives_sorted, order = d.detach().masked_fill(~neg, INF).sort(dim=1, stable=True)
    columns, real = _positives_by_row(pos)  # only the positive pairs are searched, packed per row
    d_ap = d.gather(1, columns)
    first_farther = torch.searchsorted(negatives_sorted, d_ap.detach(), right=True).clamp_max(d.shape[1] - 1)
    chosen = real & (negatives_sorted.gather(1, first_farther) < d_ap.detach() + margin)
    d_an = d.gather(1, order.gather(1, first_farther))
    terms = torch.where(chosen, d_ap - d_an + margin, 0.0)
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
    ranked = _negatives_ranked(d, neg)
    triplet_term = _hinge_mean(d, *_triplet_weights(d, pos, ranked, m_eff), m_eff)
    half = m_eff / 2
    pair_term = _hinge_mean(d, *_quadruplet_weights(d, labels, pos, neg, ranked, half), half)
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
