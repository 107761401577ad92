"""Splits and protocols: disjoint, stratified, the same in every trial and run; evaluation sizes; refusals."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bench.trial
from bench.engine.config import ConfigError
from bench.engine.protocol import (
    CPU_EVAL_MAX,
    CPU_EVAL_MIN,
    Splits,
    evaluate,
    intermediate_sizes,
    make_splits,
    unseen_classes,
    validation_mask,
)
from bench.engine.synthetic import write_synthetic

ROOT = Path(__file__).resolve().parent.parent


def numbered(n: int, labels: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [n, 1, 4, 4] uint8 whose first two pixels spell a unique number offset + i, and labels [n]."""
    ids = torch.arange(offset, offset + n)
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = ids // 256, ids % 256
    return images, labels


def ids(images: torch.Tensor) -> set[int]:
    return set((images[:, 0, 0, 0].long() * 256 + images[:, 0, 0, 1].long()).tolist())


def data(n_classes: int = 6, n_train: int = 300, n_test: int = 120) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(5)
    return (*numbered(n_train, torch.randint(0, n_classes, (n_train,), generator=g) * 3 + 1),
            *numbered(n_test, torch.randint(0, n_classes, (n_test,), generator=g) * 3 + 1, offset=10_000))


def test_seen_splits_are_disjoint_stratified_and_fixed() -> None:
    x_train, y_train, x_test, y_test = data()
    splits = make_splits(x_train, y_train, x_test, y_test, "seen", 0.2)
    assert not ids(splits.x_train) & ids(splits.x_val)  # no image in two splits
    assert ids(splits.x_train) | ids(splits.x_val) == ids(x_train) and ids(splits.x_test) == ids(x_test)
    for cls in y_train.unique():
        n = int((y_train == cls).sum())
        assert int((splits.y_val == cls).sum()) == int(n * 0.2 + 0.5)  # round(fraction · n_c) per class
    assert splits.sizes() == {"train_size": len(splits.y_train), "val_size": len(splits.y_val), "test_size": 120,
                              "n_train_classes": 6}
    again = make_splits(x_train.clone(), y_train.clone(), x_test, y_test, "seen", 0.2)
    assert torch.equal(again.x_val, splits.x_val) and torch.equal(again.y_train, splits.y_train)
    other = make_splits(x_train, y_train, x_test, y_test, "seen", 0.1)
    assert len(other.y_val) < len(splits.y_val)
    subset = make_splits(x_train, y_train, x_test, y_test, "seen", 0.2, train_subset=50)
    assert len(subset.y_train) == 50 and ids(subset.x_train) <= ids(splits.x_train)  # validation unchanged
    assert torch.equal(subset.x_val, splits.x_val)


