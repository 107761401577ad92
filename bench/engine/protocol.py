"""Splits and evaluation protocols: what a trial trains on, and which images are searched for which.

Validation split (both protocols): a class-stratified part of the training split, round(val_fraction · n_c)
images of each class c, drawn with VAL_SEED (its own fixed seed), so that every trial and every run has the
same one; training never sees it. A class that the split would leave with no training or no validation
image is refused (ConfigError).

Protocols (config `protocol`):
- `seen` (default, the source tutorial's k-NN classification): training = the training split less the
  validation split (then `train_subset`, if set); gallery = that reduced training split; queries = the
  validation images (val_* metrics) or the test images (test metrics).
- `unseen` (class-disjoint): the sorted classes are cut into three sets that share no class, UNSEEN_SHARES of
  them (rounded half up, at least 2 each) for training and validation and the rest for test: 4 / 2 / 4 of 10
  classes. Training = the training-split images of the training classes (then `train_subset`); validation =
  the training-split images of the validation classes; test = the test-split images of the test classes; the
  last two are evaluated by leave-one-out retrieval within the set, each query's own image excluded. So every
  choice made on validation is made on classes that are neither trained on nor reported (Musgrave et al. 2020
  validate on class-disjoint folds of the training classes; a fixed third set is the simplest form of that).
  `val_fraction` has no effect here. Data that cannot give three sets of at least 2 classes (fewer than 6
  classes), or a validation or test class with fewer than 2 images, is refused.

Evaluation sizes: the final checkpoint searches the whole validation and test sets against the whole
gallery. Earlier checkpoints use fixed subsets (drawn with SUBSET_SEED, the same in every trial), of
`eval_gallery` gallery images (under `unseen`: images per searched set) and `eval_queries` queries per
query set; 0 = the whole set; None = the device's default: the whole set on CUDA, and on the CPU the
planned samples (config.sample_budget) / (3 · checkpoints) each, clamped to [CPU_EVAL_MIN, CPU_EVAL_MAX], so
that an intermediate checkpoint embeds about as many images as training sees between two checkpoints, at
roughly a third of its cost (an inference forward pass costs about a third of a training step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bench.engine.config import ConfigError, sample_budget
from bench.engine.data import load_dataset
from bench.engine.evaluate import retrieval_metrics

VAL_SEED = 20200623  # the validation split's own seed: the same split in every trial and run
SUBSET_SEED = 20170310  # fixed, so that evaluation and train subsets are the same in every trial
CPU_EVAL_MIN, CPU_EVAL_MAX = 256, 10_000
SPLIT_METRICS = ("knn_accuracy", "precision_at_1", "map_at_r")
EVAL_METRICS = (*(f"val_{name}" for name in SPLIT_METRICS), *SPLIT_METRICS)
EVAL_SIZE_KEYS = ("val_gallery_size", "val_queries_size", "test_gallery_size", "test_queries_size")
SPLIT_SIZE_KEYS = ("train_size", "val_size", "test_size", "n_train_classes")
UNSEEN_SHARES = (0.4, 0.2)  # of the sorted classes: training, validation; the rest is the test set

Embed = Callable[[Tensor], Tensor]  # uint8 images [N, C, H, W] → float32 embeddings [N, D]


@dataclass(frozen=True)
class Splits:
    """The images [N, C, H, W] uint8 and labels [N] int64 of one protocol's training, validation and test sets."""

    protocol: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor

    def sizes(self) -> dict[str, int]:
        """train_size, val_size, test_size (images) and n_train_classes."""
        sizes = (len(self.y_train), len(self.y_val), len(self.y_test), len(self.y_train.unique()))
        return dict(zip(SPLIT_SIZE_KEYS, sizes, strict=True))


def fixed_subset(n: int, size: int) -> Tensor:
    """Sorted indices of `size` of range(n) drawn with SUBSET_SEED (all of them when size is 0 or ≥ n)."""
    if not size or size >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    return torch.randperm(n, generator=generator)[:size].sort().values


def validation_mask(labels: Tensor, fraction: float) -> Tensor:
    """Bool [N]: round(fraction · n_c) images of each class c of labels [N], drawn with VAL_SEED (ConfigError
    if a class would be left with no training or no validation image)."""
    labels = labels.cpu()
    classes, inverse, counts = labels.unique(return_inverse=True, return_counts=True)
    n_val = torch.floor(counts.double() * fraction + 0.5).long()
    for cls, count, taken in zip(classes.tolist(), counts.tolist(), n_val.tolist(), strict=True):
        if taken == 0 or taken == count:
            side = "validation" if taken == 0 else "training"
            raise ConfigError(f"val_fraction {fraction} leaves class {cls} ({count} training images) with no "
                              f"{side} image; choose another val_fraction or drop the class")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(VAL_SEED))
    order = order[inverse[order].argsort(stable=True)]  # grouped by class, random within a class
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order)) - starts.repeat_interleave(counts)
    return rank < n_val[inverse]


