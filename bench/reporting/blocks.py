"""The report's document model: blocks (headings, paragraphs, items, tables, images), named tables and the
estimates in their cells, which Markdown and LaTeX each render in their own way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

ABSENT = "–"


@dataclass(frozen=True)
class Estimate:
    """A metric over seeds: its mean, the 95% Student-t half-width (None for one seed) and n seeds, at `digits`
    decimals; `bold` (the table's best) and `marked` (a detected difference) are for the LaTeX fragments."""

    mean: float
    half: float | None
    n: int
    digits: int = 4
    bold: bool = False
    marked: bool = False

    def __str__(self) -> str:
        """The Markdown form: 'mean ± half (n=3)', or 'mean (n=1)'."""
        mean = f"{self.mean:.{self.digits}f}"
        return f"{mean} (n=1)" if self.half is None else f"{mean} ± {self.half:.{self.digits}f} (n={self.n})"


Cell = str | Estimate


class Table(NamedTuple):
    """A named table: `name` is its fragment's file stem (tex/<name>.tex); `note` says what the numbers depend on
    (the caption of its fragment); `paper`, where given, is the table its fragment shows instead (the headline's
    compact form)."""

    name: str
    header: list[str]
    rows: list[list[Cell]]
    note: str = ""
    paper: Table | None = None


Block = tuple[str, Any]
