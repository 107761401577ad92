"""Data fingerprints: content, not path or mtime, decides; the cache is used only while the files are unchanged."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

import bench.experiment.fingerprint as fp
from bench.engine.data import DataError
from bench.engine.synthetic import write_synthetic


def test_the_fingerprint_is_the_content_and_the_cache_follows_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    npz = write_synthetic(tmp_path / "a", "mnist", n_train=50, n_test=20)
    monkeypatch.setenv(fp.CACHE_ENV, str(tmp_path / "cache"))
    first = fp.fingerprint("mnist", npz.parent)
    assert len(first) == 16 and int(first, 16) >= 0
    cache = json.loads((tmp_path / "cache" / fp.CACHE_NAME).read_text())
    stat = npz.stat()
    assert cache == {f"mnist {npz.parent.resolve()}": {"files": [["mnist.npz", stat.st_size, stat.st_mtime_ns]],
                                                       "sha256": first}}
    assert sorted(path.name for path in npz.parent.iterdir()) == ["mnist.npz"]  # nothing in the data folder

    copy = write_synthetic(tmp_path / "b", "mnist", n_train=50, n_test=20)
    assert fp.fingerprint("mnist", copy.parent) == first  # another path and mtime, the same content

    calls = []
    real_hash = fp.content_hash
    monkeypatch.setattr(fp, "content_hash", lambda *args: calls.append(args) or real_hash(*args))
    assert fp.fingerprint("mnist", npz.parent) == first and calls == []  # from the cache
    os.utime(npz, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert fp.fingerprint("mnist", npz.parent) == first and len(calls) == 1  # touched: hashed again

    arrays = dict(np.load(npz))
    arrays["y_train"] = arrays["y_train"].copy()
    arrays["y_train"][[0, 1]] = arrays["y_train"][[1, 0]] if arrays["y_train"][0] != arrays["y_train"][1] else [0, 1]
    np.savez(npz, **arrays)
    changed = fp.fingerprint("mnist", npz.parent)
    assert changed != first and len(calls) == 2
    assert json.loads(fp.cache_file().read_text())[f"mnist {npz.parent.resolve()}"]["sha256"] == changed


def test_an_unwritable_cache_is_skipped_and_bad_data_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    npz = write_synthetic(tmp_path, "mnist", n_train=50, n_test=20)
    expected = fp.content_hash("mnist", tmp_path)
    monkeypatch.setenv(fp.CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "cache" / fp.CACHE_NAME).mkdir(parents=True)  # cannot be written, even by root
    assert fp.fingerprint("mnist", tmp_path) == expected
    assert not any((tmp_path / "cache" / fp.CACHE_NAME).iterdir())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache", "mnist.npz"]
    npz.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        fp.fingerprint("mnist", tmp_path)
