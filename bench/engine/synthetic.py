"""Small generated image sets in the `.npz` layout, for tests and smoke runs without real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.engine.datasets import DATASETS


def image_shape(dataset: str) -> tuple[int, ...]:
    """The .npz image shape of one of the table's data sets: (H, W) for one channel, else (H, W, C)."""
    channels, height, width = DATASETS[dataset].shape
    return (height, width) if channels == 1 else (height, width, channels)


def synthetic_split(
    dataset: str, n: int, n_classes: int = 10, noise: float = 40.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [n, *image_shape(dataset)] drawn as class prototype + Gaussian noise; labels int64 [n]."""
    shape = image_shape(dataset)
    prototypes = np.random.default_rng(1234).integers(0, 256, size=(n_classes, *shape))
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    images = prototypes[labels] + rng.normal(0.0, noise, size=(n, *shape))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_synthetic(
    data_dir: str | Path, dataset: str = "mnist", n_train: int = 600, n_test: int = 200,
    n_classes: int = 10,
) -> Path:
    """Write `<data_dir>/<dataset>.npz` with keys x_train, y_train, x_test, y_test; return its path."""
    x_train, y_train = synthetic_split(dataset, n_train, n_classes, seed=1)
    x_test, y_test = synthetic_split(dataset, n_test, n_classes, seed=2)
    path = Path(data_dir) / f"{dataset}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path
