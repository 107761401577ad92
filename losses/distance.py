"""The one distance (within a batch, or from it to a reference set) and the pair masks that every loss uses."""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor


def check_inputs(embeddings: Tensor, labels: Tensor, margin: float, check_finite: bool = True) -> None:
    """Raise ValueError naming the problem unless embeddings [B, D] float, labels [B] int, margin >= 0."""
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2:
        shape = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings)
        raise ValueError(f"embeddings must be a 2-D tensor [B, D], got {shape}")
    if not embeddings.is_floating_point():
        raise ValueError(f"embeddings must be a floating-point tensor, got {embeddings.dtype}")
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels)
        raise ValueError(f"labels must be a 1-D tensor [B], got {shape}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"embeddings and labels differ in length: {embeddings.shape[0]} vs {labels.shape[0]}"
        )
    if isinstance(margin, bool) or not isinstance(margin, Real) or not math.isfinite(margin):
        raise ValueError(f"margin must be a finite real number, got {margin!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if check_finite and not bool(torch.isfinite(embeddings).all()):
        raise ValueError("embeddings contain NaN or Inf")


def pairwise_distance(embeddings: Tensor) -> Tensor:
    """Euclidean distances [B, B] between the rows of embeddings [B, D], as given (no normalisation).

    Uses ||a||² + ||b||² − 2a·b, so memory is O(B²) whatever D is. The diagonal is exactly 0 and
    the gradient at coinciding points is 0, not NaN. The result is exactly symmetric.
    """
    gram = embeddings @ embeddings.T
    gram = (gram + gram.T) / 2
    sq_norms = gram.diagonal()
    return root((sq_norms[:, None] + sq_norms[None, :] - 2 * gram).clamp_min(0))


def cross_distance(queries: Tensor, references: Tensor) -> Tensor:
    """Euclidean distances [B, R] from the rows of queries [B, D] to those of references [R, D], as given.

    ||q||² + ||r||² − 2q·r as in pairwise_distance, O(B·R) memory; the gradient where a query and a reference
    coincide exactly is 0, not NaN (near-coincident points round to a small positive distance).
    """
    return root((queries.pow(2).sum(1)[:, None] + references.pow(2).sum(1)[None, :] - 2 * queries @ references.T)
                .clamp_min(0))


def root(squared: Tensor) -> Tensor:
    """√squared elementwise (squared ≥ 0, any shape): 0 with gradient 0 (not NaN) where squared is 0, NaN where it
    is NaN (a NaN embedding's distances stay NaN, so that a loss of them is not finite)."""
    return torch.where(squared == 0, 0.0, squared.clamp_min(torch.finfo(squared.dtype).tiny).sqrt())


def pair_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Boolean masks [B, B]: positive (same label, i ≠ j) and negative (different label)."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same
