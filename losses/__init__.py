"""Online triplet-mining losses on one Euclidean distance and one set of pair masks.

    from losses import LOSSES, mining_stats
    loss = LOSSES["batch-all"](embeddings, labels, margin)   # scalar tensor with a graph
"""

from collections.abc import Callable

from torch import Tensor

from losses.distance import check_inputs, pair_masks, pairwise_distance
from losses.triplet import (
    adaptive_mu,
    batch_all,
    batch_hard,
    mining_stats,
    quadruplet,
    semi_hard,
)

Loss = Callable[..., Tensor]

LOSSES: dict[str, Loss] = {
    "batch-all": batch_all,
    "batch-hard": batch_hard,
    "adaptive-mu": adaptive_mu,
    "quadruplet": quadruplet,
    "semi-hard": semi_hard,
}

__all__ = [
    "LOSSES",
    "adaptive_mu",
    "batch_all",
    "batch_hard",
    "check_inputs",
    "mining_stats",
    "pair_masks",
    "pairwise_distance",
    "quadruplet",
    "semi_hard",
]
