"""The loss library against brute force, its peer, the source's defects and bad input.

The chain of trust: plain Python loops check the dense B³/B⁴ references (losses/dense.py) on tiny
batches; the dense references check the fast losses on hundreds of random batches.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from losses import LOSSES, counting, mining_stats, pairwise_distance, triplet
from losses.dense import DENSE_LOSSES, dense_adaptive_margin, dense_distance

NAMES = list(LOSSES)
MARGINS = [0.0, 0.25, 0.5, 1.0]  # dyadic: the same number in float32 and float64
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def batches(draw: st.DrawFn, max_b: int = 10) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Embeddings on a half-integer grid (exact distances, duplicates, zeros), labels, margin."""
    b = draw(st.integers(1, max_b))
    dim = draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["random", "one-class", "distinct", "singletons+pairs"]))
    if kind == "random":
        labels = draw(st.lists(st.integers(0, 3), min_size=b, max_size=b))
    elif kind == "one-class":
        labels = [7] * b
    elif kind == "distinct":
        labels = list(range(b))
    else:
        labels = [i // 2 if i % 3 else 100 + i for i in range(b)]
    values = draw(st.lists(st.integers(-2, 2), min_size=b * dim, max_size=b * dim))
    embeddings = torch.tensor(values, dtype=torch.float64).reshape(b, dim) / 2
    if draw(st.booleans()):
        embeddings[: b // 2] = 0.0  # all-zero rows, and duplicates among them
    return embeddings, torch.tensor(labels), draw(st.sampled_from(MARGINS))


def value_and_grad(fn, embeddings: torch.Tensor, labels: torch.Tensor, margin: float):
    """The loss value and its gradient with respect to the embeddings."""
    x = embeddings.clone().requires_grad_()
    loss = fn(x, labels, margin)
    loss.backward()
    return loss.detach(), x.grad


def min_hinge_gap(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    """Smallest non-zero |hinge argument| over triplets and quadruplets, in float64."""
    d = dense_distance(embeddings)
    m_eff = float(dense_adaptive_margin(embeddings, labels, margin))
    arguments = [d[:, :, None] - d[:, None, :] + m for m in (margin, m_eff, 0.0)]
    arguments.append((d[:, :, None, None] - d[None, None] + m_eff / 2).flatten())
    gaps = torch.cat([a.flatten().abs() for a in arguments])
    gaps = gaps[gaps > 0]
    return float(gaps.min()) if gaps.numel() else math.inf


# ---------------------------------------------------------------- loops check the dense references


def loop_losses(x: torch.Tensor, y: list[int], m: float) -> dict[str, float]:
    """Every loss by its definition, with Python loops over indices (values only)."""
    b = len(y)
    d = [[math.dist(x[i].tolist(), x[j].tolist()) for j in range(b)] for i in range(b)]
    pos = [(a, p) for a in range(b) for p in range(b) if a != p and y[a] == y[p]]
    neg = [(a, n) for a in range(b) for n in range(b) if y[a] != y[n]]

    def batch_all(margin: float) -> float:
        terms = [d[a][p] - d[a][n] + margin for a, p in pos for a2, n in neg if a2 == a]
        active = [t for t in terms if t > 0]
        return sum(active) / len(active) if active else 0.0

    hard = []
    for a in range(b):
        ps = [d[a][p] for a2, p in pos if a2 == a]
        ns = [d[a][n] for a2, n in neg if a2 == a]
        if ps and ns:
            hard.append(max(0.0, max(ps) - min(ns) + m))
    semi = []
    for a, p in pos:
        candidates = [d[a][n] for a2, n in neg if a2 == a and d[a][p] < d[a][n] < d[a][p] + m]
        if candidates:
            semi.append(d[a][p] - min(candidates) + m)
    mu_pos = sum(d[a][p] for a, p in pos) / len(pos) if pos else 0.0
    mu_neg = sum(d[a][n] for a, n in neg) / len(neg) if neg else 0.0
    m_eff = m + max(mu_neg - mu_pos, 0.0)
    quad = [
        d[i][j] - d[k][n] + m_eff / 2
        for i, j in pos
        for k, n in itertools.product(range(b), repeat=2)
        if y[k] != y[i] and y[n] != y[i] and y[n] != y[k]
    ]
    quad = [t for t in quad if t > 0]
    soft = []
    for a in range(b):
        ps = [d[a][p] for a2, p in pos if a2 == a]
        ns = [d[a][n] for a2, n in neg if a2 == a]
        if ps and ns:
            soft.append(math.log1p(math.exp(max(ps) - min(ns) + m)))
    return {
        "batch-all": batch_all(m),
        "batch-hard": sum(hard) / len(hard) if hard else 0.0,
        "batch-hard-soft": sum(soft) / len(soft) if soft else 0.0,
        "semi-hard": sum(semi) / len(semi) if semi else 0.0,
        "adaptive-mu": batch_all(m_eff),
        "quadruplet": batch_all(m_eff) + (sum(quad) / len(quad) if quad else 0.0),
    }


@settings(max_examples=60, deadline=None)
@given(batches(max_b=7))
def test_dense_references_match_loops(batch) -> None:
    embeddings, labels, margin = batch
    expected = loop_losses(embeddings, labels.tolist(), margin)
    for name in NAMES:
        got = float(DENSE_LOSSES[name](embeddings, labels, margin))
        assert got == pytest.approx(expected[name], rel=1e-9, abs=1e-12), name


def loop_loss_graphs(x: torch.Tensor, y: list[int], m: float) -> dict[str, torch.Tensor]:
    """Every loss by its definition, with Python loops over indices, as autograd scalars of x.

    Independent of losses/: distances from explicit differences, pairs and triplets from the labels by
    loops, hardest / closest members chosen by value; adaptive margins carry no gradient, as defined.
    """
    b = len(y)
    zero = x.sum() * 0  # attached, so that an empty mean still has a (zero) gradient
    d = [[((x[i] - x[j]) ** 2).sum().sqrt() if i != j else zero for j in range(b)] for i in range(b)]
    positives = {a: [p for p in range(b) if p != a and y[p] == y[a]] for a in range(b)}
    negatives = {a: [n for n in range(b) if y[n] != y[a]] for a in range(b)}

    def mean(terms: list[torch.Tensor]) -> torch.Tensor:
        return sum(terms, zero) / len(terms) if terms else zero

    def value(t: torch.Tensor) -> float:
        return t.detach().item()

    def batch_all(margin: float) -> torch.Tensor:
        terms = [d[a][p] - d[a][n] + margin for a in range(b) for p in positives[a] for n in negatives[a]]
        return mean([t for t in terms if t > 0])

    hard, soft = [], []
    for a in range(b):
        if positives[a] and negatives[a]:
            term = max((d[a][p] for p in positives[a]), key=value) - min((d[a][n] for n in negatives[a]), key=value)
            hard.append(term + m if term + m > 0 else zero)
            soft.append(torch.nn.functional.softplus(term + m))
    semi = []
    for a in range(b):
        for p in positives[a]:
            inside = [d[a][n] for n in negatives[a] if d[a][p] < d[a][n] < d[a][p] + m]
            if inside:
                semi.append(d[a][p] - min(inside, key=value) + m)
    pos_values = [value(d[a][p]) for a in range(b) for p in positives[a]]
    neg_values = [value(d[a][n]) for a in range(b) for n in negatives[a]]
    mu = (sum(neg_values) / len(neg_values) if neg_values else 0.0) - (
        sum(pos_values) / len(pos_values) if pos_values else 0.0)
    m_eff = m + max(mu, 0.0)
    quad = [d[i][j] - d[k][n] + m_eff / 2
            for i in range(b) for j in positives[i] for k in negatives[i] for n in negatives[i] if y[n] != y[k]]
    return {
        "batch-all": batch_all(m),
        "batch-hard": mean(hard),
        "batch-hard-soft": mean(soft),
        "semi-hard": mean(semi),
        "adaptive-mu": batch_all(m_eff),
        "quadruplet": batch_all(m_eff) + mean([t for t in quad if t > 0]),
    }


@pytest.mark.parametrize("margin", [0.1, 0.3, 0.6])
@pytest.mark.parametrize("seed", range(12))
def test_every_gradient_equals_autograd_through_the_plain_loops(seed: int, margin: float) -> None:
    """Values and gradients of the fast losses against the loop definitions, float64, continuous batches ≤ 8."""
    gen = torch.Generator().manual_seed(seed)
    b = 4 + seed % 5
    embeddings = torch.randn(b, 3, generator=gen, dtype=torch.float64)
    if seed % 2:
        embeddings = torch.nn.functional.normalize(embeddings, dim=1)
    labels = torch.randint(0, 2 + seed % 3, (b,), generator=gen)
    x = embeddings.clone().requires_grad_()
    references = loop_loss_graphs(x, labels.tolist(), margin)
    for name in NAMES:
        (expected,) = torch.autograd.grad(references[name], x, allow_unused=True, retain_graph=True)
        value, grad = value_and_grad(LOSSES[name], embeddings, labels, margin)
        torch.testing.assert_close(value, references[name].detach(), rtol=1e-10, atol=1e-12, msg=name)
        torch.testing.assert_close(grad, torch.zeros_like(x) if expected is None else expected,
                                   rtol=1e-10, atol=1e-12, msg=name)


def test_the_gradient_check_has_teeth() -> None:
    """A case where every loss has an active term, so that the comparison above compares non-zero gradients."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64).requires_grad_()
    references = loop_loss_graphs(x, [0, 0, 0, 1, 1, 1, 2, 2], 0.6)
    for name, loss in references.items():
        (grad,) = torch.autograd.grad(loss, x, retain_graph=True)
        assert grad.abs().max() > 1e-3, name


# ---------------------------------------------------------------- the fast losses are exact


@SETTINGS
@given(batches())
def test_fast_losses_match_dense_in_float64(batch) -> None:
    embeddings, labels, margin = batch
    for name in NAMES:
        value, grad = value_and_grad(LOSSES[name], embeddings, labels, margin)
        ref_value, ref_grad = value_and_grad(DENSE_LOSSES[name], embeddings, labels, margin)
        torch.testing.assert_close(value, ref_value, rtol=1e-9, atol=1e-12, msg=name)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12, msg=name)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_the_other_paths_are_exact_too(batch) -> None:
    """Batch-hard's selection a row at a time, and quadruplet's in-class ranks by search instead of table lookup."""
    embeddings, labels, margin = batch
    blocked = {"batch-hard": ("HARDEST_BLOCK", 1), "batch-hard-soft": ("HARDEST_BLOCK", 1),
               "quadruplet": ("TABLE_LIMIT", 0)}
    for name, (constant, value) in blocked.items():
        module = triplet if constant == "HARDEST_BLOCK" else counting
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(module, constant, value)
            got = value_and_grad(LOSSES[name], embeddings, labels, margin)
        expected = value_and_grad(DENSE_LOSSES[name], embeddings, labels, margin)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("block", [1, 1 << 20])
def test_batch_hard_at_a_hinge_of_exactly_zero_on_tied_distances_matches_dense(block: int,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Hypothesis's find: anchor 8's hardest negatives are 7 tied zero vectors, and its gap is exactly 0. A mean of
    the 7 equal distances rounded above them, so the gap came out as +1e-16 and the hinge's gradient flowed where
    the dense reference's [0]₊ has none."""
    monkeypatch.setattr(triplet, "HARDEST_BLOCK", block)
    embeddings = torch.zeros(9, 3, dtype=torch.float64)
    embeddings[8] = 0.5
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1])
    for name in ("batch-hard", "batch-hard-soft"):
        got = value_and_grad(LOSSES[name], embeddings, labels, 0.0)
        expected = value_and_grad(DENSE_LOSSES[name], embeddings, labels, 0.0)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("table_limit", [0, 1 << 26])
@pytest.mark.parametrize("seed", range(20))
def test_in_group_counts_match_brute_force(seed: int, table_limit: int) -> None:
    """count_at_most_in_group and count_below_thresholds_in_group against direct comparison, with ties."""
    gen = torch.Generator().manual_seed(seed)
    thresholds = torch.randint(0, 8, (int(torch.randint(0, 12, (1,), generator=gen)),), generator=gen).sort().values
    threshold_groups = torch.randint(0, 4, thresholds.shape, generator=gen)
    values = torch.randint(0, 9, (15,), generator=gen).double()
    groups = torch.randint(0, 4, (15, 2), generator=gen)
    ranks = counting.count_at_most(thresholds.double(), values)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(counting, "TABLE_LIMIT", table_limit)
        in_group, by_group, per_group = counting.count_at_most_in_group(ranks, groups, threshold_groups)
    same = groups[:, :, None] == threshold_groups  # [V, K, P]
    assert torch.equal(in_group, (same & (thresholds <= values[:, None, None])).sum(-1))
    below = counting.count_below_thresholds_in_group(in_group.flatten(), groups.flatten(), by_group, per_group)
    flat_same = groups.flatten()[:, None] == threshold_groups  # [V·K, P]
    expected = (flat_same & (values.repeat_interleave(2)[:, None] < thresholds)).sum(0)
    assert torch.equal(below, expected)
    assert torch.equal(counting.count_below_thresholds(ranks, thresholds.numel()),
                       (values[:, None] < thresholds).sum(0))


@SETTINGS
@given(batches())
def test_float32_within_1e4_of_float64_reference(batch) -> None:
    embeddings, labels, margin = batch
    assume(min_hinge_gap(embeddings, labels, margin) > 1e-5)  # no hinge decided by rounding
    for name in NAMES:
        value, grad = value_and_grad(LOSSES[name], embeddings.float(), labels, margin)
        ref_value, ref_grad = value_and_grad(DENSE_LOSSES[name], embeddings, labels, margin)
        assert value.dtype == torch.float32
        assert abs(value.double() - ref_value) <= 1e-4 * abs(ref_value) + 1e-7, name
        grad_error = (grad.double() - ref_grad).abs().max()
        assert grad_error <= 1e-4 * ref_grad.abs().max() + 1e-7, name


@pytest.mark.parametrize("seed", range(8))
def test_fast_losses_match_dense_on_continuous_float32(seed: int) -> None:
    """Continuous embeddings as a network makes them: normalised, 16-d, 24 samples, 5 classes."""
    gen = torch.Generator().manual_seed(seed)
    embeddings = torch.nn.functional.normalize(torch.randn(24, 16, generator=gen), dim=1)
    labels = torch.randint(0, 5, (24,), generator=gen)
    for name in NAMES:
        value, grad = value_and_grad(LOSSES[name], embeddings, labels, 0.2)
        ref_value, ref_grad = value_and_grad(DENSE_LOSSES[name], embeddings.double(), labels, 0.2)
        assert abs(value.double() - ref_value) <= 1e-4 * abs(ref_value), name
        assert (grad.double() - ref_grad).abs().max() <= 1e-4 * ref_grad.abs().max(), name


def test_distance_is_exact_on_the_diagonal_symmetric_and_finite_at_coincident_points() -> None:
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0], [0.0, 0.0]], requires_grad=True)
    d = pairwise_distance(x)
    assert torch.equal(d.diagonal(), torch.zeros(4))
    assert torch.equal(d, d.T)
    assert d[0, 1].item() == 0 and d[0, 2].item() == pytest.approx(5.0)
    d.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_a_nan_embeddings_distances_stay_nan_and_so_do_the_losses_summing_over_all_pairs() -> None:
    """A NaN embedding (check_finite=False, as the trial calls) must not read as distance 0."""
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [math.nan, 0.0], [4.0, 6.0]])
    d = pairwise_distance(x)
    assert d[2].isnan().all() and d[:, 2].isnan().all() and d[0, 1] == 0 and d[0, 3] == pytest.approx(5.0)
    for name in ("batch-all", "adaptive-mu", "quadruplet"):
        assert LOSSES[name](x, torch.tensor([0, 0, 1, 2]), 0.2, check_finite=False).isnan(), name


