"""The pytorch-metric-learning drop-ins (losses/pml.py): equal to PML where PML has the loss, to LOSSES elsewhere;
each option they cannot honour refused in one line; and B = 4096, where PML's all-triplets loss cannot run.

PML's all-triplets loss is only ever run at B ≤ 96 here: its indices alone grow as B³ (see the last test).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity, LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import BatchHardMiner
from pytorch_metric_learning.reducers import AvgNonZeroReducer, MeanReducer
from pytorch_metric_learning.regularizers import LpRegularizer

from losses import LOSSES
from losses.pml import (
    FROM_DISTANCES,
    AdaptiveMuTripletLoss,
    BatchAllTripletLoss,
    BatchHardSoftTripletLoss,
    BatchHardTripletLoss,
    QuadrupletLoss,
    SemiHardTripletLoss,
    TripletBenchLoss,
)

DROP_INS: dict[str, type[TripletBenchLoss]] = {
    "batch-all": BatchAllTripletLoss,
    "batch-hard": BatchHardTripletLoss,
    "batch-hard-soft": BatchHardSoftTripletLoss,
    "semi-hard": SemiHardTripletLoss,
    "adaptive-mu": AdaptiveMuTripletLoss,
    "quadruplet": QuadrupletLoss,
}
# (seed, B, classes, margin, normalize): B ≤ 96, margins around the normalised distances' range [0, 2]
CASES = [(seed, 8 + 11 * seed, 2 + seed % 6, margin, normalize)
         for seed, margin in enumerate([0.05, 0.2, 0.5, 1.0, 0.1, 0.3, 0.7, 1.5, 0.2])
         for normalize in (True, False)]
EXACT = {"rtol": 1e-10, "atol": 1e-12}  # float64: the two sides differ by rounding of the distances only


def batch(seed: int, b: int, classes: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded Gaussian embeddings [b, 8] and labels [b] in 0..classes-1."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, 8, generator=gen, dtype=dtype), torch.randint(0, classes, (b,), generator=gen)


def value_and_grads(fn, *tensors: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """fn(*leaves) and its gradients with respect to each leaf, the leaves being copies of tensors."""
    leaves = [t.clone().requires_grad_() for t in tensors]
    loss = fn(*leaves)
    return loss.detach(), torch.autograd.grad(loss, leaves)


def assert_same(ours, theirs, **tolerance) -> None:
    """Equal values and equal gradients (value_and_grads pairs)."""
    torch.testing.assert_close(ours[0], theirs[0], **tolerance)
    for mine, peer in zip(ours[1], theirs[1], strict=True):
        torch.testing.assert_close(mine, peer, **tolerance)


def distance(normalize: bool) -> LpDistance:
    return LpDistance(normalize_embeddings=normalize)


# ---------------------------------------------------------------- equal to PML


@pytest.mark.parametrize("seed,b,classes,margin,normalize", CASES)
def test_batch_all_equals_pml_all_triplets_with_avg_non_zero(seed, b, classes, margin, normalize) -> None:
    """The mean over the non-zero terms of all valid triplets: PML's TripletMarginLoss and its default reducer."""
    x, y = batch(seed, b, classes)
    peer = TripletMarginLoss(margin=margin, distance=distance(normalize), reducer=AvgNonZeroReducer())
    ours = BatchAllTripletLoss(margin, distance=distance(normalize))
    assert_same(value_and_grads(lambda e: ours(e, y), x), value_and_grads(lambda e: peer(e, y), x), **EXACT)


@pytest.mark.parametrize("seed", range(4))
def test_batch_all_equals_pml_in_float32(seed: int) -> None:
    x, y = batch(seed, 64, 5, torch.float32)
    ours, peer = BatchAllTripletLoss(0.2), TripletMarginLoss(margin=0.2)
    assert_same(value_and_grads(lambda e: ours(e, y), x), value_and_grads(lambda e: peer(e, y), x),
                rtol=1e-5, atol=1e-6)


def test_the_default_distance_is_pmls_and_normalises() -> None:
    """Unset, the distance is PML's default LpDistance (normalised); scaling the embeddings changes nothing."""
    x, y = batch(0, 32, 4)
    loss_fn = BatchAllTripletLoss(0.2)
    assert type(loss_fn.distance) is LpDistance and loss_fn.distance.normalize_embeddings
    torch.testing.assert_close(loss_fn(x, y), loss_fn(7 * x, y), **EXACT)
    torch.testing.assert_close(loss_fn(x, y), TripletMarginLoss(margin=0.2)(x, y), **EXACT)


