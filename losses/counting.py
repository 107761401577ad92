"""Counting by sorting: how many triplets or quadruplets are active, without enumerating them.

A hinge term [x − y + m]₊ is active when y < x + m. Sorting the y values once and binary-searching
each threshold x + m (or sorting the thresholds and ranking each y among them) counts the active partners of
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


def count_at_most(sorted_thresholds: Tensor, values: Tensor) -> Tensor:
    """For ascending thresholds [P] and values of any shape: #{q : sorted_thresholds[q] ≤ value}, same shape."""
    return torch.searchsorted(sorted_thresholds, values.contiguous(), right=True)


def count_below_thresholds(ranks: Tensor, n_thresholds: int) -> Tensor:
    """Per threshold q of an ascending list [P]: #values v < t_q, given each value's rank = count_at_most(t, v).

    v < t_q ⟺ rank(v) ≤ q, so a histogram of the ranks, summed cumulatively, counts them all in O(P + #values).
    """
    return torch.bincount(ranks, minlength=n_thresholds + 1).cumsum(0)[:n_thresholds]


TABLE_LIMIT = 1 << 26  # entries of count_at_most_in_group's table, beyond which it searches instead


def count_at_most_in_group(
    ranks: Tensor, groups: Tensor, threshold_groups: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Within-group ranks: #thresholds of a value's group that are ≤ it, per value; exact integers, no loop.

    ranks: count_at_most of each value among all P ascending thresholds [V]; groups: K groups per value [V, K];
    threshold_groups: each sorted threshold's group [P] (non-negative ints). The thresholds
    of group g that are ≤ v are those of g among the first rank(v) sorted thresholds: a table [P + 1, G] of their
    running counts answers each value by lookup; where the table would pass TABLE_LIMIT entries (many groups and
    many thresholds), one search of the integer keys g·(P + 1) + position does. Returns the in-group ranks [V, K],
    the thresholds' order grouped by group (stable) [P] and the thresholds per group [G].
    """
    n = threshold_groups.numel()
    n_groups = max(int(groups.max()) if groups.numel() else 0, int(threshold_groups.max()) if n else 0) + 1
    by_group = threshold_groups.sort(stable=True).indices
    per_group = torch.bincount(threshold_groups, minlength=n_groups)
    if n_groups * (n + 1) <= TABLE_LIMIT:  # row r: per group, #thresholds among the first r (rank-major: one line)
        table = torch.zeros(n + 1, n_groups, dtype=torch.int32, device=ranks.device)
        table[torch.arange(1, n + 1, device=ranks.device), threshold_groups] = 1
        in_group = table.cumsum_(0).view(-1)[ranks.unsqueeze(-1) * n_groups + groups].long()
    else:
        keys = threshold_groups[by_group] * (n + 1) + by_group
        start = per_group.cumsum(0) - per_group
        in_group = torch.searchsorted(keys, groups * (n + 1) + ranks.unsqueeze(-1)) - start[groups]
    return in_group, by_group, per_group


def count_below_thresholds_in_group(
    in_group_ranks: Tensor, groups: Tensor, by_group: Tensor, per_group: Tensor
) -> Tensor:
    """Per sorted threshold [P]: #values of its own group below it, from count_at_most_in_group's outputs.

    Each group g has per_group[g] + 1 histogram slots (in-group ranks 0 … per_group[g]); a cumulative sum over all
    slots, less its value where the group's slots begin, is count_below_thresholds within each group.
    """
    n_groups = per_group.numel()
    first_slot = per_group.cumsum(0) - per_group + torch.arange(n_groups, device=per_group.device)
    slots = torch.bincount(first_slot[groups] + in_group_ranks, minlength=int(per_group.sum()) + n_groups)
    cumulative = torch.cat([slots.new_zeros(1), slots.cumsum(0)])
    group_of = torch.repeat_interleave(torch.arange(n_groups, device=per_group.device), per_group)
    position = torch.arange(by_group.numel(), device=by_group.device) + group_of  # slot of each grouped threshold
    counts = torch.empty_like(by_group)
    counts[by_group] = cumulative[position + 1] - cumulative[first_slot[group_of]]
    return counts
