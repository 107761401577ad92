"""k-NN accuracy, precision@1 and MAP@R against scikit-learn, pytorch-metric-learning and brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN
from sklearn.neighbors import KNeighborsClassifier

import bench.evaluate
from bench.evaluate import knn_accuracy, map_at_r, precision_at_1, retrieval_metrics


def random_set(seed: int, n_gallery: int, n_queries: int, dim: int, n_classes: int) -> tuple[torch.Tensor, ...]:
    """Gaussian class clusters that overlap (so that neighbours disagree), with labels 10c + 3."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g, dtype=torch.float64)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, n_classes, (n,), generator=g)
        return centres[labels] + 1.5 * torch.randn(n, dim, generator=g, dtype=torch.float64), 10 * labels + 3

    return (*draw(n_gallery), *draw(n_queries))


def brute_map_at_r(gallery: torch.Tensor, gl: torch.Tensor, queries: torch.Tensor, ql: torch.Tensor) -> float:
    """MAP@R straight from the definition, one query at a time."""
    values = []
    for q, label in zip(queries, ql, strict=True):
        r = int((gl == label).sum())
        if r == 0:
            continue
        order = torch.cdist(q[None], gallery)[0].argsort()
        relevant = (gl[order[:r]] == label).double()
        precision = relevant.cumsum(0) / torch.arange(1, r + 1)
        values.append(float((precision * relevant).sum() / r))
    return float(np.mean(values))


@pytest.fixture(params=[False, True], ids=["one-chunk", "many-chunks"])
def chunking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.param:
        monkeypatch.setattr(bench.evaluate, "CHUNK_ELEMENTS", 700)  # a few queries per chunk


@pytest.mark.parametrize("seed", range(4))
def test_knn_accuracy_matches_sklearn(seed: int, chunking: None) -> None:
    g, gl, q, ql = random_set(seed, 300, 200, 6, 4)
    sk = KNeighborsClassifier(n_neighbors=5).fit(g.numpy(), gl.numpy()).predict(q.numpy())
    expected = float((sk == ql.numpy()).mean())
    assert 0.3 < expected < 0.9  # neighbours disagree often enough for votes to tie
    assert knn_accuracy(g, gl, q, ql) == expected
    for k in (1, 3, 4):
        sk = KNeighborsClassifier(n_neighbors=k).fit(g.numpy(), gl.numpy()).predict(q.numpy())
        assert knn_accuracy(g, gl, q, ql, k) == float((sk == ql.numpy()).mean())


def test_knn_vote_tie_goes_to_the_smallest_label() -> None:
    gallery = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0], [50.0]])
    gallery_labels = torch.tensor([9, 9, 4, 4, 7, 1])  # the 5 nearest of 0: two 9s, two 4s, one 7
    query = torch.zeros(1, 1)
    assert knn_accuracy(gallery, gallery_labels, query, torch.tensor([4])) == 1.0
    assert knn_accuracy(gallery, gallery_labels, query, torch.tensor([9])) == 0.0
    sk = KNeighborsClassifier(n_neighbors=5).fit(gallery.numpy(), gallery_labels.numpy())
    assert sk.predict(query.numpy()).tolist() == [4]


@pytest.mark.parametrize("seed", range(3))
def test_precision_at_1_is_the_nearest_neighbours_label(seed: int, chunking: None) -> None:
    g, gl, q, ql = random_set(seed, 250, 120, 5, 6)
    nearest = torch.cdist(q, g).argmin(dim=1)
    assert precision_at_1(g, gl, q, ql) == float((gl[nearest] == ql).double().mean())


@pytest.mark.parametrize("seed", range(3))
def test_map_at_r_matches_brute_force_and_pytorch_metric_learning(seed: int, chunking: None) -> None:
    g, gl, q, ql = random_set(seed, 240, 90, 5, 5)
    ours = map_at_r(g, gl, q, ql)
    assert ours == pytest.approx(brute_map_at_r(g, gl, q, ql), abs=1e-12)
    knn = CustomKNN(LpDistance(normalize_embeddings=False))  # pml normalises by default
    calculator = AccuracyCalculator(include=("mean_average_precision_at_r",), knn_func=knn)
    pml = calculator.get_accuracy(q.float(), ql, g.float(), gl)["mean_average_precision_at_r"]
    assert ours == pytest.approx(pml, abs=1e-6)


def test_map_at_r_on_a_hand_example() -> None:
    # R = 3 for label 0; ranked labels 0, 1, 0, 0 → (1/3)(1/1 + 0 + 2/3) = 5/9 (the 4th is beyond R)
    gallery = torch.tensor([[1.0], [2.0], [3.0], [4.0], [10.0]])
    gallery_labels = torch.tensor([0, 1, 0, 0, 1])
    assert map_at_r(gallery, gallery_labels, torch.zeros(1, 1), torch.tensor([0])) == pytest.approx(5 / 9)
    assert map_at_r(gallery, gallery_labels, torch.zeros(1, 1), torch.tensor([1])) == pytest.approx(1 / 4)


def test_queries_with_a_label_absent_from_the_gallery() -> None:
    gallery = torch.tensor([[0.0], [1.0], [2.0]])
    gallery_labels = torch.tensor([5, 5, 6])
    queries = torch.tensor([[0.1], [1.9]])
    metrics = retrieval_metrics(gallery, gallery_labels, queries, torch.tensor([5, 8]))
    assert metrics["precision_at_1"] == 0.5 and metrics["knn_accuracy"] == 0.5  # k is capped at 3 items
    assert metrics["map_at_r"] == 1.0  # the label-8 query has no relevant item: left out of the mean
    lone = retrieval_metrics(gallery, gallery_labels, queries[1:], torch.tensor([8]))
    assert lone["map_at_r"] != lone["map_at_r"]  # NaN


def test_perfect_embeddings_score_one() -> None:
    labels = torch.arange(40) % 4
    points = torch.nn.functional.one_hot(labels, 4).double() + 0.01 * torch.randn(40, 4, dtype=torch.float64)
    assert retrieval_metrics(points[:30], labels[:30], points[30:], labels[30:]) == {
        "knn_accuracy": 1.0, "precision_at_1": 1.0, "map_at_r": 1.0,
    }