def references(seed: int, b: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A reference set of a different size: embeddings [b + 5, 8], labels in the same classes."""
    return batch(1000 + seed, b + 5, classes)


@pytest.mark.parametrize("seed,b,classes,margin,normalize", CASES[::3])
def test_batch_all_with_a_reference_set_equals_pml(seed, b, classes, margin, normalize) -> None:
    """Anchors from embeddings, positives and negatives from ref_emb: values and both gradients."""
    x, y = batch(seed, b, classes)
    r, ry = references(seed, b, classes)
    peer = TripletMarginLoss(margin=margin, distance=distance(normalize))
    ours = BatchAllTripletLoss(margin, distance=distance(normalize))
    assert_same(value_and_grads(lambda e, f: ours(e, y, ref_emb=f, ref_labels=ry), x, r),
                value_and_grads(lambda e, f: peer(e, y, ref_emb=f, ref_labels=ry), x, r), **EXACT)


@pytest.mark.parametrize("seed", range(3))
def test_a_second_view_with_the_same_labels_tensor_is_no_positive_of_itself(seed: int) -> None:
    """ref_labels=labels (the same tensor): PML leaves out the pairs (i, i), and so does the drop-in."""
    x, y = batch(seed, 40, 4)
    view = x + 0.1 * batch(seed + 50, 40, 4)[0]
    peer, ours = TripletMarginLoss(margin=1.0), BatchAllTripletLoss(1.0)
    assert_same(value_and_grads(lambda e, f: ours(e, y, ref_emb=f, ref_labels=y), x, view),
                value_and_grads(lambda e, f: peer(e, y, ref_emb=f, ref_labels=y), x, view), **EXACT)
    other = ours(x, y, ref_emb=view, ref_labels=y.clone())  # a copy: (i, i) are positives, as in PML
    torch.testing.assert_close(other, peer(x, y, ref_emb=view, ref_labels=y.clone()), **EXACT)
    assert not torch.isclose(other, ours(x, y, ref_emb=view, ref_labels=y))


def with_singletons(y: torch.Tensor) -> torch.Tensor:
    """Labels with three singleton classes: anchors without a positive, which batch-hard must skip."""
    y = y.clone()
    y[:3] = torch.tensor([100, 101, 102])
    return y


def pml_batch_hard(margin: float, normalize: bool, reducer=None):
    """PML's batch-hard: BatchHardMiner's one hardest positive and negative per anchor, then TripletMarginLoss."""
    miner = BatchHardMiner(distance=distance(normalize))
    loss = TripletMarginLoss(margin=margin, distance=distance(normalize), reducer=reducer)
    return lambda e, y, r=None, ry=None: loss(e, y, miner(e, y, r, ry), r, ry)


@pytest.mark.parametrize("seed,b,classes,margin,normalize", CASES)
def test_batch_hard_equals_pml_batch_hard_miner_with_mean_reducer(seed, b, classes, margin, normalize) -> None:
    """Mean over the anchors that have a positive and a negative, zero terms included: PML's MeanReducer."""
    x, y = batch(seed, b, classes)
    y = with_singletons(y)
    ours, peer = BatchHardTripletLoss(margin, distance=distance(normalize)), pml_batch_hard(margin, normalize,
                                                                                          MeanReducer())
    assert_same(value_and_grads(lambda e: ours(e, y), x), value_and_grads(lambda e: peer(e, y), x), **EXACT)
    r, ry = references(seed, b, classes)
    assert_same(value_and_grads(lambda e, f: ours(e, y, ref_emb=f, ref_labels=ry), x, r),
                value_and_grads(lambda e, f: peer(e, y, f, ry), x, r), **EXACT)


@pytest.mark.parametrize("seed,b,classes,margin,normalize", CASES[::2])
def test_soft_margin_batch_hard_equals_pml_batch_hard_miner_with_a_smooth_loss(seed, b, classes, margin,
                                                                             normalize) -> None:
    """TripletMarginLoss(smooth_loss=True) is softplus(d_ap − d_an + m): on BatchHardMiner's triplets, with the mean
    over them (every softplus term is > 0, so PML's default AvgNonZeroReducer is that mean), it is ours."""
    x, y = batch(seed, b, classes)
    y = with_singletons(y)
    miner = BatchHardMiner(distance=distance(normalize))
    smooth = TripletMarginLoss(margin=margin, distance=distance(normalize), smooth_loss=True)
    ours = BatchHardSoftTripletLoss(margin, distance=distance(normalize))
    assert_same(value_and_grads(lambda e: ours(e, y), x), value_and_grads(lambda e: smooth(e, y, miner(e, y)), x),
                **EXACT)
    r, ry = references(seed, b, classes)
    assert_same(value_and_grads(lambda e, f: ours(e, y, ref_emb=f, ref_labels=ry), x, r),
                value_and_grads(lambda e, f: smooth(e, y, miner(e, y, f, ry), f, ry), x, r), **EXACT)
    assert BatchHardSoftTripletLoss().margin == 0.0


def test_batch_hard_differs_from_pmls_default_reducer_only_by_its_zero_terms() -> None:
    """PML's default AvgNonZeroReducer leaves out the zero hardest terms: equal once every term is positive."""
    noise, y = batch(3, 48, 4)
    y = with_singletons(y)
    x = 3 * torch.randn(103, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)[y] + noise
    assert BatchHardTripletLoss(0.05)(x, y) < pml_batch_hard(0.05, True)(x, y)  # clustered: some terms are 0
    # normalised distances are ≤ 2, so at m = 2 every hardest term max d_ap − min d_an + 2 is > 0
    torch.testing.assert_close(BatchHardTripletLoss(2.0)(x, y), pml_batch_hard(2.0, True)(x, y), **EXACT)


# ---------------------------------------------------------------- equal to LOSSES


@pytest.mark.parametrize("name", list(DROP_INS))
@pytest.mark.parametrize("seed,b,classes,margin,normalize", CASES[::3])
def test_every_drop_in_equals_its_loss_on_the_distance_s_embeddings(name, seed, b, classes, margin, normalize) -> None:
    """The drop-in is LOSSES[name] on the L2-normalised embeddings (normalize_embeddings=True) or on them as given."""
    x, y = batch(seed, b, classes)
    ours = DROP_INS[name](margin, distance=distance(normalize))
    prepare = (lambda e: torch.nn.functional.normalize(e, dim=1)) if normalize else (lambda e: e)
    assert_same(value_and_grads(lambda e: ours(e, y), x),
                value_and_grads(lambda e: LOSSES[name](prepare(e), y, margin), x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(FROM_DISTANCES))
@pytest.mark.parametrize("seed", range(4))
def test_the_batch_as_its_own_reference_set_gives_the_loss(name: str, seed: int) -> None:
    """ref_emb a copy of the embeddings with ref_labels=labels: the loss of the batch; the gradients add up to its."""
    x, y = batch(seed, 30, 3)
    loss_fn = DROP_INS[name](0.3)
    value, (grad_x, grad_ref) = value_and_grads(lambda e, f: loss_fn(e, y, ref_emb=f, ref_labels=y), x, x)
    expected, (grad,) = value_and_grads(lambda e: loss_fn(e, y), x)
    torch.testing.assert_close(value, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad_x + grad_ref, grad, rtol=1e-9, atol=1e-12)


def loop_against(name: str, d: list[list[float]], y: list[int], ry: list[int], m: float) -> float:
    """Semi-hard or adaptive-mu of anchors against a reference set, by their definitions, with Python loops."""
    pos = [(a, p) for a in range(len(y)) for p in range(len(ry)) if y[a] == ry[p]]
    neg = [(a, n) for a in range(len(y)) for n in range(len(ry)) if y[a] != ry[n]]
    if name == "semi-hard":
        terms = []
        for a, p in pos:
            inside = [d[a][n] for a2, n in neg if a2 == a and d[a][p] < d[a][n] < d[a][p] + m]
            if inside:
                terms.append(d[a][p] - min(inside) + m)
        return sum(terms) / len(terms) if terms else 0.0
    mu = sum(d[a][n] for a, n in neg) / len(neg) - sum(d[a][p] for a, p in pos) / len(pos)
    m_eff = m + max(mu, 0.0)
    terms = [d[a][p] - d[a][n] + m_eff for a, p in pos for a2, n in neg if a2 == a]
    active = [t for t in terms if t > 0]
    return sum(active) / len(active) if active else 0.0


@pytest.mark.parametrize("name", ["semi-hard", "adaptive-mu"])
@pytest.mark.parametrize("seed", range(4))
def test_semi_hard_and_adaptive_mu_against_a_reference_set_match_loops(name: str, seed: int) -> None:
    x, y = batch(seed, 12, 3)
    r, ry = references(seed, 12, 3)
    d = torch.cdist(torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(r, dim=1)).tolist()
    got = DROP_INS[name](0.4)(x, y, ref_emb=r, ref_labels=ry).item()
    assert got == pytest.approx(loop_against(name, d, y.tolist(), ry.tolist(), 0.4), rel=1e-9, abs=1e-12)
    assert got > 0


# ---------------------------------------------------------------- what cannot be honoured is refused


X, Y = batch(0, 16, 3)
REFUSED = {
    "reducer": lambda: BatchAllTripletLoss(reducer=AvgNonZeroReducer()),
    "embedding_regularizer": lambda: BatchHardTripletLoss(embedding_regularizer=LpRegularizer()),
    "distance (cosine, inverted)": lambda: BatchAllTripletLoss(distance=CosineSimilarity()),
    "distance (dot product)": lambda: SemiHardTripletLoss(distance=DotProductSimilarity()),
    "distance (squared)": lambda: BatchAllTripletLoss(distance=LpDistance(power=2)),
    "distance (L1)": lambda: QuadrupletLoss(distance=LpDistance(p=1)),
    "indices_tuple": lambda: BatchAllTripletLoss()(X, Y, BatchHardMiner()(X, Y)),
    "labels": lambda: BatchAllTripletLoss()(X),
    "ref_emb and ref_labels (no labels)": lambda: BatchAllTripletLoss()(X, Y, ref_emb=X),
    "ref_emb and ref_labels (no ref_emb)": lambda: BatchAllTripletLoss()(X, Y, ref_labels=Y),
    "ref_emb (quadruplet)": lambda: QuadrupletLoss()(X, Y, ref_emb=X.flip(0), ref_labels=Y.flip(0)),
    "ref_emb (dimension)": lambda: BatchAllTripletLoss()(X, Y, ref_emb=X[:, :4], ref_labels=Y),
    "margin": lambda: AdaptiveMuTripletLoss(-0.1)(X, Y),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_each_option_it_cannot_honour_is_refused_in_one_line(case: str) -> None:
    """A ValueError whose one-line message starts with the option's name."""
    with pytest.raises(ValueError, match="^" + case.split(" (")[0]) as err:
        REFUSED[case]()
    assert "\n" not in str(err.value)


def test_import_losses_needs_no_pml() -> None:
    """`import losses` (and every loss) works where pytorch-metric-learning cannot be imported; losses.pml says so."""
    script = textwrap.dedent("""
        import sys
        sys.modules["pytorch_metric_learning"] = None
        import torch, losses
        print(float(losses.LOSSES["batch-all"](torch.eye(4), torch.tensor([0, 0, 1, 1]), 2.0)))
        try:
            import losses.pml
        except ImportError:
            print("no pml")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["2.0", "no pml"]


# ---------------------------------------------------------------- B = 4096, where PML cannot run


def pml_triplet_index_bytes(batch_size: int, classes: int) -> int:
    """What PML's all-triplets indices alone take: 3 int64 per valid triplet, Σ_c n_c (n_c − 1)(B − n_c)."""
    sizes = [batch_size // classes + (c < batch_size % classes) for c in range(classes)]
    return 3 * 8 * sum(n * (n - 1) * (batch_size - n) for n in sizes)


PEAK_BOUND_MIB = 4096


@pytest.mark.slow  # ~12 s on 2 quiet cores (1.6 s batch-all, 7 s quadruplet, the rest imports), minutes under load
def test_batch_all_and_quadruplet_at_b_4096_stay_far_below_pmls_indices() -> None:
    """B = 4096, 10 classes, D = 64, forward + backward through the drop-ins; peak RSS above the baseline (a
    process of its own, as bench.loss_benchmark measures) < 4 GiB, where PML's triplet indices alone need ~138 GiB."""
    script = textwrap.dedent("""
        import json, resource, time, torch
        from losses.pml import BatchAllTripletLoss, QuadrupletLoss

        def rss_mib():
            line = next(l for l in open("/proc/self/status") if l.startswith("VmRSS:"))
            return int(line.split()[1]) / 1024

        gen = torch.Generator().manual_seed(0)
        x = torch.randn(4096, 64, generator=gen).requires_grad_()
        y = (torch.arange(4096) % 10)[torch.randperm(4096, generator=gen)]
        losses = {"batch-all": BatchAllTripletLoss(0.2), "quadruplet": QuadrupletLoss(0.2)}
        torch.ones(1 << 20).exp_()  # the thread pool's stacks belong to the baseline
        for loss_fn in losses.values():
            loss_fn(x[:8], y[:8]).backward()  # loads the code pages
        x.grad = None
        baseline = rss_mib()
        out = {"baseline_mib": baseline}
        for name, loss_fn in losses.items():
            tic = time.perf_counter()
            loss = loss_fn(x, y)
            loss.backward()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            out[name] = {"loss": loss.item(), "grad_finite": bool(torch.isfinite(x.grad).all()),
                         "grad_norm": x.grad.norm().item(), "seconds": time.perf_counter() - tic,
                         "peak_above_baseline_mib": max(peak, baseline) - baseline}
            x.grad = None
        print(json.dumps(out))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(run.stdout)
    for name in ("batch-all", "quadruplet"):
        assert result[name]["loss"] > 0 and result[name]["grad_finite"] and result[name]["grad_norm"] > 0, result
        assert result[name]["peak_above_baseline_mib"] < PEAK_BOUND_MIB, result
    pml_mib = pml_triplet_index_bytes(4096, 10) / 2**20
    assert pml_mib > 30 * PEAK_BOUND_MIB, pml_mib  # ≈ 141,500 MiB ≈ 138 GiB: more than this machine's memory
    print(json.dumps({**result, "pml_triplet_indices_mib": pml_mib}))
