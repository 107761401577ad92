"""k-NN accuracy, precision@1 and MAP@R against scikit-learn, pytorch-metric-learning and brute force,
gallery → queries and leave-one-out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN
from sklearn.neighbors import KNeighborsClassifier

import bench.engine.evaluate
from bench.engine.evaluate import knn_accuracy, map_at_r, precision_at_1, retrieval_metrics


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


def nearest_first(distances: np.ndarray) -> np.ndarray:
    """scikit-learn vote weights [Q, k] for the tie rule: 1 each, plus a bonus 1e-3 · 2^-rank that only
    decides between labels with equal votes, in favour of the label with the nearest neighbour."""
    return 1 + 1e-3 * 0.5 ** np.arange(distances.shape[1])[None, :].repeat(len(distances), axis=0)


def sklearn_knn(k: int, weighted: bool = True) -> KNeighborsClassifier:
    return KNeighborsClassifier(n_neighbors=k, weights=nearest_first if weighted else "uniform")


@pytest.fixture(params=[False, True], ids=["one-chunk", "many-chunks"])
def chunking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.param:
        monkeypatch.setattr(bench.engine.evaluate, "CHUNK_ELEMENTS", 700)  # a few queries per chunk


@pytest.mark.parametrize("seed", range(4))
def test_knn_accuracy_matches_sklearn(seed: int, chunking: None) -> None:
    g, gl, q, ql = random_set(seed, 300, 200, 6, 4)
    sk = sklearn_knn(5).fit(g.numpy(), gl.numpy()).predict(q.numpy())
    expected = float((sk == ql.numpy()).mean())
    assert 0.3 < expected < 0.9  # neighbours disagree often enough for votes to tie
    assert knn_accuracy(g, gl, q, ql) == expected
    plain = sklearn_knn(5, weighted=False).fit(g.numpy(), gl.numpy()).predict(q.numpy())
    assert (plain != sk).any()  # some votes tie, and the tie rule decides them
    for k in (1, 3, 4):
        sk = sklearn_knn(k).fit(g.numpy(), gl.numpy()).predict(q.numpy())
        assert knn_accuracy(g, gl, q, ql, k) == float((sk == ql.numpy()).mean())


@pytest.mark.parametrize("seed", range(2))
def test_leave_one_out_knn_matches_sklearn(seed: int, chunking: None) -> None:
    g, gl, _, _ = random_set(seed, 300, 0, 6, 4)
    sk = sklearn_knn(5).fit(g.numpy(), gl.numpy()).predict(None)  # X=None: no point is its own neighbour
    expected = float((sk == gl.numpy()).mean())
    assert 0.3 < expected < 0.9
    assert retrieval_metrics(g, gl)["knn_accuracy"] == expected


def test_knn_vote_tie_goes_to_the_label_with_the_nearest_neighbour() -> None:
    gallery = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0], [50.0]])
    query = torch.zeros(1, 1)
    for labels, winner in (([9, 9, 4, 4, 7, 1], 9), ([4, 9, 9, 4, 7, 1], 4), ([7, 4, 4, 9, 9, 1], 4)):
        gallery_labels = torch.tensor(labels)  # the 5 nearest of 0: two and two of two labels, one of another
        for label in set(labels):
            expected = float(label == winner)
            assert knn_accuracy(gallery, gallery_labels, query, torch.tensor([label])) == expected, (labels, label)
        assert sklearn_knn(5).fit(gallery.numpy(), gallery_labels.numpy()).predict(query.numpy()).tolist() == [winner]
    plain = sklearn_knn(5, weighted=False).fit(gallery.numpy(), torch.tensor([9, 9, 4, 4, 7, 1]).numpy())
    assert plain.predict(query.numpy()).tolist() == [4]  # scikit-learn's own rule: the smallest label


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


def brute_leave_one_out(points: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """P@1 and MAP@R of each item against the others, one query at a time, from the definition."""
    first, aps = [], []
    for i in range(len(points)):
        others = torch.arange(len(points)) != i
        order = torch.cdist(points[i:i + 1], points[others])[0].argsort()
        hits = (labels[others][order] == labels[i]).double()
        first.append(float(hits[0]))
        r = int(hits.sum())
        if r:
            aps.append(float((hits[:r].cumsum(0) / torch.arange(1, r + 1) * hits[:r]).sum() / r))
    return {"precision_at_1": float(np.mean(first)), "map_at_r": float(np.mean(aps))}


@pytest.mark.parametrize("seed", range(3))
def test_leave_one_out_matches_brute_force_and_pytorch_metric_learning(seed: int, chunking: None) -> None:
    points, labels, _, _ = random_set(seed, 260, 0, 5, 6)
    labels[0] = 99  # a class of one: no relevant item, so left out of MAP@R
    ours = retrieval_metrics(points, labels)
    reference = brute_leave_one_out(points, labels)
    assert ours["precision_at_1"] == reference["precision_at_1"]
    assert ours["map_at_r"] == pytest.approx(reference["map_at_r"], abs=1e-12)
    knn = CustomKNN(LpDistance(normalize_embeddings=False))
    calculator = AccuracyCalculator(include=("mean_average_precision_at_r", "precision_at_1"), knn_func=knn)
    pml = calculator.get_accuracy(points.float(), labels)  # no reference: the query set, each query excluded
    assert ours["map_at_r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    # pml leaves the lone query out of P@1 too; here it counts, as a miss
    assert ours["precision_at_1"] * len(labels) == pytest.approx(pml["precision_at_1"] * (len(labels) - 1), abs=1e-4)


def test_leave_one_out_never_counts_the_query_itself() -> None:
    # each item's nearest other item has the other label; itself (at distance 0) would have its own
    points = torch.tensor([[0.0], [0.1], [10.0], [10.1]])
    labels = torch.tensor([0, 1, 0, 1])
    assert retrieval_metrics(points, labels, k=1) == {"knn_accuracy": 0.0, "precision_at_1": 0.0, "map_at_r": 0.0}
    assert retrieval_metrics(points, labels, points, labels, k=1)["precision_at_1"] == 1.0  # with itself
    # R excludes the query: R = 1 for every item, and the one same-label item is 2nd → AP = 0
    duplicates = retrieval_metrics(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]))  # all at one point
    assert duplicates["knn_accuracy"] in (0.0, 1 / 4, 2 / 4, 3 / 4, 1.0)  # any order of equal distances
    with pytest.raises(ValueError, match="at least 2 items"):
        retrieval_metrics(points[:1], labels[:1])
    with pytest.raises(ValueError, match="together"):
        retrieval_metrics(points, labels, points)


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


def squeezed_set(seed: int) -> tuple[torch.Tensor, ...]:
    """Embeddings as a pinned L2-normalised net leaves them: a ball of diameter 0.002 around a unit vector, in
    float32, with near-ties (50 gallery items 0.1% of the ball's size from others)."""
    gallery, gl, queries, ql = random_set(seed, 400, 120, 16, 5)
    generator = torch.Generator().manual_seed(seed)
    near = gallery[:50] + 0.003 * torch.randn(50, 16, generator=generator, dtype=torch.float64)
    gallery, gl = torch.cat([gallery, near]), torch.cat([gl, gl[:50]])
    scale = 0.002 / float(torch.cdist(gallery, gallery).max())
    centre = torch.nn.functional.normalize(torch.ones(16, dtype=torch.float64), dim=0)
    return (centre + scale * gallery).float(), gl, (centre + scale * queries).float(), ql


def brute_metrics(gallery: torch.Tensor, gl: torch.Tensor, queries: torch.Tensor, ql: torch.Tensor) -> dict:
    """P@1, 5-NN majority (ties to the nearest) and MAP@R from float64 cdist, one query at a time."""
    d = torch.cdist(queries.double(), gallery.double())
    order = d.argsort(dim=1)
    first = float((gl[order[:, 0]] == ql).double().mean())
    votes = []
    for row, label in zip(order[:, :5], ql, strict=True):
        labels = gl[row].tolist()
        best = max(set(labels), key=lambda c: (labels.count(c), -labels.index(c)))
        votes.append(best == int(label))
    return {"knn_accuracy": float(np.mean(votes)), "precision_at_1": first,
            "map_at_r": brute_map_at_r(gallery.double(), gl, queries.double(), ql)}


@pytest.mark.parametrize("seed", range(3))
def test_metrics_do_not_depend_on_scale_or_position(seed: int) -> None:
    """On a squeezed set, the metrics equal a float64 brute force and stay exactly the same for the set scaled
    (by 2^±10 in float32, where scaling is exact; by 1e-3 in float64) and translated (in float64, where the shifted
    coordinates keep the set's geometry to 1e-16; float32 itself would round it)."""
    gallery, gl, queries, ql = squeezed_set(seed)
    reference = brute_metrics(gallery, gl, queries, ql)
    got = retrieval_metrics(gallery, gl, queries, ql)
    assert got == pytest.approx(reference, abs=1e-12)
    for move in (lambda x: x * 2.0**-10, lambda x: x * 2.0**10, lambda x: x.double() * 1e-3, lambda x: x.double() + 5,
                 lambda x: x.double() * 1e-3 - 3):
        assert retrieval_metrics(move(gallery), gl, move(queries), ql) == got
        assert retrieval_metrics(move(gallery), gl) == retrieval_metrics(gallery, gl)


def test_float32_search_on_raw_coordinates_fails_on_the_squeezed_set() -> None:
    """The case the centring exists for: ranked by float32 ‖g‖² − 2 q·g on the raw coordinates, the squeezed set's
    nearest neighbours come out wrong; the search gets them right."""
    gallery, gl, queries, ql = squeezed_set(0)
    naive = ((gallery * gallery).sum(dim=1) - 2 * queries @ gallery.T).argmin(dim=1)
    exact = torch.cdist(queries.double(), gallery.double()).argmin(dim=1)
    assert (naive != exact).float().mean() > 0.1
    assert retrieval_metrics(gallery, gl, queries, ql)["precision_at_1"] == float((gl[exact] == ql).double().mean())
