"""Online triplet-mining losses on one Euclidean distance and one set of pair masks.

    from losses import LOSSES, mining_stats
    loss = LOSSES["batch-all"](embeddings, labels, margin)   # scalar tensor with a graph

Each entry of LOSSES is a Loss: the function and the facts about it that diagnostics and benchmarks need
(whether it adapts its margin, its value when every distance is equal, whether it mines one hardest pair per
anchor, the order of the tuples it sums over). A new loss is one function and one entry here.

CONTROLS holds the losses with parameters of their own, the controls the triplet losses are measured against:
name -> a module class built as cls(classes, dim, temperature, generator) and called as module(embeddings, labels).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from losses.distance import check_inputs, pair_masks, pairwise_distance
from losses.softmax import NormalizedSoftmax
from losses.triplet import (
    adaptive_mu,
    batch_all,
    batch_hard,
    batch_hard_soft,
    mining_stats,
    quadruplet,
    semi_hard,
)


@dataclass(frozen=True)
class Loss:
    """A loss function f(embeddings [B, D], labels [B], margin, check_finite=True) -> scalar, and its facts.

    - adaptive_margin: its hinges use m_eff = m + max(μ, 0), μ = mean negative − mean positive pair distance of
      the batch (a mean over no pairs counts as 0); otherwise m_eff = m.
    - pinned_factor: its value over m_eff when every pair distance is equal (quadruplet: 1.5, as its pair term
      adds m_eff / 2): the value at which training is pinned at the margin.
    - soft_margin: its hinge is softplus (Hermans et al.'s soft margin), so that value is ln(1 + e^m_eff).
    - hardest: it mines one hardest positive and one hardest negative per anchor (so the fraction of anchors
      whose hinge is active says how much it learns from).
    - order: the tuples it sums over, 3 (triplets) or 4 (quadruplets): its dense reference builds B**order terms.
    - min_classes: the distinct classes a batch needs for one valid tuple (a negative needs a second class; a
      quadruplet's negative pair a third): with fewer, the loss is 0 at every step and nothing is learnt.
    - has_margin: false for a control (CONTROLS, whose facts are facts(name)): its effective margin is the config's
      (0) and it is never pinned at one.
    """

    fn: Callable[..., Tensor]
    adaptive_margin: bool = False
    pinned_factor: float = 1.0
    soft_margin: bool = False
    hardest: bool = False
    order: int = 3
    min_classes: int = 2
    has_margin: bool = True

    def __call__(self, embeddings: Tensor, labels: Tensor, margin: float, check_finite: bool = True) -> Tensor:
        """The loss of embeddings [B, D] with labels [B] at `margin`: a scalar attached to the graph."""
        return self.fn(embeddings, labels, margin, check_finite)

    def effective_margin(self, margin: float, mu_pos: float, mu_neg: float) -> float:
        """The margin of its hinges on a batch with mean positive / negative pair distances mu_pos, mu_neg."""
        if not self.adaptive_margin:
            return margin
        mu = (mu_neg if math.isfinite(mu_neg) else 0.0) - (mu_pos if math.isfinite(mu_pos) else 0.0)
        return margin + max(mu, 0.0)

    def can_pin(self, mu_neg: float, effective_margin: float) -> bool:
        """Whether a batch with mean negative distance mu_neg can sit at pinned_loss: under a hinge only while
        mu_neg < m_eff (past it the hinge lets go); a soft margin has no hinge, so always."""
        return self.has_margin and (self.soft_margin or mu_neg < effective_margin)

    def pinned_loss(self, effective_margin: float) -> float:
        """Its value when every pair distance is (nearly) equal, at `effective_margin`."""
        if self.soft_margin:
            return math.log1p(math.exp(effective_margin))
        return self.pinned_factor * effective_margin


LOSSES: dict[str, Loss] = {
    "batch-all": Loss(batch_all),
    "batch-hard": Loss(batch_hard, hardest=True),
    "adaptive-mu": Loss(adaptive_mu, adaptive_margin=True),
    "quadruplet": Loss(quadruplet, adaptive_margin=True, pinned_factor=1.5, order=4, min_classes=3),
    "semi-hard": Loss(semi_hard),
    "batch-hard-soft": Loss(batch_hard_soft, hardest=True, soft_margin=True),
}

CONTROLS: dict[str, type[nn.Module]] = {"normalized-softmax": NormalizedSoftmax}


def _module_only(*args: object) -> Tensor:
    raise TypeError("a control has parameters of its own: build it with losses.CONTROLS[name](classes, dim, "
                    "temperature, generator)")


def facts(name: str) -> Loss:
    """The facts of loss or control `name` that diagnostics and config checks read: LOSSES[name], or for a control
    a Loss with no margin, no hardest pairs and one class enough (its function refuses to be called)."""
    return LOSSES[name] if name in LOSSES else Loss(_module_only, has_margin=False, min_classes=1)


__all__ = [
    "CONTROLS",
    "LOSSES",
    "Loss",
    "NormalizedSoftmax",
    "adaptive_mu",
    "batch_all",
    "batch_hard",
    "batch_hard_soft",
    "check_inputs",
    "facts",
    "mining_stats",
    "pair_masks",
    "pairwise_distance",
    "quadruplet",
    "semi_hard",
]
