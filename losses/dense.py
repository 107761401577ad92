"""Dense reference losses that build the full B³ triplet and B⁴ quadruplet tensors.

They restate each definition as directly as tensors allow: the tests check them against plain
loops and the fast losses against them, and `make bench` runs them as the dense peer until they
fail. They are not for training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losses.distance import pair_masks, root

INF = float("inf")


def dense_distance(embeddings: Tensor) -> Tensor:
    """Euclidean distances [B, B] from explicit differences [B, B, D]; gradient 0 where points meet."""
    squared = (embeddings[:, None, :] - embeddings[None, :, :]).pow(2).sum(-1)
    return root(squared)


def triplet_terms(embeddings: Tensor, labels: Tensor, margin: Tensor | float) -> tuple[Tensor, Tensor]:
    """Terms d_ap − d_an + m [B, B, B] indexed (a, p, n), and the valid-triplet mask [B, B, B]."""
    d = dense_distance(embeddings)
    pos, neg = pair_masks(labels)
    return d[:, :, None] - d[:, None, :] + margin, pos[:, :, None] & neg[:, None, :]


def _mean_positive(terms: Tensor, valid: Tensor) -> Tensor:
    """Mean of the valid terms that are > 0; 0 (attached to the graph) when there are none."""
    active = valid & (terms > 0)
    return torch.where(active, terms, 0.0).sum() / active.sum().clamp_min(1)


def dense_adaptive_margin(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """m + max(mean d_neg − mean d_pos, 0), from dense distances, without gradient."""
    d = dense_distance(embeddings.detach())
    pos, neg = pair_masks(labels)
    mu_pos = d[pos].mean() if pos.any() else d.new_zeros(())
    mu_neg = d[neg].mean() if neg.any() else d.new_zeros(())
    return margin + (mu_neg - mu_pos).clamp_min(0)


def dense_batch_all(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Batch-all from the B³ term tensor."""
    return _mean_positive(*triplet_terms(embeddings, labels, margin))


def dense_batch_hard(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Batch-hard as the largest valid B³ term per anchor, [·]₊, averaged over anchors with one."""
    terms, valid = triplet_terms(embeddings, labels, margin)
    hardest = terms.masked_fill(~valid, -INF).flatten(1).amax(dim=1)
    anchors = valid.flatten(1).any(dim=1)
    return torch.where(anchors, hardest.clamp_min(0), 0.0).sum() / anchors.sum().clamp_min(1)


def dense_batch_hard_soft(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Soft-margin batch-hard: softplus of the largest valid B³ term per anchor, averaged over anchors with one."""
    terms, valid = triplet_terms(embeddings, labels, margin)
    hardest = terms.masked_fill(~valid, -INF).flatten(1).amax(dim=1)
    anchors = valid.flatten(1).any(dim=1)
    soft = torch.nn.functional.softplus(hardest.masked_fill(~anchors, 0.0))
    return torch.where(anchors, soft, 0.0).sum() / anchors.sum().clamp_min(1)


def dense_semi_hard(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Semi-hard from B³ masks: per (a, p) the closest n with d_ap < d_an < d_ap + m (lowest index on ties)."""
    d = dense_distance(embeddings)
    pos, neg = pair_masks(labels)
    d_ap, d_an = d[:, :, None], d[:, None, :].expand(-1, d.shape[0], -1)
    semi = pos[:, :, None] & neg[:, None, :] & (d_an > d_ap) & (d_an < d_ap + margin)
    closest = d_an.masked_fill(~semi, INF).argmin(dim=2, keepdim=True)
    chosen = semi.any(dim=2)
    terms = d - d_an.gather(2, closest).squeeze(2) + margin
    return torch.where(chosen, terms, 0.0).sum() / chosen.sum().clamp_min(1)


def dense_adaptive_mu(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Adaptive-mu: dense batch-all with m_eff = m + max(μ, 0)."""
    return dense_batch_all(embeddings, labels, dense_adaptive_margin(embeddings, labels, margin))


def dense_quadruplet(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Quadruplet: adaptive-mu term + mean active [d_ij − d_kl + m_eff/2]₊ from the B⁴ tensor."""
    m_eff = dense_adaptive_margin(embeddings, labels, margin)
    d = dense_distance(embeddings)
    pos, _ = pair_masks(labels)
    y = labels
    valid = (
        pos[:, :, None, None]
        & (y[None, None, :, None] != y[:, None, None, None])  # y_k ≠ y_i
        & (y[None, None, None, :] != y[:, None, None, None])  # y_l ≠ y_i
        & (y[None, None, None, :] != y[None, None, :, None])  # y_l ≠ y_k
    )
    terms = d[:, :, None, None] - d[None, None, :, :] + m_eff / 2
    return dense_batch_all(embeddings, labels, m_eff) + _mean_positive(terms, valid)


DENSE_LOSSES = {
    "batch-all": dense_batch_all,
    "batch-hard": dense_batch_hard,
    "adaptive-mu": dense_adaptive_mu,
    "quadruplet": dense_quadruplet,
    "semi-hard": dense_semi_hard,
    "batch-hard-soft": dense_batch_hard_soft,
}
