"""Counting by sorting: how many triplets or quadruplets are active, without enumerating them.

A hinge term [x − y + m]₊ is active when y < x + m. Sorting the y values once and binary-searching
each threshold x + m counts the active partners of every x in O(n log n) time and O(n) memory, where
enumerating the pairs (x, y) would cost O(n²). Every loss here turns those counts into integer weights
on the pairwise distances: Σ_active (x − y + m) = Σ_x count(x)·x − Σ_y count(y)·y + m·#active.
"""

from __future__ import annotations

import torch
from torch import Tensor


def count_below_per_row(sorted_rows: Tensor, thresholds: Tensor) -> Tensor:
    """For rows sorted ascending [B, N] and thresholds [B, Q]: #{n : sorted_rows[b, n] < thresholds[b, q]}."""
    return torch.searchsorted(sorted_rows, thresholds)


def count_exceeding_ranks(counts: Tensor, include: Tensor, n_ranks: int) -> Tensor:
    """For counts [B, Q] in 0..n_ranks: out[b, r] = #{q : include[b, q] and counts[b, q] > r}, r < n_ranks.

    If counts[b, q] = #{sorted_rows[b, ·] < t_bq} then counts[b, q] > r ⟺ sorted_rows[b, r] < t_bq:
    so this inverts `count_below_per_row` in O(B·Q) without a second sort. Float32 [B, n_ranks];
    counts stay exact integers up to 2²⁴.
    """
    histogram = torch.zeros(counts.shape[0], n_ranks + 1, device=counts.device)
    histogram.scatter_add_(1, counts, include.float())
    return include.sum(dim=1, keepdim=True) - histogram[:, :n_ranks].cumsum(dim=1)


def joint_ranks(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, int]:
    """Dense integer ranks of a [n] and b [m] in their union (equal values share a rank), and #ranks."""
    distinct, inverse = torch.unique(torch.cat([a, b]), return_inverse=True)
    return inverse[: a.shape[0]], inverse[a.shape[0] :], distinct.shape[0]


def group_keys(group: Tensor, rank: Tensor, n_ranks: int) -> Tensor:
    """Sorted keys group·n_ranks + rank [n]: every group becomes a contiguous run sorted by rank."""
    return (group * n_ranks + rank).sort().values


def count_in_groups(
    keys: Tensor, query_group: Tensor, query_rank: Tensor, n_ranks: int, above: bool = False
) -> Tensor:
    """For each query [q]: #{keyed values in the query's group with rank < query_rank (> if above)}."""
    start = query_group * n_ranks
    query = start + query_rank
    if above:
        return torch.searchsorted(keys, start + n_ranks) - torch.searchsorted(keys, query, right=True)
    return torch.searchsorted(keys, query) - torch.searchsorted(keys, start)