@pytest.mark.parametrize("name", NAMES)
def test_all_zero_embeddings_give_finite_loss_and_gradient(name: str) -> None:
    x = torch.zeros(8, 4, requires_grad=True)
    loss = LOSSES[name](x, torch.arange(8) % 3, 0.2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- peer and direction


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(4))
def test_batch_all_equals_pytorch_metric_learning(seed: int, dtype: torch.dtype) -> None:
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import TripletMarginLoss

    gen = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(48, 8, generator=gen, dtype=dtype)
    labels = torch.randint(0, 6, (48,), generator=gen)
    peer = TripletMarginLoss(margin=0.5, distance=LpDistance(normalize_embeddings=False))
    ours = LOSSES["batch-all"](embeddings, labels, 0.5)
    torch.testing.assert_close(ours, peer(embeddings, labels), rtol=1e-5, atol=1e-6)


def mean_distance_gap(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative-pair distance minus mean positive-pair distance (μ of mining_stats, itself checked above)."""
    stats = mining_stats(x.detach(), labels, 0.2)
    return stats["mu_neg"] - stats["mu_pos"]


def descend(loss_fn, x: torch.Tensor, labels: torch.Tensor, steps: int = 60) -> torch.Tensor:
    """Plain gradient descent on free embeddings minimising loss_fn(x, labels, 0.2)."""
    x = x.clone().requires_grad_()
    for _ in range(steps):
        loss = loss_fn(x, labels, 0.2)
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
        if grad is None:
            break
        with torch.no_grad():
            x -= 0.1 * grad
    return x.detach()


def source_adaptive_mu(x: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """The blog post's adaptive loss, reproduced to pin its defect: relu(d_an − d_ap) for d_an − d_ap < max(μ, 0)."""
    d = dense_distance(x)
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool)
    mu = (d[~same].mean() - d[pos].mean()).detach()
    terms = (d[:, None, :] - d[:, :, None])[pos[:, :, None] & ~same[:, None, :]]
    selected = terms[terms < max(float(mu), 0.0)]
    return torch.relu(selected).mean() if selected.numel() else (d * 0).sum()


