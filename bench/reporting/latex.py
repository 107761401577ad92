"""The report in LaTeX: \\input-able booktabs fragments, the whole summary.tex, and the compile check of
`make tex-check`.

A fragment is a float with its caption and label: a table with a compact form (the headline) is a `table*`
that fits a two-column article's text width; every other table is a `longtable` that breaks across the pages of a
one-column landscape page. Numeric columns are right-aligned; the caption states the cells' n once and a cell with
another n says its own; an Estimate marked bold or dagger carries it (the headline's best mean, a detected
difference). ASCII only, so pdflatex takes it as it is.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import textwrap
from collections import Counter
from pathlib import Path

from bench.reporting.blocks import ABSENT, Block, Cell, Estimate, Table

TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
       "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--", "−": "$-$", ">": r"$>$",
       "<": r"$<$", "≥": r"$\geq$", "≤": r"$\leq$", "≈": r"$\approx$", "×": r"$\times$", "·": r"$\cdot$",
       "μ": r"$\mu$", "δ": r"$\delta$", "χ": r"$\chi$", "Φ": r"$\Phi$", "√": r"$\surd$", "∫": r"$\int$",
       "²": r"$^2$", "→": r"$\rightarrow$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "†": r"$^\dagger$",
       "★": r"$\star$", "Δ": r"$\Delta$", "…": r"\ldots{}"}
ASCII = {"±": "+/-", "≈": "~", "≥": ">=", "≤": "<=", "–": "-", "−": "-", "μ": "mu", "δ": "delta", "χ": "chi",
         "Φ": "Phi", "×": "x", "·": ".", "√": "sqrt", "∫": "integral", "²": "^2", "→": "->", "↓": "v", "↑": "^",
         "†": "+", "★": "*", "Δ": "Delta", "…": "..."}
SLACK_PT = 3.0  # an overfull box wider than this fails the compile check
LONG_TEXT = 48  # the one text column with a longer cell wraps in a p column of 0.3 \linewidth
WRAP_TEXT = 20  # otherwise a text column with a longer cell (a variant's label, a comparison's cell) wraps at 7em
WIDE = 14  # a longtable of more columns is set in \tiny, else \scriptsize
PREAMBLES = {  # per fragment kind: the article the compile check sets it in, as a user's paper would
    "table*": r"\documentclass[twocolumn,10pt]{article}\usepackage[letterpaper,margin=0.75in]{geometry}",
    "longtable": r"\documentclass[10pt]{article}\usepackage[a4paper,landscape,margin=1.5cm]{geometry}",
}
PACKAGES = r"\usepackage{booktabs,longtable}"


def tex(text: str) -> str:
    """text with LaTeX's special characters escaped, `code` in \\texttt; ASCII only (a character the report does
    not write itself, as in a failure's reason, becomes '?')."""
    text = re.sub("|".join(map(re.escape, TEX)), lambda match: TEX[match.group()], text)
    text = re.sub(r"`([^`]*)`", r"\\texttt{\1}", text)
    return text.encode("ascii", "replace").decode("ascii")


def ascii_text(text: str) -> str:
    """text with the report's non-ASCII symbols spelled in ASCII (for LaTeX comments)."""
    return "".join(ASCII.get(c, c) for c in text).encode("ascii", "replace").decode("ascii")


def _number(value: float, digits: int) -> str:
    text = f"{value:.{digits}f}"
    return "$-$" + text[1:] if text.startswith("-") else text


def common_n(rows: list[list[Cell]]) -> int | None:
    """The n of most of a table's estimates (the larger on a tie); None without estimates."""
    counts = Counter(cell.n for row in rows for cell in row if isinstance(cell, Estimate))
    return max(counts, key=lambda n: (counts[n], n)) if counts else None


