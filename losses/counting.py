"""Counting by sorting: how many triplets or quadruplets are active, without enumerating them.

A hinge term [x − y + m]₊ is active when y < x + m. Sorting the y values once and binary-searching
each threshold x + m (or merging the thresholds into the sorted values) counts the active partners of
every x in O(n log n) time and O(n) memory, where enumerating the pairs (x, y) would cost O(n²).
Every loss here turns those counts into integer weights on the pairwise distances:
Σ_active (x − y + m) = Σ_x count(x)·x − Σ_y count(y)·y + m·#active.
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


def merge_order(thresholds: Tensor, values: Tensor) -> Tensor:
    """Indices into cat([thresholds [P], values [N]]) in ascending order; on ties thresholds come first."""
    return torch.cat([thresholds, values]).sort(stable=True).indices


def group_order(order: Tensor, group: Tensor) -> Tensor:
    """`order` regrouped: by group [P + N] first, keeping its order (by value, thresholds first) within a group."""
    return order[group[order].sort(stable=True).indices]


def merged_counts(order: Tensor, n_thresholds: int, group: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per threshold t: #values v < t [P]; per value v: #thresholds t > v [N]; within each group if given.

    `order` comes from merge_order (then group_order when `group` [P + N], non-negative ints, is given). Since a
    tie puts the threshold first, a cumulative count along `order` is exactly these strict comparisons.
    """
    is_value = order >= n_thresholds
    values_before = is_value.cumsum(0)
    thresholds_upto = (~is_value).cumsum(0)
    thresholds_in_group = torch.full_like(order, n_thresholds)
    if group is not None:
        sorted_group = group[order]
        n_groups = int(group.max()) + 1 if group.numel() else 1
        thresholds_per_group = torch.bincount(group[:n_thresholds], minlength=n_groups)
        values_per_group = torch.bincount(group[n_thresholds:], minlength=n_groups)
        values_before -= (values_per_group.cumsum(0) - values_per_group)[sorted_group]
        thresholds_upto -= (thresholds_per_group.cumsum(0) - thresholds_per_group)[sorted_group]
        thresholds_in_group = thresholds_per_group[sorted_group]
    counts = torch.empty_like(order)
    counts[order] = torch.where(is_value, thresholds_in_group - thresholds_upto, values_before)
    return counts[:n_thresholds], counts[n_thresholds:]
