"""Both data layouts on tiny hand-written files, every way a data folder can be wrong, and the transforms."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision

import bench.engine.data
from bench.engine.data import DOWNLOAD_ENV, DataError, augment, channel_stats, load_dataset, normalize
from bench.engine.synthetic import synthetic_split


def arrays(dataset: str, n_train: int = 40, n_test: int = 20) -> dict[str, np.ndarray]:
    x_train, y_train = synthetic_split(dataset, n_train, seed=1)
    x_test, y_test = synthetic_split(dataset, n_test, seed=2)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def assert_loaded(loaded: tuple[torch.Tensor, ...], expected: dict[str, np.ndarray]) -> None:
    """Images come back N×C×H×W uint8 (HWC moved to CHW), labels int64, values unchanged."""
    for tensor, key in zip(loaded, ("x_train", "y_train", "x_test", "y_test"), strict=True):
        array = expected[key]
        if key.startswith("x"):
            assert tensor.dtype == torch.uint8 and tensor.dim() == 4
            array = array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2)
        else:
            assert tensor.dtype == torch.int64
        np.testing.assert_array_equal(tensor.numpy(), array)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DOWNLOAD_ENV, raising=False)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_npz_layout(tmp_path: Path, dataset: str) -> None:
    expected = arrays(dataset)
    np.savez(tmp_path / f"{dataset}.npz", **expected)
    loaded = load_dataset(dataset, tmp_path, "cpu")
    assert_loaded(loaded, expected)
    assert loaded[0].shape == ((40, 1, 28, 28) if dataset == "mnist" else (40, 3, 32, 32))


def test_npz_with_uint8_labels_and_other_sizes(tmp_path: Path) -> None:
    """A user's own set: any image size, any integer label dtype."""
    rng = np.random.default_rng(0)
    own = {
        "x_train": rng.integers(0, 256, (12, 16, 20, 3), dtype=np.uint8),
        "y_train": rng.integers(0, 3, 12).astype(np.uint8),
        "x_test": rng.integers(0, 256, (5, 16, 20, 3), dtype=np.uint8),
        "y_test": rng.integers(0, 3, 5).astype(np.int32),
    }
    np.savez(tmp_path / "cifar10.npz", **own)
    assert_loaded(load_dataset("cifar10", tmp_path, "cpu"), own)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An MNIST idx file: magic (0x08 = uint8, ndim), big-endian sizes, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_folder(tmp_path: Path, offline: None) -> None:
    expected = arrays("mnist")
    raw = tmp_path / "MNIST" / "raw"
    for split, prefix in (("train", "train"), ("test", "t10k")):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", expected[f"x_{split}"])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", expected[f"y_{split}"])
    assert_loaded(load_dataset("mnist", tmp_path, "cpu"), expected)


def test_torchvision_cifar10_folder(tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = arrays("cifar10", n_train=50, n_test=10)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    def dump(name: str, images: np.ndarray, labels: np.ndarray) -> None:
        data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # rows of R, G, B planes
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels.tolist()}))

    for i in range(5):
        part = slice(10 * i, 10 * i + 10)
        dump(f"data_batch_{i + 1}", expected["x_train"][part], expected["y_train"][part])
    dump("test_batch", expected["x_test"], expected["y_test"])
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    # torchvision checks the real files' md5 sums, which tiny files cannot match
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    assert_loaded(load_dataset("cifar10", tmp_path, "cpu"), expected)


class FakeTorchvision:
    """Stands in for torchvision.datasets.MNIST: records calls, fails like an offline download."""

    calls: list[bool] = []

    def __init__(self, root: str, train: bool, download: bool) -> None:
        FakeTorchvision.calls.append(download)
        raise (URLError("Name or service not known") if download else RuntimeError("Dataset not found."))


def test_download_is_tried_last_and_its_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DOWNLOAD_ENV, "1")
    monkeypatch.setitem(bench.engine.data.TORCHVISION, "mnist", FakeTorchvision)
    FakeTorchvision.calls = []
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path, "cpu")
    assert FakeTorchvision.calls == [False, True]
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message and "download failed" in message
    assert "mnist.npz" in message and "MNIST/raw/" in message


