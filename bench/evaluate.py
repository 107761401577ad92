"""Exact, chunked nearest-neighbour retrieval metrics in torch, on the embeddings' device.

The gallery (train-set embeddings) is searched for each query (test-set embedding) by Euclidean
distance. Neighbours at equal distance come in an unspecified order.
- knn_accuracy: the majority label of the k = 5 nearest gallery items; a tie between labels goes to
  the smallest label, as in scikit-learn's KNeighborsClassifier(n_neighbors=5).
- precision_at_1: the fraction of queries whose nearest gallery item has their label.
- map_at_r (Musgrave et al. 2020, "A Metric Learning Reality Check"): per query, with R = the number of
  gallery items with its label, (1/R) Σ_{i ≤ R} P(i)·rel(i), where rel(i) says whether the i-th
  neighbour has the query's label and P(i) is the precision of the first i; averaged over the queries
  whose label occurs in the gallery (NaN when none does).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 24  # distances held at once: 64 MiB in float32


def _nearest(gallery: Tensor, queries: Tensor, depths: Tensor) -> Iterator[tuple[slice, Tensor]]:
    """Per chunk of queries: its slice and the gallery indices [q, max depth] ordered nearest first."""
    dtype = torch.promote_types(gallery.dtype, torch.float32)
    gallery = gallery.to(dtype)
    gallery_sq = (gallery * gallery).sum(dim=1)
    rows = max(1, CHUNK_ELEMENTS // max(len(gallery), 1))
    for start in range(0, len(queries), rows):
        part = slice(start, start + rows)
        depth = int(depths[part].max())
        distances = gallery_sq - 2 * queries[part].to(dtype) @ gallery.T  # ‖q‖² is the same along a row
        yield part, distances.topk(depth, dim=1, largest=False, sorted=True).indices


def _label_positions(classes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of labels in the sorted classes, and whether each label is one of them."""
    positions = torch.searchsorted(classes, labels).clamp_max(len(classes) - 1)
    return positions, classes[positions] == labels


def retrieval_metrics(
    gallery: Tensor, gallery_labels: Tensor, queries: Tensor, query_labels: Tensor, k: int = 5
) -> dict[str, float]:
    """knn_accuracy, precision_at_1 and map_at_r of queries [Q, D] against gallery [G, D], in one pass."""
    classes, gallery_class = torch.unique(gallery_labels, return_inverse=True)
    positions, known = _label_positions(classes, query_labels)
    relevant = torch.where(known, torch.bincount(gallery_class, minlength=len(classes))[positions], 0)
    k = min(k, len(gallery))
    depths = relevant.clamp(min=k)
    correct_knn, correct_first, ap_sum = torch.zeros(3, dtype=torch.float64, device=queries.device)
    for part, nearest in _nearest(gallery, queries, depths):
        votes = torch.nn.functional.one_hot(gallery_class[nearest[:, :k]], len(classes)).sum(dim=1)
        predicted = classes[votes.argmax(dim=1)]  # argmax takes the first maximum: the smallest label
        correct_knn += (predicted == query_labels[part]).sum()
        hits = gallery_labels[nearest] == query_labels[part, None]
        correct_first += hits[:, 0].sum()
        rank = torch.arange(1, hits.shape[1] + 1, device=hits.device)
        within_r = rank <= relevant[part, None]
        precision = hits.cumsum(dim=1, dtype=torch.float64) / rank
        ap = (precision * (hits & within_r)).sum(dim=1) / relevant[part].clamp(min=1)
        ap_sum += ap.sum()
    n_known = int(known.sum())
    return {
        "knn_accuracy": float(correct_knn) / len(queries),
        "precision_at_1": float(correct_first) / len(queries),
        "map_at_r": float(ap_sum) / n_known if n_known else float("nan"),
    }


def knn_accuracy(
    gallery: Tensor, gallery_labels: Tensor, queries: Tensor, query_labels: Tensor, k: int = 5
) -> float:
    """Fraction of queries [Q, D] whose k-NN majority label among gallery [G, D] is theirs."""
    return retrieval_metrics(gallery, gallery_labels, queries, query_labels, k)["knn_accuracy"]


def precision_at_1(gallery: Tensor, gallery_labels: Tensor, queries: Tensor, query_labels: Tensor) -> float:
    """Fraction of queries [Q, D] whose nearest item of gallery [G, D] has their label."""
    return retrieval_metrics(gallery, gallery_labels, queries, query_labels, 1)["precision_at_1"]


def map_at_r(gallery: Tensor, gallery_labels: Tensor, queries: Tensor, query_labels: Tensor) -> float:
    """MAP@R of queries [Q, D] against gallery [G, D] (Musgrave et al. 2020)."""
    return retrieval_metrics(gallery, gallery_labels, queries, query_labels, 1)["map_at_r"]