def cell_tex(cell: Cell, n: int | None) -> str:
    """One cell: an Estimate as 'mean $\\pm$ half' (the bold mean, a dagger that takes no width, '(n=k)' where k is
    not `n`; one seed keeps the width of a half-width, so that means align)."""
    if not isinstance(cell, Estimate):
        return tex(cell)
    mean = _number(cell.mean, cell.digits)
    text = rf"\textbf{{{mean}}}" if cell.bold else mean
    half = _number(cell.half if cell.half is not None else 0.0, cell.digits)
    text += rf" $\pm$ {half}" if cell.half is not None else rf"\phantom{{ $\pm$ {half}}}"
    if cell.marked:
        text += r"\rlap{$^\dagger$}"
    return text + (f" (n={cell.n})" if n is not None and cell.n != n else "")


def row_tex(row: list[Cell], n: int | None) -> str:
    """One row; when all its estimates share an n other than `n`, the row's first cell says it once."""
    own = {cell.n for cell in row if isinstance(cell, Estimate)}
    if len(own) == 1 and n not in own and not isinstance(row[0], Estimate):
        (count,) = own
        return " & ".join([tex(f"{row[0]} (n={count})"), *(cell_tex(c, None) for c in row[1:])]) + r" \\"
    return " & ".join(cell_tex(c, n) for c in row) + r" \\"


def _numeric(cell: Cell) -> bool:
    if isinstance(cell, Estimate) or cell == ABSENT:
        return True
    try:
        float(cell.split(" (")[0])
    except ValueError:
        return False
    return True


def columns(table: Table) -> str:
    """The column spec: r for numeric columns, l for short text; a text column with a cell over WRAP_TEXT characters
    wraps in a p column: of 0.3 \\linewidth when it is the only one, a cell passes LONG_TEXT (a failure's
    reason) and the table has at most WIDE columns, else of 7em, so that the columns share the page."""
    longest = [max((len(str(row[index])) for row in table.rows), default=0) for index in range(len(table.header))]
    numeric = [all(_numeric(row[index]) for row in table.rows) for index in range(len(table.header))]
    wrapped = [i for i, (width, number) in enumerate(zip(longest, numeric, strict=True))
               if not number and width > WRAP_TEXT]
    spec = []
    for index, (width, number) in enumerate(zip(longest, numeric, strict=True)):
        if number:
            spec.append("r")
        elif index not in wrapped:
            spec.append("l")
        elif len(wrapped) == 1 and width > LONG_TEXT and len(table.header) <= WIDE:
            spec.append(r"p{0.3\linewidth}")
        else:
            spec.append(r"p{7em}")
    return "".join(spec)


def caption(table: Table, n: int | None) -> str:
    """The caption: the table's note, then the cells' n once."""
    cells = f" Each cell: n = {n} seeds, unless its row or the cell states its own." if n is not None else ""
    return tex(table.note) + cells


def _lines(table: Table, n: int | None) -> tuple[str, list[str]]:
    header = " & ".join(tex(h) for h in table.header) + r" \\"
    return header, [row_tex(row, n) for row in table.rows]


def body(table: Table) -> list[str]:
    """The float of a table (its `paper` form where it has one): a table* or a longtable, caption and label."""
    shown = table.paper or table
    n = common_n(shown.rows)
    header, rows = _lines(shown, n)
    label = f"\\label{{tab:{table.name}}}"
    if table.paper is not None:
        return [r"\begin{table*}[!htbp]", r"\centering\small", f"\\caption{{{caption(shown, n)}}}{label}\\smallskip",
                f"\\begin{{tabular}}{{{columns(shown)}}}", r"\toprule", header, r"\midrule", *rows, r"\bottomrule",
                r"\end{tabular}", r"\end{table*}"]
    size = r"\tiny" if len(shown.header) > WIDE else r"\scriptsize"
    return [f"{{{size}\\setlength{{\\tabcolsep}}{{2pt}}\\setlength{{\\LTcapwidth}}{{\\linewidth}}",
            f"\\begin{{longtable}}{{{columns(shown)}}}", f"\\caption{{{caption(shown, n)}}}{label}\\\\",
            r"\toprule", header, r"\midrule", r"\endfirsthead", r"\toprule", header, r"\midrule", r"\endhead",
            *rows, r"\bottomrule", r"\end{longtable}}"]