def test_offline_by_default_a_mistyped_folder_is_named_as_typed(tmp_path: Path, offline: None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bench.engine.data.TORCHVISION, "mnist", FakeTorchvision)
    monkeypatch.chdir(tmp_path)
    FakeTorchvision.calls = []
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "../shared/dta", "cpu")
    assert FakeTorchvision.calls == [False]  # never a download
    message = str(err.value)
    assert message.startswith("no mnist.npz and no torchvision MNIST/raw/ folder in ../shared/dta (resolved: "), message
    assert "re-run with TRIPLETBENCH_DOWNLOAD=1 (e.g. TRIPLETBENCH_DOWNLOAD=1 make ablation DATA_DIR=../shared/dta)" \
        in message and "\n" not in message


def bad(**changes: object) -> dict[str, object]:
    good: dict[str, object] = dict(arrays("mnist"))
    good.update(changes)
    return {key: value for key, value in good.items() if value is not None}


@pytest.mark.parametrize(
    ("contents", "problem"),
    [
        (b"not a zip file at all", "not a readable .npz"),
        (b"PK\x03\x04 truncated zip", "not a readable .npz"),
        (bad(y_test=None), "lacks key(s) y_test"),
        (bad(x_train=np.zeros((40, 28, 28), np.float32)), "x_train must be uint8"),
        (bad(x_train=np.zeros((40, 28, 28, 4), np.uint8)), "x_train must be uint8 N×H×W or N×H×W×3"),
        (bad(x_test=np.zeros((20, 784), np.uint8)), "x_test must be uint8"),
        (bad(y_train=np.zeros(39, np.int64)), "x_train has 40 images but y_train has 39 labels"),
        (bad(y_train=np.zeros((40, 1), np.int64)), "y_train must be a 1-D integer array"),
        (bad(y_test=np.zeros(20, np.float32)), "y_test must be a 1-D integer array"),
        (bad(y_test=-np.ones(20, np.int64)), "y_test has negative labels"),
        (bad(x_test=np.zeros((20, 32, 32), np.uint8)), "differ"),
        (bad(x_train=np.zeros((0, 28, 28), np.uint8), y_train=np.zeros(0, np.int64)), "x_train is empty"),
        (bad(x_train=np.array([None] * 40, dtype=object)), "not a readable .npz"),
    ],
)
def test_bad_npz_is_one_line_naming_the_folder(tmp_path: Path, contents: object, problem: str) -> None:
    path = tmp_path / "mnist.npz"
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    else:
        with path.open("wb") as f:
            np.savez(f, **contents)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path, "cpu")
    message = str(err.value)
    assert problem in message
    assert "\n" not in message and str(tmp_path) in message and "x_train, y_train, x_test, y_test" in message


def test_channel_stats_and_normalize_match_numpy() -> None:
    images = torch.randint(0, 256, (70, 3, 5, 6), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk=16)
    scaled = images.double().numpy() / 255
    np.testing.assert_allclose(mean.numpy(), scaled.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), scaled.std(axis=(0, 2, 3)), rtol=1e-5)
    out = normalize(images, mean, std)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(dim=(0, 2, 3), correction=0).numpy(), 1, atol=1e-4)


def test_augment_is_a_padded_crop_maybe_flipped() -> None:
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)  # no zeros: padding is recognisable
    out = augment(images, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    found = set()
    for image, result in zip(padded, out, strict=True):
        matches = [
            (dy, dx, flip)
            for dy in range(5) for dx in range(5) for flip in (False, True)
            if torch.equal(image[:, dy:dy + 8, dx:dx + 8].flip(2) if flip else image[:, dy:dy + 8, dx:dx + 8], result)
        ]
        assert matches
        found.update(matches)
    assert {flip for _, _, flip in found} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in found}) > 10
    again = augment(images, torch.Generator().manual_seed(0), padding=2)
    assert torch.equal(out, again)
