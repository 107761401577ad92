"""Training diagnostics against plain-loop references and the review's cases: shrunk, two-point, pinned."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bench.engine.diagnostics import (
    CHANCE_POINTS,
    MIN_SPREAD,
    active_anchors,
    checkpoint_diagnostics,
    class_distances,
    effective_rank,
    images_per_class,
    initial_statistics,
    is_collapsed,
    is_pinned,
    spread,
)
from bench.engine.evaluate import retrieval_metrics
from losses import LOSSES, mining_stats


def clustered(n_classes: int = 10, per_class: int = 30, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit embeddings [n_classes·per_class, dim] in tight clusters around random class centres, and their labels."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=generator), dim=1)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    noise = 0.15 * torch.randn(len(labels), dim, generator=generator)
    return torch.nn.functional.normalize(centres[labels] + noise, dim=1), labels


def knn(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """5-NN accuracy of the second half of the points against the first half."""
    half = torch.arange(len(labels)) % 2 == 0
    return retrieval_metrics(embeddings[half], labels[half], embeddings[~half], labels[~half])["knn_accuracy"]


def test_effective_margin_is_the_margin_the_adaptive_losses_use() -> None:
    embeddings, labels = clustered(4, 6, 8)
    embeddings = embeddings.double()
    stats = mining_stats(embeddings, labels, 0.1)
    m_eff = LOSSES["adaptive-mu"].effective_margin(0.1, stats["mu_pos"], stats["mu_neg"])
    assert m_eff == pytest.approx(0.1 + stats["mu_neg"] - stats["mu_pos"]) and m_eff > 0.5
    # adaptive-mu is batch-all at the effective margin: the library's own μ and ours agree
    assert float(LOSSES["adaptive-mu"](embeddings, labels, 0.1)) == pytest.approx(
        float(LOSSES["batch-all"](embeddings, labels, m_eff)), rel=1e-12)
    for loss in ("batch-all", "batch-hard", "semi-hard"):
        assert LOSSES[loss].effective_margin(0.1, stats["mu_pos"], stats["mu_neg"]) == 0.1
    assert LOSSES["quadruplet"].effective_margin(0.3, 0.9, 0.5) == 0.3  # μ < 0 counts as 0
    assert LOSSES["quadruplet"].effective_margin(0.3, math.nan, 0.5) == pytest.approx(0.8)  # no positive pair


def reference_initial(batches: list[tuple[torch.Tensor, torch.Tensor]], loss: str, margin: float) -> dict[str, float]:
    """Plain loops over every valid triplet and anchor of every batch, at each batch's effective margin."""
    easy = semihard = hard = active = anchors = 0
    margins = []
    for embeddings, labels in batches:
        d = torch.cdist(embeddings.double(), embeddings.double()).tolist()
        y = labels.tolist()
        n = len(y)
        positive = [(a, p) for a, p in itertools.permutations(range(n), 2) if y[a] == y[p]]
        negative = [(a, b) for a, b in itertools.product(range(n), repeat=2) if y[a] != y[b]]
        mu = sum(d[a][b] for a, b in negative) / len(negative) - sum(d[a][p] for a, p in positive) / len(positive)
        m = margin + max(mu, 0) if loss in ("adaptive-mu", "quadruplet") else margin
        margins.append(m)
        for a, p in positive:
            for k in range(n):
                if y[k] != y[a]:
                    easy += d[a][k] >= d[a][p] + m
                    hard += d[a][k] < d[a][p]
                    semihard += d[a][p] <= d[a][k] < d[a][p] + m
        for a in range(n):
            pos = [d[a][p] for p in range(n) if p != a and y[p] == y[a]]
            neg = [d[a][k] for k in range(n) if y[k] != y[a]]
            if pos and neg:
                anchors += 1
                active += max(pos) - min(neg) + m > 0
    total = easy + semihard + hard
    return {"initial_fraction_easy": easy / total, "initial_fraction_semihard": semihard / total,
            "initial_fraction_hard": hard / total, "active": active / anchors,
            "effective_margin": sum(margins) / len(margins)}


