"""The losses of LOSSES as pytorch-metric-learning (PML) loss functions, called exactly like PML's own.

    from losses.pml import BatchAllTripletLoss
    loss_fn = BatchAllTripletLoss(margin=0.2)      # in place of TripletMarginLoss(margin=0.2)
    loss = loss_fn(embeddings, labels)             # embeddings [B, D], labels [B]; a scalar with a graph

Each class is a BaseMetricLossFunction; only this module imports PML (`import losses` works without it). The
distance is PML's default, LpDistance(normalize_embeddings=True, p=2, power=1): Euclidean, not squared, on
L2-normalised embeddings; LpDistance(normalize_embeddings=False) gives the embeddings as given. `ref_emb` [R, D]
with `ref_labels` [R] is supported by every loss but quadruplet: anchors come from `embeddings`, positives and
negatives from the reference set; as in PML, the pairs (i, i) are positives unless `ref_labels` is `labels`
itself. Each option an exact sub-cubic loss cannot honour is refused with a one-line ValueError: a reducer (each
loss reduces itself: batch-all's mean over the non-zero triplets is PML's AvgNonZeroReducer), an
embedding_regularizer, an `indices_tuple` (and so a miner or CrossBatchMemory), any distance but
LpDistance(p=2, power=1), and `ref_emb` for quadruplet. See docs/pml.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import BaseMetricLossFunction
from torch import Tensor

from losses import LOSSES
from losses.distance import check_inputs, cross_distance
from losses.triplet import (
    adaptive_mu_from_distances,
    batch_all_from_distances,
    batch_hard_from_distances,
    batch_hard_soft_from_distances,
    semi_hard_from_distances,
)

FROM_DISTANCES: dict[str, Callable[[Tensor, Tensor, Tensor, float], Tensor]] = {
    "batch-all": batch_all_from_distances,
    "batch-hard": batch_hard_from_distances,
    "batch-hard-soft": batch_hard_soft_from_distances,
    "semi-hard": semi_hard_from_distances,
    "adaptive-mu": adaptive_mu_from_distances,
}


class TripletBenchLoss(BaseMetricLossFunction):
    """LOSSES[loss_name] as a PML loss: loss_fn(embeddings [B, D], labels [B], ref_emb=None, ref_labels=None)."""

    loss_name: ClassVar[str]

    def __init__(self, margin: float = 0.05, check_finite: bool = True, **kwargs: Any) -> None:
        """margin m ≥ 0 (TripletMarginLoss's default 0.05); check_finite: refuse NaN/Inf; kwargs: PML's (distance…)."""
        for option in ("reducer", "embedding_regularizer"):
            if kwargs.get(option) is not None:
                raise ValueError(f"{option}: not supported; {type(self).__name__} reduces itself exactly (docs/pml.md)")
        super().__init__(**kwargs)
        distance = self.distance
        if type(distance) is not LpDistance or distance.p != 2 or distance.power != 1 or distance.is_inverted:
            raise ValueError(f"distance: only LpDistance(p=2, power=1) (Euclidean) is supported, got {distance!r}")
        self.margin = margin
        self.check_finite = check_finite
        self.add_to_recordable_attributes(list_of_names=["margin"], is_stat=False)

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: tuple[Tensor, ...] | None = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        """The scalar loss of anchors embeddings [B, D] with labels [B], against ref_emb [R, D] if given."""
        if indices_tuple is not None:
            raise ValueError("indices_tuple: not supported; the loss mines every tuple itself (use no miner)")
        if labels is None:
            raise ValueError("labels: required")
        if (ref_emb is None) != (ref_labels is None):
            raise ValueError("ref_emb and ref_labels: give both or neither")
        if ref_emb is not None and self.loss_name not in FROM_DISTANCES:
            raise ValueError(f"ref_emb: not supported by {type(self).__name__} (quadruplets need one batch)")
        return super().forward(embeddings, labels, None, ref_emb, ref_labels)

    def compute_loss(
        self, embeddings: Tensor, labels: Tensor, indices_tuple: None, ref_emb: Tensor, ref_labels: Tensor
    ) -> dict[str, dict[str, Any]]:
        """PML's loss dict holding the scalar loss, already reduced; ref_emb is embeddings when none was given."""
        x = self.distance.maybe_normalize(embeddings)
        if ref_emb is embeddings and ref_labels is labels:
            loss = LOSSES[self.loss_name](x, labels, self.margin, self.check_finite)
        else:
            loss = self._against(x, labels, self.distance.maybe_normalize(ref_emb), ref_labels)
        return {"loss": {"losses": loss, "indices": None, "reduction_type": "already_reduced"}}

    def _against(self, x: Tensor, labels: Tensor, refs: Tensor, ref_labels: Tensor) -> Tensor:
        """The loss of anchors x [B, D] against refs [R, D]; (i, i) is a positive unless ref_labels is labels."""
        check_inputs(x, labels, self.margin, self.check_finite)
        check_inputs(refs, ref_labels, self.margin, self.check_finite)
        if refs.shape[1] != x.shape[1]:
            raise ValueError(f"ref_emb must have the embeddings' dimension {x.shape[1]}, got {refs.shape[1]}")
        same = labels[:, None] == ref_labels[None, :]
        pos = same & ~torch.eye(*same.shape, dtype=torch.bool, device=same.device) if ref_labels is labels else same
        return FROM_DISTANCES[self.loss_name](cross_distance(x, refs), pos, ~same, self.margin)


class BatchAllTripletLoss(TripletBenchLoss):
    """Batch-all: mean of [d_ap − d_an + m]₊ over the triplets whose term is > 0 (= TripletMarginLoss's default)."""

    loss_name = "batch-all"


class BatchHardTripletLoss(TripletBenchLoss):
    """Batch-hard: mean over anchors with a positive and a negative of [max d_ap − min d_an + m]₊."""

    loss_name = "batch-hard"


class BatchHardSoftTripletLoss(TripletBenchLoss):
    """Hermans et al.'s soft margin: mean over the anchors of ln(1 + exp(max d_ap − min d_an + m)); m = 0 theirs."""

    loss_name = "batch-hard-soft"

    def __init__(self, margin: float = 0.0, check_finite: bool = True, **kwargs: Any) -> None:
        """margin m ≥ 0 (default 0: Hermans et al.'s soft margin has none); the rest as TripletBenchLoss."""
        super().__init__(margin, check_finite, **kwargs)


class SemiHardTripletLoss(TripletBenchLoss):
    """FaceNet semi-hard: per positive pair, the closest n with d_ap < d_an < d_ap + m; pairs without one skipped."""

    loss_name = "semi-hard"


class AdaptiveMuTripletLoss(TripletBenchLoss):
    """Batch-all at m_eff = m + max(μ, 0), μ = mean negative − mean positive pair distance (no gradient)."""

    loss_name = "adaptive-mu"


class QuadrupletLoss(TripletBenchLoss):
    """Chen et al.'s quadruplet loss: the adaptive-mu term + the mean active [d_ij − d_kl + m_eff/2]₊ (no ref_emb)."""

    loss_name = "quadruplet"


__all__ = [
    "AdaptiveMuTripletLoss",
    "BatchAllTripletLoss",
    "BatchHardSoftTripletLoss",
    "BatchHardTripletLoss",
    "QuadrupletLoss",
    "SemiHardTripletLoss",
    "TripletBenchLoss",
]
