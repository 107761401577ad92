"""The one atomic write: a temporary file beside the target, flushed to disk, renamed into place.

A reader sees the old file or the whole new one, never a part: the content is written to
`.<name>.<pid>.<thread>.tmp` in the target's folder, fsync'ed, renamed over the target with os.replace,
and the folder is fsync'ed so that the rename survives a power loss. On any failure (a full disk, say)
the temporary file is removed and the target is left as it was. Records are strict JSON: non-finite
floats are written as null.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def finite(value: Any) -> Any:
    """`value` with non-finite floats replaced by None, recursively, so that it is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk where the OS allows opening a folder."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path | str, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call write(file) on a binary temporary file beside `path`, then make it `path` atomically and durably.

    An OSError (a full disk, a folder that cannot be written) is raised naming `path`, with the temporary file gone.
    """
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    finally:
        temp.unlink(missing_ok=True)
    _fsync_folder(path.parent)
    return path


def write_text(path: Path | str, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_atomic(path, lambda file: file.write(text.encode()))


def write_json(path: Path | str, obj: Any) -> Path:
    """Write `obj` as indented strict JSON (non-finite floats as null) to `path` atomically."""
    return write_text(path, json.dumps(finite(obj), indent=1, allow_nan=False) + "\n")


def save_npz(path: Path | str, **arrays: Any) -> Path:
    """numpy.savez of `arrays` to `path` atomically (built in memory first: the arrays written here are small)."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return write_atomic(path, lambda file: file.write(buffer.getvalue()))
