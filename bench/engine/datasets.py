"""The dataset table: everything the suite knows about a data set, in one entry per name.

A new data set is one entry here and `<name>.npz` in the data folder (bench/engine/data.py gives the form).
- shape: (C, H, W) of its images: what generated data (bench/engine/synthetic.py) and the benchmarks use;
- model: the network a config's `model: None` means (bench/engine/models.py);
- augment: whether training draws random crops and flips (bench/engine/data.py augment);
- torchvision: the torchvision.datasets class that reads (or downloads) it when there is no .npz, and its
  folder under the data folder; None for a set that only comes as .npz.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dataset:
    """One data set's facts (module docstring)."""

    shape: tuple[int, int, int]
    model: str
    augment: bool
    torchvision: str | None = None
    folder: str | None = None


DATASETS: dict[str, Dataset] = {
    "mnist": Dataset((1, 28, 28), "mnist-net", augment=False, torchvision="MNIST", folder="MNIST/raw/"),
    "cifar10": Dataset((3, 32, 32), "resnet18", augment=True, torchvision="CIFAR10", folder="cifar-10-batches-py/"),
}