@pytest.mark.parametrize("loss", ["batch-all", "batch-hard", "quadruplet"])
def test_initial_statistics_against_plain_loops(loss: str) -> None:
    generator = torch.Generator().manual_seed(3)
    batches = [(torch.randn(12, 5, generator=generator, dtype=torch.float64),
                torch.randint(0, 3, (12,), generator=generator)) for _ in range(3)]
    ours, reference = initial_statistics(batches, loss, 0.3), reference_initial(batches, loss, 0.3)
    for key in ("initial_fraction_easy", "initial_fraction_semihard", "initial_fraction_hard", "effective_margin"):
        assert ours[key] == pytest.approx(reference[key], rel=1e-6), key
    assert ours["initial_active_anchors"] == (pytest.approx(reference["active"]) if loss == "batch-hard" else None)
    if loss == "quadruplet":
        assert ours["effective_margin"] > 0.3  # the per-batch μ entered


def test_active_anchors_skips_anchors_without_a_positive() -> None:
    embeddings = torch.tensor([[0.0], [0.1], [1.0], [5.0]])
    assert active_anchors(embeddings, torch.tensor([0, 0, 1, 2]), 0.2) == (0, 2)  # 0.1 - 0.9 + 0.2 < 0
    assert active_anchors(embeddings, torch.tensor([0, 0, 1, 2]), 1.0) == (2, 2)


def test_effective_rank() -> None:
    assert effective_rank(torch.ones(7, 3)) == 0
    two_points = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).repeat(20, 1)
    assert effective_rank(two_points) == pytest.approx(1)
    assert effective_rank(torch.eye(4)[torch.arange(4).repeat(10)] * 3) == pytest.approx(3)  # 4 vertices: a 3-d simplex
    embeddings, _ = clustered()
    assert effective_rank(embeddings) > 5
    assert effective_rank(embeddings * 0.003 + 5) == pytest.approx(effective_rank(embeddings), rel=1e-4)


def diagnose(embeddings: torch.Tensor, labels: torch.Tensor, reference: float) -> dict:
    """checkpoint_diagnostics of a batch-all checkpoint with healthy mining statistics."""
    return checkpoint_diagnostics("batch-all", 0.2, 0.05, {"mu_pos": 0.3, "mu_neg": 1.2}, knn(embeddings, labels), 10,
                                  embeddings, reference)


def test_a_normalised_embedding_squeezed_to_a_point_is_collapsed() -> None:
    """On the unit sphere, a ball of radius 0.003 (what a pinned batch-hard net leaves) is a point with noise: its
    neighbours and effective rank still look healthy, its spread against the start does not."""
    embeddings, labels = clustered()
    sphere = torch.nn.functional.normalize(embeddings, dim=1)
    start = spread(sphere)  # the initial spread: the same classes, spread out
    healthy = diagnose(sphere, labels, start)
    assert not healthy["collapsed"] and healthy["spread"] == pytest.approx(start)
    squeezed = embeddings * 0.003 / embeddings.norm(dim=1).max() + torch.nn.functional.normalize(torch.ones(16), dim=0)
    assert knn(squeezed, labels) == knn(embeddings, labels) > 0.9 and effective_rank(squeezed) > 5
    diagnosis = diagnose(squeezed, labels, start)
    assert diagnosis["collapsed"] and diagnosis["spread"] < 0.01
    noise = torch.nn.functional.normalize(torch.ones(16), dim=0) + 1e-3 * torch.randn(len(labels), 16)
    assert diagnose(noise, labels, start)["collapsed"]  # isotropic noise around one point


def test_the_size_rule_is_relative_to_the_start_at_any_scale() -> None:
    """A healthy embedding is healthy at any scale (against its own initial spread); one that shrank toward 0 from
    its start is collapsed; without a margin check (NaN) only the other rules apply."""
    embeddings, labels = clustered()
    for scale in (1e-6, 1e-3, 1.0, 1e3):
        points = embeddings * scale
        assert not diagnose(points, labels, spread(points))["collapsed"], scale
    assert diagnose(embeddings * 1e-3, labels, spread(embeddings))["collapsed"]
    assert not diagnose(embeddings * 0.5, labels, spread(embeddings))["collapsed"]  # half the size is no collapse
    assert not diagnose(embeddings * 1e-3, labels, math.nan)["collapsed"]


def test_a_two_point_embedding_is_collapsed() -> None:
    embeddings, labels = clustered()
    two_points = torch.where((labels < 5)[:, None], embeddings[0], embeddings[-1])
    accuracy = knn(two_points, labels)
    assert 0.15 < accuracy < 0.3  # 5 classes share each point: above the chance rule, so the rank must catch it
    diagnosis = checkpoint_diagnostics("batch-all", 0.2, 0.2, {"mu_pos": 0.3, "mu_neg": 0.9}, accuracy, 10, two_points,
                                       spread(embeddings))
    assert diagnosis["collapsed"] and diagnosis["effective_rank"] == pytest.approx(1)
    assert not diagnosis["spread"] < MIN_SPREAD * spread(embeddings)  # the rank caught it, not the size