def make_splits(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, protocol: str, val_fraction: float,
    train_subset: int = 0,
) -> Splits:
    """The protocol's splits of a data set's training and test split (see the module docstring)."""
    if protocol == "seen":
        val = validation_mask(y_train, val_fraction).to(y_train.device)
        x_val, y_val, x_test_set, y_test_set = x_train[val], y_train[val], x_test, y_test
        x_train, y_train = x_train[~val], y_train[~val]
    elif protocol == "unseen":
        train_classes, val_classes, test_classes = (c.to(y_train.device) for c in unseen_classes(torch.unique(y_train)))
        val, test = torch.isin(y_train, val_classes), torch.isin(y_test, test_classes)
        for labels, held_out, name in ((y_train[val], val_classes, "validation"), (y_test[test], test_classes, "test")):
            counts = torch.stack([(labels == cls).sum() for cls in held_out])
            if int(counts.min()) < 2:
                raise ConfigError(f"protocol unseen: {name} class {int(held_out[counts.argmin()])} has "
                                  f"{int(counts.min())} image(s); leave-one-out retrieval needs 2")
        train = torch.isin(y_train, train_classes.to(y_train.device))
        x_val, y_val, x_test_set, y_test_set = x_train[val], y_train[val], x_test[test], y_test[test]
        x_train, y_train = x_train[train], y_train[train]
    else:
        raise ConfigError(f"unknown protocol {protocol!r}; valid: seen, unseen")
    if 0 < train_subset < len(y_train):
        keep = fixed_subset(len(y_train), train_subset).to(y_train.device)
        x_train, y_train = x_train[keep], y_train[keep]
    return Splits(protocol, x_train, y_train, x_val, y_val, x_test_set, y_test_set)


def unseen_classes(classes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The training, validation and test classes of the `unseen` protocol: consecutive runs of the sorted classes,
    UNSEEN_SHARES of them rounded half up (at least 2 each), the rest for test (ConfigError below 2 test classes)."""
    classes = classes.cpu().sort().values
    n = len(classes)
    n_train, n_val = (max(2, int(share * n + 0.5)) for share in UNSEEN_SHARES)
    if n - n_train - n_val < 2:
        raise ConfigError(f"protocol unseen needs at least 6 classes (class-disjoint training, validation and test "
                          f"sets of at least 2 classes each), the data has {n}")
    return classes[:n_train], classes[n_train:n_train + n_val], classes[n_train + n_val:]


def load_splits(cfg: dict[str, Any], device: torch.device) -> Splits:
    """Load cfg's data set onto `device` and split it by cfg's protocol, val_fraction and train_subset."""
    x_train, y_train, x_test, y_test = load_dataset(cfg["dataset"], cfg["data_dir"], device)
    return make_splits(x_train, y_train, x_test, y_test, cfg["protocol"], float(cfg["val_fraction"]),
                       int(cfg["train_subset"]))


def intermediate_sizes(cfg: dict[str, Any], device: torch.device) -> tuple[int, int]:
    """(gallery, queries) sizes of the checkpoints before the last (0 = the whole set; module docstring)."""
    default = 0
    if device.type != "cuda":
        per_role = int(sample_budget(cfg) // (3 * int(cfg["checkpoints"])))
        default = min(CPU_EVAL_MAX, max(CPU_EVAL_MIN, per_role))
    return tuple(default if cfg[key] is None else int(cfg[key]) for key in ("eval_gallery", "eval_queries"))


def _take(images: Tensor, labels: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """A fixed subset of `size` images and labels (the tensors themselves when it is all of them)."""
    if not size or size >= len(labels):
        return images, labels
    keep = fixed_subset(len(labels), size).to(labels.device)
    return images[keep], labels[keep]


def evaluate(
    embed: Embed, splits: Splits, gallery_size: int = 0, queries_size: int = 0,
    plateau_sizes: tuple[int, int] | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """EVAL_METRICS, EVAL_SIZE_KEYS and SPLIT_SIZE_KEYS of `embed` under the splits' protocol, and the embeddings of the
    validation and test queries {"val": [Qv, D], "test": [Qt, D]} in float32; sizes 0 = whole sets.

    plateau_sizes=(gallery, queries), with sizes 0 (the whole sets): also `plateau_val_map_at_r`, the validation
    MAP@R on the subsets that those sizes select, taken from the same embeddings (nothing is embedded twice)."""
    metrics: dict[str, Any] = {}
    embeddings: dict[str, Tensor] = {}
    if splits.protocol == "seen":
        x_gallery, y_gallery = _take(splits.x_train, splits.y_train, gallery_size)
        gallery = embed(x_gallery).float()
    for prefix, x, y in (("val", splits.x_val, splits.y_val), ("test", splits.x_test, splits.y_test)):
        if splits.protocol == "seen":
            x_queries, y_queries = _take(x, y, queries_size)
            queries = embeddings[prefix] = embed(x_queries).float()
            result = retrieval_metrics(gallery, y_gallery, queries, y_queries)
            searched = len(y_gallery)
        else:  # leave-one-out within the set
            x_queries, y_queries = _take(x, y, gallery_size)
            queries = embeddings[prefix] = embed(x_queries).float()
            result = retrieval_metrics(queries, y_queries)
            searched = len(y_queries)
        name = "" if prefix == "test" else "val_"
        metrics.update({f"{name}{key}": value for key, value in result.items()})
        metrics.update({f"{prefix}_gallery_size": searched, f"{prefix}_queries_size": len(y_queries)})
    if plateau_sizes is not None:
        if gallery_size or queries_size:
            raise ValueError("plateau_sizes needs the whole sets embedded (gallery_size = queries_size = 0)")
        if splits.protocol == "seen":
            subset = retrieval_metrics(*_take(gallery, y_gallery, plateau_sizes[0]),
                                       *_take(embeddings["val"], splits.y_val, plateau_sizes[1]))
        else:
            subset = retrieval_metrics(*_take(embeddings["val"], splits.y_val, plateau_sizes[0]))
        metrics["plateau_val_map_at_r"] = subset["map_at_r"]
    metrics.update(splits.sizes())
    return metrics, embeddings
