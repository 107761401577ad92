"""Whole image sets as uint8 tensors on the trial's device; normalisation and augmentation in batches there.

A dataset `name` is looked up in the data folder in this order:
1. `<dir>/<name>.npz` with keys x_train, y_train, x_test, y_test: uint8 images N×H×W (grey) or
   N×H×W×3 (RGB) and integer labels ≥ 0 of length N. This is also how to bring your own labelled set.
2. torchvision's own folders under `<dir>` (`MNIST/raw/…`, `cifar-10-batches-py/…`), or for a data set without a
   torchvision reader (a plugin's), an image folder `<dir>/<folder>/{train,test}/<class>/<image>` (any format
   Pillow reads, every image of the set's shape; labels are the class folders' names in sorted order).
3. A torchvision download into `<dir>`, only when the environment variable TRIPLETBENCH_DOWNLOAD is 1 (offline by
   default: a mistyped folder is named as typed, never fetched).
Anything else raises DataError with one line naming the folder and these forms.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.engine.datasets import DATASETS

DOWNLOAD_ENV = "TRIPLETBENCH_DOWNLOAD"


def _torchvision_dataset(class_name: str, root: str, train: bool, download: bool) -> Any:
    """torchvision.datasets.<class_name>(root, train=train, download=download); torchvision is imported here, on
    first use, not with this module: its import costs about 2 s of CPU in every process, most of which never
    reads a torchvision folder."""
    import torchvision

    return getattr(torchvision.datasets, class_name)(root, train=train, download=download)


# the torchvision readers of the table's data sets (bench/engine/datasets.py): (root, train, download) → dataset
TORCHVISION = {name: functools.partial(_torchvision_dataset, entry.torchvision)
               for name, entry in DATASETS.items() if entry.torchvision}
KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(ValueError):
    """A data set that cannot be loaded; the message is one line naming the folder and the accepted forms."""


def _fail(name: str, data_dir: Path, problem: str) -> DataError:
    folder = DATASETS[name].folder
    if folder and name in TORCHVISION:
        other = f", or torchvision's {folder} folder there, or downloaded into it by torchvision"
    else:
        other = f", or the image folder {folder}{{train,test}}/<class>/ there" if folder else ""
    return DataError(f"{problem}; {name} is read from {data_dir}/ as {name}.npz (keys {', '.join(KEYS)}: uint8 "
                     f"images N×H×W or N×H×W×3, integer labels){other}")


def _check_split(images: np.ndarray, labels: np.ndarray, split: str) -> str | None:
    """What is wrong with one split (images, labels), or None."""
    if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)):
        return f"x_{split} must be uint8 N×H×W or N×H×W×3, got {images.dtype} {images.shape}"
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        return f"y_{split} must be a 1-D integer array, got {labels.dtype} {labels.shape}"
    if len(labels) != len(images):
        return f"x_{split} has {len(images)} images but y_{split} has {len(labels)} labels"
    if len(labels) == 0:
        return f"x_{split} is empty"
    if labels.min() < 0:
        return f"y_{split} has negative labels"
    return None


def _read_npz(path: Path) -> tuple[np.ndarray, ...] | str:
    """The four arrays of an .npz file, or what is wrong with it."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in KEYS if key not in archive.files]
            if missing:
                return f"{path.name} lacks key(s) {', '.join(missing)}"
            return tuple(archive[key] for key in KEYS)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        return f"{path.name} is not a readable .npz file ({type(err).__name__}: {str(err).splitlines()[0]})"


def _paths(data_dir: Path) -> set[Path]:
    """Every path under data_dir, and data_dir itself when it exists."""
    return {data_dir, *data_dir.rglob("*")} if data_dir.is_dir() else set()


def _read_torchvision(name: str, data_dir: Path, download: bool) -> tuple[np.ndarray, ...] | str:
    """The four arrays from torchvision's folder under data_dir (downloading it first if asked; a failed
    download removes the files and folders it created, e.g. an empty MNIST/raw/)."""
    splits = []
    before = _paths(data_dir) if download else set()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            for train in (True, False):
                dataset = TORCHVISION[name](str(data_dir), train=train, download=download)
                splits += [np.asarray(dataset.data), np.asarray(dataset.targets, dtype=np.int64)]
    except Exception as err:  # torchvision raises anything from RuntimeError to URLError and OSError
        if download:
            for path in sorted(_paths(data_dir) - before, key=lambda path: len(path.parts), reverse=True):
                with contextlib.suppress(OSError):
                    path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"no {name}.npz, torchvision {'download failed' if download else 'folder not found'} ({reason})"
    return tuple(splits)