def kind(table: Table) -> str:
    """'table*' or 'longtable': the float a table's fragment is."""
    return "table*" if table.paper is not None else "longtable"


def fragment(table: Table) -> str:
    """An \\input-able fragment of one table: what it needs and its note as comments, then its float."""
    needs = ("a two-column article's text width" if kind(table) == "table*"
             else "a one-column landscape page (or \\textwidth of about 25 cm)")
    shown = table.paper or table
    note = textwrap.wrap(ascii_text(shown.note), 110) if shown.note else []
    return "\n".join([f"% {table.name}: made by python -m bench.report; needs {PACKAGES}; a {kind(table)} "
                      f"sized for {needs}", *[f"% {line}" for line in note], *body(table), ""])


def document(blocks: list[Block]) -> str:
    """The blocks as a whole LaTeX document (one-column landscape; each table as its fragment's float)."""
    lines = [PREAMBLES["longtable"], PACKAGES + r"\usepackage{graphicx}", r"\begin{document}", ""]
    for kind_, content in blocks:
        if kind_ in ("h1", "h2", "h3"):
            command = {"h1": "section*", "h2": "subsection*", "h3": "subsubsection*"}[kind_]
            lines += [f"\\{command}{{{tex(content)}}}", ""]
        elif kind_ == "p":
            lines += [tex(content), ""]
        elif kind_ == "items":
            lines += [r"\begin{description}", *[f"\\item[{tex(k)}] {tex(v)}" for k, v in content],
                      r"\end{description}", ""]
        elif kind_ == "image":
            lines += [f"\\noindent\\includegraphics[width=\\linewidth]{{{content.as_posix()}}}", ""]
        elif content.rows:
            lines += [*body(content), ""]
    return "\n".join([*lines, r"\end{document}", ""])


class TexError(Exception):
    """pdflatex is missing, or a fragment does not compile or overflows: one line naming it."""


def overfull(log: str) -> list[float]:
    """The widths (pt) of the overfull horizontal boxes in a pdflatex log."""
    return [float(width) for width in re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide\)", log)]


def check(folder: Path, slack_pt: float = SLACK_PT) -> list[str]:
    """Each fragment folder/*.tex compiled alone in the article of its kind (PREAMBLES); one line per fragment that
    fails or has an overfull box wider than slack_pt. TexError when pdflatex or a package is missing."""
    if shutil.which("pdflatex") is None:
        raise TexError("pdflatex not found (Debian: apt-get install texlive-latex-base texlive-latex-recommended)")
    fragments = sorted(Path(folder).glob("*.tex"))
    if not fragments:
        raise TexError(f"no fragments (*.tex) in {folder}")
    problems = []
    with tempfile.TemporaryDirectory(prefix="tripletbench-tex-") as work:
        for path in fragments:
            float_kind = "table*" if r"\begin{table*}" in path.read_text() else "longtable"
            main = Path(work) / "main.tex"
            main.write_text("\n".join([PREAMBLES[float_kind], PACKAGES, r"\begin{document}",
                                       f"\\input{{{path.resolve().as_posix()}}}", r"\end{document}", ""]))
            run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "main.tex"], cwd=work,
                                 capture_output=True, text=True, timeout=120)
            log = (Path(work) / "main.log").read_text(errors="replace") if (Path(work) / "main.log").exists() else ""
            missing = re.search(r"File `([^']*)' not found", log)
            if missing:
                raise TexError(f"{path}: a LaTeX package is missing: {missing.group(1)}")
            if run.returncode:
                error = next((line for line in log.splitlines() if line.startswith("!")), "pdflatex failed")
                problems.append(f"{path}: does not compile: {error}")
                continue
            wide = [w for w in overfull(log) if w > slack_pt]
            if wide:
                problems.append(f"{path}: {len(wide)} overfull box(es), up to {max(wide):.1f} pt too wide "
                                f"(allowed {slack_pt:g} pt) in a {float_kind}")
    return problems
