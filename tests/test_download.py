"""A failed torchvision download leaves nothing behind that it created, and keeps what was there."""

from pathlib import Path
from urllib.error import URLError

import pytest

import bench.engine.data as data


class FailingDownload:
    """Like torchvision.datasets.MNIST with no network: creates MNIST/raw/ and a partial file, then fails."""

    def __init__(self, root: str, train: bool, download: bool) -> None:
        raw = Path(root) / "MNIST" / "raw"
        if download:
            raw.mkdir(parents=True, exist_ok=True)
            (raw / "train-images-idx3-ubyte.gz.part").write_bytes(b"partial")
            raise URLError("[Errno -3] Temporary failure in name resolution")
        raise RuntimeError("Dataset not found. You can use download=True to download it")


def test_a_failed_download_removes_what_it_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(data.TORCHVISION, "mnist", FailingDownload)
    monkeypatch.setenv(data.DOWNLOAD_ENV, "1")
    (tmp_path / "mine.txt").write_text("kept")
    with pytest.raises(data.DataError, match="download failed .*Temporary failure in name resolution"):
        data.load_dataset("mnist", tmp_path, "cpu")
    assert [path.name for path in tmp_path.iterdir()] == ["mine.txt"]
    with pytest.raises(data.DataError):
        data.load_dataset("mnist", tmp_path / "new", "cpu")
    assert not (tmp_path / "new").exists()