IMAGE_SPLITS = ("train", "test")


def _read_image_folder(name: str, data_dir: Path) -> tuple[np.ndarray, ...] | str:
    """The four arrays of the image folder <data_dir>/<folder>/{train,test}/<class>/*, or what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    root, (channels, height, width) = data_dir / DATASETS[name].folder, DATASETS[name].shape
    if not all((root / split).is_dir() for split in IMAGE_SPLITS):
        return f"no {name}.npz and no image folder {root}/{{train,test}}/<class>/"
    classes = sorted({p.name for split in IMAGE_SPLITS for p in (root / split).iterdir() if p.is_dir()})
    arrays = []
    for split in IMAGE_SPLITS:
        images, labels = [], []
        for label, cls in enumerate(classes):
            for path in sorted((root / split / cls).glob("*")) if (root / split / cls).is_dir() else []:
                try:
                    with Image.open(path) as image:
                        pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
                except (OSError, UnidentifiedImageError) as err:
                    return f"{path} is not an image Pillow reads ({type(err).__name__})"
                if pixels.shape[:2] != (height, width):
                    return f"{path} is {pixels.shape[1]}×{pixels.shape[0]}, not {name}'s {width}×{height}"
                images.append(pixels)
                labels.append(label)
        if not images:
            return f"{root / split} has no images"
        arrays += [np.stack(images).astype(np.uint8), np.asarray(labels, dtype=np.int64)]
    return tuple(arrays)


def load_dataset(name: str, data_dir: str | Path, device: str | torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x_train [N, C, H, W] uint8, y_train [N] int64, x_test, y_test, all on `device`; raise DataError."""
    data_dir = Path(data_dir)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    npz = data_dir / f"{name}.npz"
    if npz.is_file():
        arrays = _read_npz(npz)
    elif name not in TORCHVISION:
        arrays = _read_image_folder(name, data_dir) if DATASETS[name].folder else f"no {name}.npz"
    else:
        arrays = _read_torchvision(name, data_dir, download=False)
        if isinstance(arrays, str) and os.environ.get(DOWNLOAD_ENV) == "1":
            arrays = _read_torchvision(name, data_dir, download=True)
        elif isinstance(arrays, str):
            arrays = (f"no {name}.npz and no torchvision {DATASETS[name].folder} folder in {data_dir} (resolved: "
                      f"{data_dir.resolve()}); to fetch it, re-run with {DOWNLOAD_ENV}=1 (e.g. {DOWNLOAD_ENV}=1 make "
                      f"ablation DATA_DIR={data_dir}) or copy {name}.npz there")
    if isinstance(arrays, str):
        raise _fail(name, data_dir, arrays)
    x_train, y_train, x_test, y_test = arrays
    for images, labels, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        problem = _check_split(images, labels, split)
        if problem:
            raise _fail(name, data_dir, f"{npz.name if npz.is_file() else 'the data'}: {problem}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise _fail(name, data_dir, f"train images {x_train.shape[1:]} and test images {x_test.shape[1:]} differ")

    def to_tensor(images: np.ndarray) -> Tensor:
        chw = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(chw)).to(device)

    def to_labels(labels: np.ndarray) -> Tensor:
        return torch.from_numpy(labels.astype(np.int64)).to(device)

    return to_tensor(x_train), to_labels(y_train), to_tensor(x_test), to_labels(y_test)


def channel_stats(images: Tensor, chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std [C] of uint8 images [N, C, H, W] on the 0..1 scale, summed in float64."""
    total = torch.zeros(images.shape[1], dtype=torch.float64, device=images.device)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].double() / 255
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 images [B, C, H, W] → float32 (x/255 − mean) / std per channel."""
    return (images.float() / 255 - mean[:, None, None]) / std[:, None, None]


def augment(images: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Random crop after zero-padding by `padding` pixels and random horizontal flip, per image [B, C, H, W]."""
    batch, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (2, batch, 1), generator=generator, device=images.device)
    flip = torch.rand(batch, 1, generator=generator, device=images.device) < 0.5
    cols = torch.arange(width, device=images.device)
    cols = torch.where(flip, width - 1 - cols, cols) + offsets[1]
    rows = torch.arange(height, device=images.device) + offsets[0]
    sample = torch.arange(batch, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[sample, channel, rows[:, None, :, None], cols[:, None, None, :]]