def clustered_start(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """40 points in 8 dims, 5 classes, weakly clustered so that μ > 0 at the start."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(40) % 5
    centres = torch.randn(5, 8, generator=gen)
    return 0.3 * centres[labels] + torch.randn(40, 8, generator=gen), labels


@pytest.mark.parametrize("name", NAMES)
def test_gradient_descent_widens_the_gap_between_classes(name: str) -> None:
    x, labels = clustered_start()
    before = mean_distance_gap(x, labels)
    after = mean_distance_gap(descend(LOSSES[name], x, labels), labels)
    assert after > before + 0.05, (name, before, after)


def test_adaptive_mu_widens_the_gap_where_the_source_formula_narrows_it() -> None:
    """Same start, same descent: the project's adaptive-mu separates the classes, the source's formula merges them."""
    x, labels = clustered_start()
    before = mean_distance_gap(x, labels)
    assert before > 0  # μ > 0: the source's loss is active
    ours = mean_distance_gap(descend(LOSSES["adaptive-mu"], x, labels), labels)
    source = mean_distance_gap(descend(source_adaptive_mu, x, labels), labels)
    assert source < before < ours - 0.05, (source, before, ours)


def test_source_adaptive_formula_has_zero_gradient_when_mu_is_not_positive() -> None:
    # class 0 at 0 and 10, class 1 at 5 and 5.1: μ_pos = 5.05 > μ_neg = 5.0
    x = torch.tensor([[0.0], [10.0], [5.0], [5.1]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    source_adaptive_mu(x, labels, 0.2).backward()
    assert torch.count_nonzero(x.grad) == 0
    x.grad = None
    LOSSES["adaptive-mu"](x, labels, 0.2).backward()
    assert torch.count_nonzero(x.grad) > 0


# ---------------------------------------------------------------- the tutorial's defects


NOTHING_TO_LEARN = {
    "separated": [0, 0, 1, 1],  # no active triplet (adaptive margins grow with the gap, and a soft margin
    # is never exactly 0: not them)
    "one-class": [0, 0, 0, 0],
    "distinct": [0, 1, 2, 3],
    "single": [0],
}


@pytest.mark.parametrize(
    "name,case",
    [
        (name, case)
        for name in NAMES
        for case in NOTHING_TO_LEARN
        if not (case == "separated" and name in ("adaptive-mu", "quadruplet", "batch-hard-soft"))
    ],
)
def test_nothing_to_learn_gives_zero_not_nan(name: str, case: str) -> None:
    """Far-apart classes, no negatives, no positives, B = 1: exactly 0, attached to the graph."""
    labels = NOTHING_TO_LEARN[case]
    x = (100.0 * torch.tensor([[float(y), 0.0] for y in labels])).requires_grad_()
    loss = LOSSES[name](x, torch.tensor(labels), 0.2)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    # the tutorial's batch-all, loss[loss > 0].mean(), is NaN here
    assert torch.isnan(torch.empty(0).mean())


def test_batch_hard_ignores_anchors_without_a_positive() -> None:
    # anchor 2 is a singleton class, close to anchor 0: the tutorial counted it with d_ap = 0
    x = torch.tensor([[0.0], [1.0], [0.1], [5.0], [5.5]])
    labels = torch.tensor([0, 0, 1, 2, 2])
    d = torch.cdist(x, x)
    valid = {0: (d[0, 1], d[0, 2]), 1: (d[1, 0], d[1, 2]), 3: (d[3, 4], d[3, 2]), 4: (d[4, 3], d[4, 2])}
    expected = sum(max(0.0, float(p - n) + 0.5) for p, n in valid.values()) / 4
    assert LOSSES["batch-hard"](x, labels, 0.5).item() == pytest.approx(expected)
    tutorial = (expected * 4 + max(0.0, 0.0 - float(d[2, 0]) + 0.5)) / 5
    assert tutorial != pytest.approx(expected)


def test_quadruplet_excludes_l_in_the_anchor_class() -> None:
    """With two classes no quadruplet satisfies y_l ≠ y_i and y_l ≠ y_k; the blog's mask still finds some."""
    labels = torch.tensor([0, 0, 1, 1])
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.5, 0.0], [0.0, 0.5]])
    b = len(labels)
    same = labels[:, None] == labels[None, :]
    ne = ~torch.eye(b, dtype=torch.bool)
    blog_mask = (
        (same & ne)[:, :, None, None]
        & (~same & ne)[None, :, :, None]
        & (~same & ne)[None, None, :, :]
        & ne[:, :, None, None] & ne[None, :, :, None] & ne[None, None, :, :]
    )
    assert blog_mask.sum() > 0
    quad = LOSSES["quadruplet"](x, labels, 0.2)
    assert quad.item() == pytest.approx(LOSSES["adaptive-mu"](x, labels, 0.2).item())