def test_collapse_rules() -> None:
    chance = 0.1 + CHANCE_POINTS
    assert is_collapsed(chance, 10, 8.0, 1.0, 2.0) and not is_collapsed(chance + 0.01, 10, 8.0, 1.0, 2.0)
    assert is_collapsed(0.99, 10, 1.9, 1.0, 2.0) and not is_collapsed(0.99, 10, 2.0, 1.0, 2.0)
    assert is_collapsed(0.5 + CHANCE_POINTS, 2, 8.0, 1.0, 2.0)
    edge = MIN_SPREAD * 2.0
    assert is_collapsed(0.99, 10, 8.0, edge * 0.99, 2.0) and not is_collapsed(0.99, 10, 8.0, edge, 2.0)
    assert not is_collapsed(0.99, 10, 8.0, 1e-9, math.nan)  # no reference size: only the other rules
    assert spread(torch.ones(5, 3)) == 0 and spread(torch.tensor([[0.0], [2.0]])) == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize("loss", ["batch-all", "batch-hard", "semi-hard", "adaptive-mu", "quadruplet",
                                  "batch-hard-soft"])
def test_a_net_shrinking_toward_zero_is_pinned_a_healthy_one_is_not(loss: str) -> None:
    embeddings, labels = clustered(4, 8, 8)
    for scale, pinned in ((1.0, False), (1e-4, True)):
        points = (embeddings * scale).double()
        value = float(LOSSES[loss](points, labels, 0.2))
        stats = mining_stats(points, labels, 0.2)
        m_eff = LOSSES[loss].effective_margin(0.2, stats["mu_pos"], stats["mu_neg"])
        assert is_pinned(loss, value, m_eff, stats["mu_neg"]) == pinned, (loss, scale, value)


def test_pinned_needs_mu_neg_below_the_margin() -> None:
    assert is_pinned("batch-all", 0.2, 0.2, 0.19) and is_pinned("batch-all", 0.2 * 1.049, 0.2, 0.01)
    assert not is_pinned("batch-all", 0.2, 0.2, 0.25) and not is_pinned("batch-all", 0.2 * 1.06, 0.2, 0.01)
    assert is_pinned("quadruplet", 0.3, 0.2, 0.01) and not is_pinned("quadruplet", 0.2, 0.2, 0.01)


def test_images_per_class() -> None:
    assert images_per_class(torch.tensor([[0, 0, 1, 1], [3, 1, 2, 0]])) == 1.5
    assert images_per_class(torch.tensor([[7, 7, 7, 7]])) == 4


def test_a_soft_margin_is_pinned_at_ln_2_whatever_the_distances() -> None:
    """All distances equal give softplus(m_eff): ln 2 at m = 0, where no hinge (μ_neg < m_eff) can say it."""
    assert is_pinned("batch-hard-soft", math.log(2), 0.0, 0.5)
    assert not is_pinned("batch-hard-soft", 0.3, 0.0, 0.5)
    assert not is_pinned("batch-hard", 0.0, 0.0, 0.5)  # a hinge at m = 0 is never pinned


def test_class_distances_equal_the_brute_force_means_at_any_block() -> None:
    embeddings, labels = clustered()
    distances = torch.cdist(embeddings.double(), embeddings.double())
    same = labels[:, None] == labels[None, :]
    distinct = ~torch.eye(len(labels), dtype=torch.bool)
    for block in (1, 7, 1024):
        result = class_distances(embeddings, labels, block=block)
        assert result["intra_class_distance"] == pytest.approx(float(distances[same & distinct].mean()), rel=1e-9)
        assert result["inter_class_distance"] == pytest.approx(float(distances[~same].mean()), rel=1e-9)
    far = class_distances(embeddings.double() * 1e-3 + 7, labels)  # scaled and translated: distances scale alone
    assert far["intra_class_distance"] == pytest.approx(1e-3 * result["intra_class_distance"], rel=1e-9)
    lone = class_distances(embeddings[:2], torch.tensor([0, 1]))  # no same-class pair
    assert math.isnan(lone["intra_class_distance"]) and lone["inter_class_distance"] > 0
