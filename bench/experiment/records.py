"""The record: one JSON file per finished trial or baseline, its schema, its builders and its one writer.

A record (docs/records.md has every field):
    {"trial_id", "kind": "trial" | "baseline", ["baseline": "pixels" | "untrained",] "experiment", "preset",
     "config", "status", "reason", "history": [checkpoint, ...], "final": the last checkpoint (or {}),
     "initial": the margin check {fraction_easy, fraction_semihard, fraction_hard, active_anchors,
     effective_margin} (None without one), "provenance", "embeddings": the .npz beside it (or None),
     "data": {"fingerprint"}}
`python -m bench.trial` writes the same record with experiment, preset and data None. Records are strict
JSON (non-finite floats as null) written atomically and durably (bench/engine/files.py); a record written once
is never rewritten. Records older than the "kind" field are trials unless their "kind" says "baseline".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.engine.config import STATUSES
from bench.engine.diagnostics import INITIAL_KEYS
from bench.engine.files import write_json

REQUIRED = ("trial_id", "experiment", "config", "status", "history")  # what the report cannot do without
# record["initial"] key -> the checkpoint key (and report column) it is lifted from
INITIAL_COLUMNS = {key.removeprefix("initial_"): key for key in INITIAL_KEYS}


class RecordError(ValueError):
    """A record file that cannot be read as a record; the message is one line naming the file."""


def initial_of(final: dict[str, Any]) -> dict[str, Any] | None:
    """record["initial"]: the final checkpoint's margin-check keys (INITIAL_COLUMNS), None when it has none."""
    if not any(column in final for column in INITIAL_COLUMNS.values()):
        return None
    return {key: final.get(column) for key, column in INITIAL_COLUMNS.items()}


def trial_record(
    trial_id: str, config: dict[str, Any], status: str, reason: str | None, history: list[dict[str, Any]],
    provenance: dict[str, Any], *, experiment: str | None = None, preset: str | None = None,
    embeddings: str | None = None, fingerprint: str | None = None,
) -> dict[str, Any]:
    """A trial's record from its resolved config, outcome, checkpoints and provenance (module docstring)."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; valid: {', '.join(STATUSES)}")
    final = history[-1] if history else {}
    return {
        "trial_id": trial_id, "kind": "trial", "experiment": experiment, "preset": preset, "config": config,
        "status": status, "reason": reason, "history": history, "final": final, "initial": initial_of(final),
        "provenance": provenance, "embeddings": embeddings,
        "data": None if fingerprint is None else {"fingerprint": fingerprint},
    }


def baseline_record(
    trial_id: str, baseline: str, config: dict[str, Any], final: dict[str, Any], provenance: dict[str, Any],
    fingerprint: str, *, experiment: str | None = None, preset: str | None = None,
) -> dict[str, Any]:
    """A baseline's record: its config (bench/experiment/baselines.py), final metrics as its one checkpoint."""
    return {
        "trial_id": trial_id, "kind": "baseline", "baseline": baseline, "experiment": experiment, "preset": preset,
        "config": config, "status": "ok", "reason": None, "history": [final], "final": final, "initial": None,
        "provenance": provenance, "embeddings": None, "data": {"fingerprint": fingerprint},
    }


def write_record(path: Path | str, record: dict[str, Any]) -> Path:
    """Write `record` to `path` (atomically and durably; non-finite floats as null)."""
    return write_json(Path(path), record)


def read_record(path: Path | str) -> dict[str, Any] | None:
    """The record at `path`, None when there is none (RecordError naming the file when it is damaged)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise RecordError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}: not valid JSON ({err}); a damaged record") from None
    if not isinstance(record, dict) or not all(key in record for key in ("trial_id", "config", "status")):
        raise RecordError(f"{path}: not a record (expected a JSON object with trial_id, config and status)")
    return record
