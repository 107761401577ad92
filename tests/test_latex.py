"""bench.reporting.latex: escaping that keeps every symbol the report writes (a minus sign above all), the headline's
paper form (n once, bold best, a dagger for detected differences, aligned numbers), and the compile check that
fails on an overfull fragment (skipped where pdflatex is absent)."""

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.report import main
from bench.reporting import latex, stats
from bench.reporting.blocks import Estimate, Table

ROOT = Path(__file__).resolve().parent.parent
HAS_LATEX = shutil.which("pdflatex") is not None and not subprocess.run(
    ["kpsewhich", "booktabs.sty"], capture_output=True).returncode
needs_latex = pytest.mark.skipif(not HAS_LATEX, reason="pdflatex or booktabs.sty absent (Debian: apt-get install "
                                                        "texlive-latex-base texlive-latex-recommended)")


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reports = tmp_path_factory.mktemp("reports")
    assert main(["--smoke", "--reports", str(reports)]) == 0
    return reports


def test_every_symbol_the_report_writes_survives_in_latex() -> None:
    symbols = {c for path in (ROOT / "bench" / "reporting").glob("*.py") for c in path.read_text() if ord(c) > 127}
    for symbol in symbols:
        assert latex.tex(symbol).isascii() and "?" not in latex.tex(symbol), symbol
        assert "?" not in latex.ascii_text(symbol), symbol
    assert latex.tex("−0.0025 [−0.0044, +0.0007]") == "$-$0.0025 [$-$0.0044, +0.0007]"  # was '?0.0025'


def test_an_estimate_reads_as_its_numbers() -> None:
    assert str(Estimate(0.98531, 0.00127, 3)) == "0.9853 ± 0.0013 (n=3)" and str(Estimate(0.3, None, 1)) == \
        "0.3000 (n=1)"
    assert latex.cell_tex(Estimate(0.98531, 0.00127, 3, bold=True, marked=True), 3) == \
        r"\textbf{0.9853} $\pm$ 0.0013\rlap{$^\dagger$}"
    assert latex.cell_tex(Estimate(-0.0004, 0.0037, 2), 3) == r"$-$0.0004 $\pm$ 0.0037 (n=2)"
    assert latex.cell_tex(Estimate(0.3, None, 1), None) == r"0.3000\phantom{ $\pm$ 0.0000}"
    table = [["pixels", Estimate(0.3, None, 1), Estimate(0.9, None, 1)], ["a", Estimate(0.5, 0.1, 3), "–"],
             ["b", Estimate(0.4, 0.1, 3), Estimate(0.2, 0.1, 2)]]
    assert latex.common_n(table) == 3
    lines = [latex.row_tex(row, 3) for row in table]
    assert lines[0].startswith("pixels (n=1) & 0.3000") and "(n=1)" not in lines[0].split("&", 1)[1]
    assert lines[2].endswith(r"0.2000 $\pm$ 0.1000 (n=2) \\")
    assert latex.columns(Table("t", ["loss", "x", "y"], table)) == "lrr"


def _fragment_rows(text: str) -> list[list[str]]:
    body = text[text.index(r"\midrule") + len(r"\midrule"):text.index(r"\bottomrule")]
    return [[cell.strip() for cell in line.rstrip("\\ ").split(" & ")] for line in body.strip().splitlines()]


