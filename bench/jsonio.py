"""Records as strict JSON: non-finite floats as null, written atomically."""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import Any


def finite(value: Any) -> Any:
    """`value` with non-finite floats replaced by None, recursively, so that it is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented strict JSON atomically: a temporary file beside `path`, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temp.write_text(json.dumps(finite(obj), indent=1, allow_nan=False) + "\n")
    os.replace(temp, path)
