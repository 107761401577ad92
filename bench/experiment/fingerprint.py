"""Data fingerprints: a content hash of a data set's arrays, so that a trial's identity includes its data.

fingerprint(name, data_dir) = the first 16 hex characters of the sha256 over x_train, y_train, x_test, y_test
as bench.engine.data.load_dataset returns them (uint8 N×C×H×W images, int64 labels; shape and dtype hashed too),
so the same images give the same fingerprint whether they come as <name>.npz or as torchvision's folder.

Hashing needs the whole set in memory, so the result is cached in the user's cache folder (cache_file(): never in
the data folder, which may be read-only or shared), keyed by the set and the data folder's resolved path, and valid
for the size and mtime (ns) of every file the set was read from; a changed file recomputes it. Where the cache
cannot be written it is skipped and the fingerprint computed each time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from bench.engine.data import load_dataset
from bench.engine.datasets import DATASETS
from bench.engine.files import write_text

CACHE_NAME = "fingerprints.json"
CACHE_ENV = "TRIPLETBENCH_CACHE"  # the cache folder; default $XDG_CACHE_HOME/tripletbench or ~/.cache/tripletbench


def cache_file() -> Path:
    """Where fingerprints are cached: CACHE_NAME in $TRIPLETBENCH_CACHE, else in $XDG_CACHE_HOME/tripletbench, else
    in ~/.cache/tripletbench."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = os.environ.get(CACHE_ENV) or home / "tripletbench"
    return Path(folder) / CACHE_NAME


def source_files(name: str, data_dir: Path) -> list[Path]:
    """The files a data set is read from: <name>.npz if present, else every file of torchvision's folder."""
    npz = data_dir / f"{name}.npz"
    if npz.is_file():
        return [npz]
    if DATASETS[name].folder is None:
        return []
    folder = data_dir / DATASETS[name].folder.rstrip("/")
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else []


def _stamp(files: list[Path], data_dir: Path) -> list[list[Any]]:
    """[[relative path, size, mtime_ns], ...]: what the cache entry is valid for."""
    return [[str(path.relative_to(data_dir)), (st := path.stat()).st_size, st.st_mtime_ns] for path in files]


def content_hash(name: str, data_dir: str | Path) -> str:
    """16 hex characters of the sha256 of the loaded arrays (raises bench.engine.data.DataError on bad data)."""
    digest = hashlib.sha256()
    for array in load_dataset(name, data_dir, "cpu"):
        digest.update(f"{tuple(array.shape)} {array.dtype};".encode())
        digest.update(memoryview(array.contiguous().numpy()).cast("B"))
    return digest.hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def fingerprint(name: str, data_dir: str | Path) -> str:
    """The data set's content fingerprint, from the cache when its files are unchanged (DataError on bad data)."""
    data_dir = Path(data_dir)
    files = source_files(name, data_dir)
    stamp = _stamp(files, data_dir) if files else None
    cache_path, key = cache_file(), f"{name} {data_dir.resolve()}"
    entry = _read_cache(cache_path).get(key)
    if stamp and isinstance(entry, dict) and entry.get("files") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    value = content_hash(name, data_dir)
    if stamp is None and (files := source_files(name, data_dir)):  # a download has just created them
        stamp = _stamp(files, data_dir)
    if stamp:
        cache = {**_read_cache(cache_path), key: {"files": stamp, "sha256": value}}
        with contextlib.suppress(OSError):  # a cache that cannot be written: none
            write_text(cache_path, json.dumps(cache, indent=1) + "\n")
    return value