# ---------------------------------------------------------------- mining statistics


@SETTINGS
@given(batches())
def test_mining_stats_match_brute_force(batch) -> None:
    embeddings, labels, margin = batch
    stats = mining_stats(embeddings, labels, margin)
    d = dense_distance(embeddings)
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool)
    valid = pos[:, :, None] & ~same[:, None, :]
    d_ap, d_an = d[:, :, None].expand_as(valid)[valid], d[:, None, :].expand_as(valid)[valid]
    assert stats["valid_triplets"] == int(valid.sum())
    if valid.any():
        n = valid.sum().item()
        assert stats["fraction_easy"] == pytest.approx(((d_an >= d_ap + margin).sum() / n).item())
        semi = (d_ap <= d_an) & (d_an < d_ap + margin)
        assert stats["fraction_semihard"] == pytest.approx((semi.sum() / n).item())
        assert stats["fraction_hard"] == pytest.approx(((d_an < d_ap).sum() / n).item())
        total = stats["fraction_easy"] + stats["fraction_semihard"] + stats["fraction_hard"]
        assert total == pytest.approx(1.0)
        assert stats["mu_pos"] == pytest.approx(d[pos].mean().item())
        assert stats["mu_neg"] == pytest.approx(d[~same].mean().item())
    else:
        assert math.isnan(stats["fraction_easy"])