def test_the_headline_fragment_is_paper_ready(reports: Path) -> None:
    text = (reports / "tex" / "full-headline-mnist-seen.tex").read_text()
    assert r"\begin{table*}" in text and r"\caption{" in text and r"\label{tab:full-headline-mnist-seen}" in text
    assert text.isascii() and r"\begin{tabular}{lrrrrr}" in text
    caption = text[text.index(r"\caption{"):text.index(r"\label")]
    assert caption.count("n = 3 seeds") == 2  # the experiment's design and the cells' n, each once
    assert "Budget mnist" in caption and "precision" in caption and "hardware" in caption
    rows = _fragment_rows(text)
    assert [r[0] for r in rows[:2]] == ["pixels (n=1)", "untrained"]
    assert not any("(n=" in cell for row in rows for cell in row[1:])
    with open(reports / "summary.csv", newline="") as handle:
        cells = [r for r in csv.DictReader(handle) if r["experiment"] == "full" and r["selected"] == "true"]
    by_loss = {row[0].removesuffix(" (ref.)"): row for row in rows[2:]}
    assert set(by_loss) == {c["loss"] for c in cells}
    for column, metric in ((3, "map_at_r"), (4, "knn_accuracy"), (5, "precision_at_1")):
        best = max(round(float(c[f"{metric}_mean"]), 4) for c in cells)
        for cell in cells:
            shown = by_loss[cell["loss"]][column]
            assert shown.startswith(r"\textbf{") == (round(float(cell[f"{metric}_mean"]), 4) == best), shown
            holm = cell.get(f"p_holm_{metric}") or "nan"
            assert shown.endswith(r"\rlap{$^\dagger$}") == (float(holm) < stats.ALPHA), (cell["loss"], shown)
    assert sum(row[0].endswith("(ref.)") for row in rows) == 1


def test_long_fragments_are_longtables_with_their_caption(reports: Path) -> None:
    text = (reports / "tex" / "full-grid.tex").read_text()
    assert r"\begin{longtable}" in text and r"\endhead" in text and r"\caption{Experiment full" in text
    spec = re.search(r"\\begin\{longtable\}\{([^}]*)\}", text).group(1)
    assert spec.startswith("lll") and "rrrr" in spec  # text left, numbers right


@needs_latex
def test_every_fragment_of_a_report_compiles_without_overflow(reports: Path) -> None:
    assert latex.check(reports / "tex") == []
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "summary.tex"], cwd=reports,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:]


@needs_latex
def test_the_check_names_an_overfull_fragment(reports: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "tex").mkdir()
    shutil.copy(reports / "tex" / "full-headline-mnist-seen.tex", tmp_path / "tex")
    wide = Table("too-wide", [f"column {i}" for i in range(40)], [[f"cell number {i}" for i in range(40)]], "note")
    (tmp_path / "tex" / "too-wide.tex").write_text(latex.fragment(wide))
    assert main(["--check-tex", "--reports", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "too-wide.tex: 3 overfull box(es)" in err[0] and "in a longtable" in err[0]
    assert err[1].endswith("1 of 2 fragments in " + str(tmp_path / "tex") + " fail")


def test_the_check_without_pdflatex_is_one_line(reports: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["--check-tex", "--reports", str(reports)]) == 2
    assert capsys.readouterr().err.strip() == ("python -m bench.report: error: pdflatex not found (Debian: apt-get "
                                               "install texlive-latex-base texlive-latex-recommended)")


def test_long_text_columns_wrap_and_share_the_page(tmp_path: Path) -> None:
    """A lone very long column (a failure's reason) takes 0.3 \\linewidth; several long ones (a comparison of four
    experiments, a variant's loss label) wrap at 7em each; short text stays l. With pdflatex: they compile."""
    reason = Table("reason", ["loss", "reason"], [["batch-all", "ray worker killed for memory at step 3; " * 2]])
    assert latex.columns(reason) == r"lp{0.3\linewidth}"
    cell = "0.4932 ± 0.0086 (n=3), m 0.1 B 64 [lr 0.001, normalize on]"
    comparison = Table("comparison", ["dataset", *(f"e{i}" for i in range(4))], [["cifar10", *[cell] * 4]])
    assert latex.columns(comparison) == "l" + r"p{7em}" * 4
    grid = Table("grid", ["loss", *(f"c{i}" for i in range(12))],
                 [["batch-hard-soft [lr 0.0001, normalize off]", *([Estimate(0.5, 0.01, 3)] * 12)]])
    assert latex.columns(grid) == r"p{7em}" + "r" * 12
    if shutil.which("pdflatex") is None:
        return
    (tmp_path / "tex").mkdir()
    for table in (reason, comparison):  # the comparison overflows a landscape page by ~100 pt in l columns
        (tmp_path / "tex" / f"{table.name}.tex").write_text(latex.fragment(table._replace(note="note")))
    assert latex.check(tmp_path / "tex") == []