def test_the_validation_split_is_the_same_in_another_process() -> None:
    labels = torch.arange(1000) % 7
    mask = validation_mask(labels, 0.1)
    code = ("import torch; from bench.engine.protocol import validation_mask; "
            "print(validation_mask(torch.arange(1000) % 7, 0.1).nonzero().flatten().tolist())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(mask.nonzero().flatten().tolist())
    assert 0 < mask[:500].sum() < mask.sum()  # spread over the set, not its start


def test_unseen_splits_train_validate_and_test_on_three_class_disjoint_sets() -> None:
    """Sorted classes, 40% / 20% / the rest (rounded half up, at least 2 each): selection never sees a test class."""
    x_train, y_train, x_test, y_test = data(n_classes=7)
    splits = make_splits(x_train, y_train, x_test, y_test, "unseen", 0.3)
    classes = sorted(set(y_train.tolist()))
    assert set(splits.y_train.tolist()) == set(classes[:3])  # round(2.8) training classes
    assert set(splits.y_val.tolist()) == set(classes[3:5]) and set(splits.y_test.tolist()) == set(classes[5:])
    assert ids(splits.x_val) <= ids(x_train) and ids(splits.x_test) <= ids(x_test)
    assert not ids(splits.x_train) & ids(splits.x_val)
    assert len(splits.y_test) == int(torch.isin(y_test, torch.tensor(classes[5:])).sum())
    assert splits.sizes()["n_train_classes"] == 3
    assert [len(c) for c in unseen_classes(torch.arange(10))] == [4, 2, 4]
    assert [c.tolist() for c in unseen_classes(torch.tensor([9, 3, 5, 1, 7, 0]))] == [[0, 1], [3, 5], [7, 9]]
    # val_fraction has no effect under unseen: all the held-out classes' training images validate
    assert torch.equal(make_splits(x_train, y_train, x_test, y_test, "unseen", 0.1).x_val, splits.x_val)


@pytest.mark.parametrize(("change", "message"), [
    ({"protocol": "unseen", "n_classes": 5}, "protocol unseen needs at least 6 classes (class-disjoint training, "
     "validation and test sets of at least 2 classes each), the data has 5"),
    ({"protocol": "seen", "n_train": 12}, "leaves class"),
    ({"protocol": "unseen", "n_test": 5}, "leave-one-out retrieval needs 2"),
    ({"protocol": "nearby"}, "unknown protocol 'nearby'; valid: seen, unseen"),
])
def test_splits_that_cannot_be_made_are_refused(change: dict[str, Any], message: str) -> None:
    sizes = {key: value for key, value in change.items() if key != "protocol"}
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_splits(*data(**sizes), change["protocol"], 0.1)


def test_a_class_emptied_by_the_validation_split_is_named() -> None:
    labels = torch.tensor([0] * 20 + [1] * 3)
    with pytest.raises(ConfigError, match=r"val_fraction 0.1 leaves class 1 \(3 training images\) with no "
                                          "validation image"):
        validation_mask(labels, 0.1)
    with pytest.raises(ConfigError, match="leaves class 1 .* with no training image"):
        validation_mask(torch.tensor([0] * 20 + [1]), 0.5)


def test_intermediate_sizes_scale_with_the_budget_on_the_cpu() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cfg = {"budget_samples": 30_000, "checkpoints": 4, "eval_gallery": None, "eval_queries": None}
    assert intermediate_sizes(cfg, cpu) == (2500, 2500)  # 30000 / (3 · 4)
    assert intermediate_sizes({**cfg, "budget_samples": 512}, cpu) == (CPU_EVAL_MIN, CPU_EVAL_MIN)
    assert intermediate_sizes({**cfg, "budget_samples": 10**7}, cpu) == (CPU_EVAL_MAX, CPU_EVAL_MAX)
    assert intermediate_sizes(cfg, cuda) == (0, 0)
    assert intermediate_sizes({**cfg, "eval_gallery": 70, "eval_queries": 0}, cpu) == (70, 0)


def clusters(protocol: str) -> Splits:
    """Six well-separated classes of images (a bright square per class) in both protocols' splits."""
    g = torch.Generator().manual_seed(0)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 6
        images = torch.randint(0, 20, (n, 1, 8, 12), generator=g, dtype=torch.uint8)
        for cls in range(6):
            images[labels == cls, 0, 4 * (cls // 3):4 * (cls // 3) + 4, 4 * (cls % 3):4 * (cls % 3) + 4] += 200
        return images, labels

    return make_splits(*draw(200), *draw(80), protocol, 0.1)


def test_evaluate_reports_every_metric_and_size_in_both_protocols() -> None:
    flat = lambda images: torch.nn.functional.normalize(images.flatten(1).float(), dim=1)  # noqa: E731
    seen, _ = evaluate(flat, clusters("seen"), gallery_size=50, queries_size=10)
    assert {key: seen[key] for key in ("val_gallery_size", "val_queries_size", "test_gallery_size",
                                      "test_queries_size")} == {"val_gallery_size": 50, "val_queries_size": 10,
                                                                "test_gallery_size": 50, "test_queries_size": 10}
    assert seen["val_map_at_r"] == seen["map_at_r"] == seen["knn_accuracy"] == 1.0
    unseen, embedded = evaluate(flat, clusters("unseen"))
    assert (unseen["val_gallery_size"], unseen["val_queries_size"], unseen["test_queries_size"]) == (66, 66, 26)
    assert unseen["val_map_at_r"] == unseen["map_at_r"] == unseen["val_precision_at_1"] == 1.0
    assert embedded["test"].dtype == torch.float32 and embedded["test"].shape == (26, 96)


def test_cli_refuses_bad_protocol_inputs_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_synthetic(tmp_path / "three", n_classes=3)
    write_synthetic(tmp_path / "tiny", n_train=31, n_test=20)  # a class with 3 training images at val 0.1
    good = ["--dataset", "mnist", "--loss", "batch-hard", "--margin", "0.2", "--batch-size", "8",
            "--budget-samples", "8", "--device", "cpu", "--data-dir", str(tmp_path / "tiny")]
    cases = {
        "unknown protocol 'nearby'; valid: seen, unseen": ["--protocol", "nearby"],
        "val_fraction must be in (0, 0.5], got 0.7": ["--val-fraction", "0.7"],
        "val_fraction must be in (0, 0.5], got 0.0": ["--val-fraction", "0"],
        "protocol unseen needs at least 6 classes": ["--protocol", "unseen", "--data-dir", str(tmp_path / "three")],
        "with no validation image": [],
    }
    for message, argv in cases.items():
        assert bench.trial.main([*good, *argv]) == 2, message
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and message in err and err.startswith("python -m bench.trial: ")
    process = subprocess.run([sys.executable, "-m", "bench.trial", *good, "--protocol", "nearby"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 2 and process.stdout == "" and process.stderr.count("\n") == 1
    assert "unknown protocol 'nearby'" in process.stderr and not list(tmp_path.glob("**/*.json"))


def test_synthetic_tiny_set_has_a_class_the_split_would_empty(tmp_path: Path) -> None:
    with np.load(write_synthetic(tmp_path, n_train=31, n_test=20)) as saved:
        counts = np.bincount(saved["y_train"])
    assert counts.min() == 3 and int(counts.min() * 0.1 + 0.5) == 0


@pytest.mark.parametrize("protocol", ["seen", "unseen"])
def test_the_plateau_metric_is_the_subset_evaluation_from_the_whole_sets_embeddings(protocol: str) -> None:
    """plateau_val_map_at_r equals validation MAP@R evaluated on those subsets, each image embedded once."""
    calls: list[int] = []

    def embed(images: torch.Tensor) -> torch.Tensor:  # two pixels of class 0's square: the other classes mix
        calls.append(len(images))
        return images.flatten(1)[:, :2].float()

    splits = clusters(protocol)
    whole, _ = evaluate(embed, splits, plateau_sizes=(30, 8))
    embedded_once = list(calls)
    subsets, _ = evaluate(embed, splits, 30, 8)
    assert 0 < subsets["val_map_at_r"] < 0.95 and subsets["val_map_at_r"] != whole["val_map_at_r"]
    assert whole["plateau_val_map_at_r"] == pytest.approx(subsets["val_map_at_r"], abs=1e-12)
    assert sum(embedded_once) == sum(len(x) for x in (splits.x_val, splits.x_test)) + (
        len(splits.x_train) if protocol == "seen" else 0)
    with pytest.raises(ValueError, match="whole sets"):
        evaluate(embed, splits, 30, 8, plateau_sizes=(30, 8))
