"""The isolated step benchmark (`make bench`: bench.step_benchmark) as the report's input for its systems table.

`load` reads step_benchmark.csv and the provenance written beside it (step_benchmark.json; for a benchmark
that predates it, the `- key: value` lines of step_benchmark.md), checks them and sorts the rows by dataset,
loss (the registry's order), batch size, precision and compile mode. The values stay the CSV's own strings,
so that systems.csv (`write_csv`) repeats the benchmark's numbers exactly. Nothing here measures anything.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.engine.files import write_text

DEFAULT_NAME = "step_benchmark.csv"
REQUIRED = ("dataset", "loss", "batch_size", "precision", "status", "samples_per_second", "peak_memory_mib")
NUMERIC = ("batch_size", "median_ms", "samples_per_second", "peak_memory_mib", "steps", "warmup",
           "forward_gflops_per_sample")
ROW_COLUMNS = ("dataset", "model", "loss", "batch_size", "precision", "compile", "device", "status", "note",
               "median_ms", "samples_per_second", "peak_memory_mib", "steps", "warmup", "forward_gflops_per_sample")
PROVENANCE_COLUMNS = ("hardware", "threads", "git_commit", "date")
CSV_COLUMNS = (*ROW_COLUMNS, *PROVENANCE_COLUMNS)
NOT_RECORDED = "not recorded"


class SystemsError(ValueError):
    """A step benchmark file that cannot be reported; the message is one line naming the file."""


@dataclass(frozen=True)
class Systems:
    """The benchmark's rows (strings, as in its CSV, sorted), its provenance and the CSV's file name."""

    rows: tuple[dict[str, str], ...]
    provenance: dict[str, str]
    source: str

    def info(self, key: str) -> str:
        """A provenance value, NOT_RECORDED when the benchmark did not write it."""
        value = self.provenance.get(key, "")
        return value if value not in ("", "None") else NOT_RECORDED


def _markdown_provenance(path: Path) -> dict[str, str]:
    """The `- key: value` lines and the `Command: ...` line of step_benchmark.md, up to its first table."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            break
        if line.startswith("Command: "):
            found["command"] = line.removeprefix("Command: ").strip("`")
        elif line.startswith("- ") and ": " in line:
            key, value = line[2:].split(": ", 1)
            found[key.strip()] = value.strip()
    return found


def _provenance(path: Path) -> dict[str, str]:
    meta, markdown = path.with_suffix(".json"), path.with_suffix(".md")
    try:
        if meta.is_file():
            found = json.loads(meta.read_text())
            if not isinstance(found, dict):
                raise SystemsError(f"{meta}: not a provenance object")
            return {str(key): "" if value is None else str(value) for key, value in found.items()}
        return _markdown_provenance(markdown) if markdown.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SystemsError(f"{meta if meta.is_file() else markdown}: unreadable ({' '.join(str(err).split())})") \
            from None


def _number(text: str) -> float:
    value = float(text)
    if math.isnan(value):
        raise ValueError(text)
    return value


def load(path: Path | str, order: tuple[str, ...]) -> Systems:
    """The benchmark at `path` (a step_benchmark.csv) with its provenance; SystemsError when it is missing, unreadable
    or not a step benchmark. `order` is the loss order (the registry's) the rows are sorted in."""
    path = Path(path)
    if not path.is_file():
        raise SystemsError(f"{path}: no such file (the step benchmark's CSV; make bench writes it)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SystemsError(f"{path}: unreadable ({' '.join(str(err).split())})") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [column for column in REQUIRED if column not in header]
    if missing:
        raise SystemsError(f"{path}: not a step benchmark CSV (missing {', '.join(missing)})")
    rows = []
    for line, raw in enumerate(reader, 2):
        if None in raw or None in raw.values():
            raise SystemsError(f"{path}: line {line} has {'more' if None in raw else 'fewer'} fields than the header")
        row = {column: raw.get(column, "") for column in ROW_COLUMNS}
        for column in NUMERIC:
            needed = column == "batch_size" or (row["status"] == "ok" and column in ("samples_per_second",
                                                                                      "peak_memory_mib"))
            try:
                if row[column] != "" or needed:
                    _number(row[column])
            except ValueError:
                raise SystemsError(f"{path}: line {line}: {column} {row[column]!r} is not a number") from None
        if float(row["batch_size"]) != int(float(row["batch_size"])):
            raise SystemsError(f"{path}: line {line}: batch_size {row['batch_size']!r} is not an integer")
        rows.append(row)
    if not rows:
        raise SystemsError(f"{path}: no measurements (a header only)")
    known = list(order)

    def key(row: dict[str, str]) -> tuple[Any, ...]:
        rank = (known.index(row["loss"]), "") if row["loss"] in known else (len(known), row["loss"])
        return row["dataset"], rank, float(row["batch_size"]), row["precision"], row["compile"]

    return Systems(tuple(sorted(rows, key=key)), _provenance(path), path.name)


def write_csv(systems: Systems | None, path: Path) -> Path:
    """systems.csv: the benchmark's rows with its hardware, threads, commit and date; a header only without one."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in systems.rows if systems else ():
        writer.writerow([*(row[column] for column in ROW_COLUMNS),
                         *(systems.provenance.get(column, "") for column in PROVENANCE_COLUMNS)])
    return write_text(path, buffer.getvalue())
