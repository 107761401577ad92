"""A trial's evaluation: the reported metrics against scikit-learn on the embeddings it searched, evaluation
sizes, float32 search under bf16, training apart from validation, the trained net against the untrained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

import bench.engine.protocol
import bench.engine.train
import bench.trial
from bench.engine.protocol import fixed_subset
from bench.engine.synthetic import synthetic_split
from bench.engine.train import run_trial
from bench.experiment.baselines import baseline_config, run_baseline

Captured = list[tuple[torch.Tensor, ...]]


def tiny(data_dir: Path, **changes: Any) -> dict[str, Any]:
    """A trial of a few steps on generated MNIST."""
    config = {"dataset": "mnist", "loss": "batch-all", "margin": 0.2, "batch_size": 32, "budget_samples": 300,
              "data_dir": str(data_dir), "device": "cpu"}
    return {**config, **changes}


def capture(monkeypatch: pytest.MonkeyPatch) -> Captured:
    """Record (gallery, gallery labels, queries, query labels) of every search of the evaluation."""
    calls: Captured = []
    search = bench.engine.protocol.retrieval_metrics

    def spy(gallery: torch.Tensor, gallery_labels: torch.Tensor, *args: Any, **kwargs: Any) -> dict[str, float]:
        calls.append((gallery, gallery_labels, *args))
        return search(gallery, gallery_labels, *args, **kwargs)

    monkeypatch.setattr(bench.engine.protocol, "retrieval_metrics", spy)
    return calls


@pytest.fixture(scope="module")
def two_overlapping_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated MNIST of 2 classes with noise that makes them overlap: no k-NN vote can tie at odd k."""
    data_dir = tmp_path_factory.mktemp("overlap")
    x_train, y_train = synthetic_split("mnist", 600, n_classes=2, noise=350.0, seed=1)
    x_test, y_test = synthetic_split("mnist", 200, n_classes=2, noise=350.0, seed=2)
    np.savez(data_dir / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return data_dir


def sklearn_accuracy(k: int, gallery: torch.Tensor, gallery_labels: torch.Tensor, queries: torch.Tensor,
                     query_labels: torch.Tensor) -> float:
    knn = KNeighborsClassifier(n_neighbors=k).fit(gallery.numpy(), gallery_labels.numpy())
    return float((knn.predict(queries.numpy()) == query_labels.numpy()).mean())


def test_reported_metrics_match_sklearn_on_the_searched_embeddings(
    two_overlapping_classes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = capture(monkeypatch)
    reports: list[dict[str, Any]] = []
    config = tiny(two_overlapping_classes, sampler="random", budget_samples=160, checkpoints=2,
                  eval_gallery=100, eval_queries=30)
    final = run_trial(config, reports.append)
    # checkpoint 1: fixed subsets (eval_gallery, eval_queries); the last: the whole sets (540 / 60 / 200), then
    # validation again on checkpoint 1's subsets for plateau_gap
    assert [(len(c[0]), len(c[2])) for c in calls] == [(100, 30), (100, 30), (540, 60), (540, 200), (100, 30)]
    assert torch.equal(calls[4][0], calls[2][0][fixed_subset(540, 100)])
    assert torch.equal(calls[4][2], calls[2][2][fixed_subset(60, 30)])
    assert final["plateau_val_map_at_r"] != final["val_map_at_r"]
    assert [(r["val_gallery_size"], r["val_queries_size"], r["test_gallery_size"], r["test_queries_size"])
            for r in reports] == [(100, 30, 100, 30), (540, 60, 540, 200)]
    assert (final["train_size"], final["val_size"], final["test_size"], final["n_train_classes"]) == (540, 60, 200, 2)
    k_matters = False
    for report, searches in zip(reports, (calls[:2], calls[2:4]), strict=True):
        for prefix, searched in zip(("val_", ""), searches, strict=True):
            assert all(t.dtype == torch.float32 for t in searched[::2])
            expected = sklearn_accuracy(5, *searched)
            assert report[f"{prefix}knn_accuracy"] == expected and 0 < expected < 1  # not trivially perfect
            assert report[f"{prefix}precision_at_1"] == sklearn_accuracy(1, *searched)
            k_matters |= sklearn_accuracy(3, *searched) != expected
    assert k_matters  # a k other than 5 would show in at least one search


def test_trained_net_beats_the_untrained_net(tiny_data_dir: Path) -> None:
    final = run_trial(tiny(tiny_data_dir))
    untrained = run_baseline(baseline_config("untrained", tiny(tiny_data_dir)), str(tiny_data_dir), "cpu")
    assert untrained["map_at_r"] < 0.7 and untrained["val_map_at_r"] < 0.7  # generated data is easy, not trivial
    assert final["map_at_r"] > untrained["map_at_r"] + 0.25 and final["val_map_at_r"] > untrained["val_map_at_r"] + 0.25


def test_bf16_evaluation_searches_float32_embeddings(tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    searched = {}
    for precision in ("fp32", "bf16"):
        calls = capture(monkeypatch)
        run_trial(tiny(tiny_data_dir, budget_samples=32, checkpoints=1, precision=precision))
        searched[precision] = calls[1][2]  # the test queries (then come validation's again, for plateau_gap)
    assert searched["bf16"].dtype == torch.float32
    assert not torch.equal(searched["bf16"], searched["fp32"])  # the forward pass did run in bf16
    torch.testing.assert_close(searched["bf16"], searched["fp32"], atol=0.05, rtol=0)


@pytest.mark.parametrize("protocol", ["seen", "unseen"])
def test_training_sees_only_its_own_split(
    tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    trained_on = []
    plan = bench.engine.train.make_batches

    def spy(sampler: str, labels: torch.Tensor, *args: Any) -> torch.Tensor:
        trained_on.append(labels.clone())
        return plan(sampler, labels, *args)

    monkeypatch.setattr(bench.engine.train, "make_batches", spy)
    calls = capture(monkeypatch)
    final = run_trial(tiny(tiny_data_dir, protocol=protocol, budget_samples=32, checkpoints=1))
    (labels,) = trained_on
    assert len(labels) == final["train_size"] == (540 if protocol == "seen" else 240)
    if protocol == "unseen":  # classes 0-3 train, 4-5 validate, 6-9 test; each set searched leave-one-out
        # validation, test, then validation's subset again for plateau_gap
        assert set(labels.tolist()) == set(range(4)) and [len(c) for c in calls] == [2, 2, 2]
        assert [set(c[1].tolist()) for c in calls] == [{4, 5}, {6, 7, 8, 9}, {4, 5}]
        assert (final["val_gallery_size"], final["test_gallery_size"], final["test_queries_size"]) == (120, 80, 80)


def test_saved_embeddings_are_the_first_test_queries(tiny_data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "out" / "embeddings.npz"
    final = run_trial(tiny(tiny_data_dir, dataset="cifar10", protocol="unseen", batch_size=8, budget_samples=16,
                           checkpoints=1, sampler="random", save_embeddings=str(path)))
    assert final["status"] == "ok" and final["step"] == 2
    with np.load(path) as saved, np.load(tiny_data_dir / "cifar10.npz") as data:
        held_out = data["y_test"][data["y_test"] >= 6]  # the test classes
        assert saved["embeddings"].dtype == np.float16 and saved["embeddings"].shape == (len(held_out), 128)
        np.testing.assert_allclose(np.linalg.norm(saved["embeddings"].astype(np.float32), axis=1), 1, atol=1e-2)
        np.testing.assert_array_equal(saved["labels"], held_out)