# ---------------------------------------------------------------- bad input


BAD_INPUTS = [
    (torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), 0.2, "differ in length"),
    (torch.zeros(4), torch.zeros(4, dtype=torch.long), 0.2, "2-D"),
    (torch.zeros(4, 2, 1), torch.zeros(4, dtype=torch.long), 0.2, "2-D"),
    (torch.zeros(4, 2), torch.zeros(4, 1, dtype=torch.long), 0.2, "1-D"),
    (torch.zeros(4, 2), torch.zeros(4), 0.2, "integer"),
    (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), -0.1, "margin"),
    (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), float("nan"), "margin"),
    (torch.tensor([[0.0, float("nan")]] * 4), torch.zeros(4, dtype=torch.long), 0.2, "NaN or Inf"),
    (torch.tensor([[0.0, float("inf")]] * 4), torch.zeros(4, dtype=torch.long), 0.2, "NaN or Inf"),
]


@pytest.mark.parametrize("name", [*NAMES, "mining_stats"])
@pytest.mark.parametrize("embeddings,labels,margin,message", BAD_INPUTS)
def test_bad_input_raises_value_error_naming_the_problem(name, embeddings, labels, margin, message) -> None:
    fn = mining_stats if name == "mining_stats" else LOSSES[name]
    with pytest.raises(ValueError, match=message):
        fn(embeddings, labels, margin)


# ---------------------------------------------------------------- memory stays sub-cubic


def test_no_loss_allocates_cubic_memory() -> None:
    """At B = 1024 a B³ boolean mask alone is 1 GiB; every loss's forward+backward stays far below."""
    script = textwrap.dedent(
        """
        import resource, torch
        from losses import LOSSES
        x = torch.nn.functional.normalize(torch.randn(1024, 64), dim=1).requires_grad_()
        y = torch.arange(1024) % 10
        LOSSES["batch-hard"](x, y, 0.2).backward()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for loss in LOSSES.values():
            loss(x, y, 0.2).backward()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip()) < 400, out.stdout
