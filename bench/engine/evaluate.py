"""Exact, chunked nearest-neighbour retrieval metrics in torch, on the embeddings' device.

Two searches, by Euclidean distance:
- gallery → queries: each query [Q, D] searches the whole gallery [G, D] (the `seen` protocol's k-NN
  classification: training images as gallery, validation or test images as queries);
- leave-one-out (queries=None): each item of the set [G, D] searches the rest of the set, its own image
  excluded from its neighbours and from R (the `unseen` protocol's retrieval within a set, as in
  pytorch-metric-learning's AccuracyCalculator with the reference equal to the query set).
Neighbours at equal distance come in an unspecified order.
- knn_accuracy: the majority label of the k = 5 nearest items; a tie between labels goes to the tied
  label with the nearest neighbour (scikit-learn's KNeighborsClassifier gives the smallest label instead).
- precision_at_1: the fraction of queries whose nearest item has their label.
- map_at_r (Musgrave et al. 2020, "A Metric Learning Reality Check"): per query, with R = the number of
  searched items with its label (self excluded), (1/R) Σ_{i ≤ R} P(i)·rel(i), where rel(i) says whether
  the i-th neighbour has the query's label and P(i) is the precision of the first i; averaged over the
  queries with R > 0 (NaN when there is none). knn_accuracy and precision_at_1 count every query: one
  whose label no searched item has is a miss (pytorch-metric-learning leaves it out of those too).
Exact at any scale: the search centres gallery and queries on the gallery mean and ranks by ‖g‖² − 2 q·g in
float64, CHUNK_ELEMENTS distances at a time. In float32 that difference cancels when the embeddings sit in a small
ball far from the origin (L2-normalised embeddings squeezed to a diameter of ~0.002: their ‖g‖² agree to 6 digits),
and the ranks then follow rounding, not distance; centred and in float64, ranks depend only on the embeddings'
relative positions, so scaling or translating the set leaves the metrics unchanged (tests/test_evaluate.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 24  # distances held at once: 128 MiB in float64


def _nearest(
    gallery: Tensor, queries: Tensor | None, depths: Tensor
) -> Iterator[tuple[slice, Tensor]]:
    """Per chunk of queries: its slice and the gallery indices [q, max depth] ordered nearest first.

    queries=None searches the gallery for its own items, each item's own index excluded. Distances are ranked in
    float64 on coordinates centred on the gallery mean (module docstring).
    """
    gallery = gallery.double()
    centre = gallery.mean(dim=0)
    gallery = gallery - centre
    gallery_sq = (gallery * gallery).sum(dim=1)
    n_queries = len(gallery) if queries is None else len(queries)
    rows = max(1, CHUNK_ELEMENTS // max(len(gallery), 1))
    for start in range(0, n_queries, rows):
        part = slice(start, min(start + rows, n_queries))
        depth = int(depths[part].max())
        chunk = gallery[part] if queries is None else queries[part].double() - centre
        distances = gallery_sq - 2 * chunk @ gallery.T  # ‖q‖² is the same along a row
        if queries is None:
            own = torch.arange(part.stop - start, device=distances.device)
            distances[own, own + start] = torch.inf
        yield part, distances.topk(depth, dim=1, largest=False, sorted=True).indices


def _label_positions(classes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of labels in the sorted classes, and whether each label is one of them."""
    positions = torch.searchsorted(classes, labels).clamp_max(len(classes) - 1)
    return positions, classes[positions] == labels


def knn_vote(neighbour_class: Tensor, n_classes: int) -> Tensor:
    """Predicted class [Q] from neighbour classes [Q, k] (nearest first): most votes, ties to the nearest."""
    k = neighbour_class.shape[1]
    votes = torch.nn.functional.one_hot(neighbour_class, n_classes).sum(dim=1)
    first = torch.full_like(votes, k)  # rank of each class's nearest neighbour (k: none among the k)
    for rank in reversed(range(k)):  # nearer ranks written last: they win
        first.scatter_(1, neighbour_class[:, rank, None], rank)
    return (votes * (k + 1) + (k - first)).argmax(dim=1)  # votes first; then the nearer first neighbour


def retrieval_metrics(
    gallery: Tensor, gallery_labels: Tensor, queries: Tensor | None = None, query_labels: Tensor | None = None,
    k: int = 5,
) -> dict[str, float]:
    """knn_accuracy, precision_at_1 and map_at_r of queries [Q, D] against gallery [G, D], in one pass.

    queries=None (and query_labels=None): leave-one-out within the gallery, each item its own query.
    """
    leave_one_out = queries is None
    if leave_one_out != (query_labels is None):
        raise ValueError("pass queries and query_labels together, or neither (leave-one-out)")
    if len(gallery) <= leave_one_out:
        raise ValueError(f"a leave-one-out search needs at least 2 items, got {len(gallery)}")
    query_labels = gallery_labels if query_labels is None else query_labels
    classes, gallery_class = torch.unique(gallery_labels, return_inverse=True)
    positions, known = _label_positions(classes, query_labels)
    counts = torch.bincount(gallery_class, minlength=len(classes))
    relevant = torch.where(known, counts[positions] - int(leave_one_out), 0)
    k = min(k, len(gallery) - int(leave_one_out))
    depths = relevant.clamp(min=k)
    correct_knn, correct_first, ap_sum = torch.zeros(3, dtype=torch.float64, device=gallery.device)
    for part, nearest in _nearest(gallery, queries, depths):
        predicted = classes[knn_vote(gallery_class[nearest[:, :k]], len(classes))]
        correct_knn += (predicted == query_labels[part]).sum()
        hits = gallery_labels[nearest] == query_labels[part, None]
        correct_first += hits[:, 0].sum()
        rank = torch.arange(1, hits.shape[1] + 1, device=hits.device)
        within_r = rank <= relevant[part, None]
        precision = hits.cumsum(dim=1, dtype=torch.float64) / rank
        ap = (precision * (hits & within_r)).sum(dim=1) / relevant[part].clamp(min=1)
        ap_sum += ap.sum()
    n_queries, n_relevant = len(query_labels), int((relevant > 0).sum())
    return {
        "knn_accuracy": float(correct_knn) / n_queries,
        "precision_at_1": float(correct_first) / n_queries,
        "map_at_r": float(ap_sum) / n_relevant if n_relevant else float("nan"),
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
