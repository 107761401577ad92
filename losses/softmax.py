"""The normalised-softmax control (Zhai & Wu 2019; MLRC's central control): a classification loss with a learned
proxy per class, against which the triplet losses are measured.

    head = NormalizedSoftmax(classes=10, dim=128, temperature=0.05)
    loss = head(embeddings, labels)   # scalar; head.weight [C, D] trains with the net

loss = mean_i −log softmax_c(cos(e_i, w_c) / τ)[y_i]: cross-entropy of the cosine similarities between each
embedding and the C proxies w_c, divided by the temperature τ. Both sides are L2-normalised, so the loss does not
change when an embedding is scaled. It has no margin, so the diagnostics that read one (pinned at the margin, the
effective margin, the active anchors) do not apply to it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losses.distance import check_inputs


class NormalizedSoftmax(nn.Module):
    """Cross-entropy over cos(e, w_c) / temperature for proxies w [classes, dim], initialised like nn.Linear's
    weight (uniform in ±1/√dim) from `generator`."""

    def __init__(self, classes: int, dim: int, temperature: float, generator: torch.Generator | None = None):
        super().__init__()
        if classes < 1 or dim < 1 or not temperature > 0:
            raise ValueError(f"classes and dim must be >= 1 and temperature > 0, got {classes}, {dim}, {temperature}")
        bound = 1 / math.sqrt(dim)
        self.weight = nn.Parameter(torch.rand(classes, dim, generator=generator) * 2 * bound - bound)
        self.temperature = float(temperature)

    def forward(self, embeddings: Tensor, labels: Tensor, check_finite: bool = True) -> Tensor:
        """The mean loss of embeddings [B, D] with labels [B] in [0, classes): a scalar attached to the graph.
        check_finite False (the training step) also skips the label range check, which would synchronise a GPU."""
        check_inputs(embeddings, labels, 0.0, check_finite)
        if check_finite and len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(self.weight):
            raise ValueError(f"labels must lie in [0, {len(self.weight)}), got {int(labels.min())} to "
                             f"{int(labels.max())}")
        logits = F.normalize(embeddings, dim=1) @ F.normalize(self.weight, dim=1).T / self.temperature
        return F.cross_entropy(logits, labels)
