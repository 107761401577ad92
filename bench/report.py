"""`python -m bench.report --results DIR --reports DIR [--reference]` (or `--smoke`): tables and plots from a
results folder (every experiment in it; with --reference only the reference runs, as `make report` does).

Reads the records (bench/reporting/frame.py) and the isolated step benchmark when there is one (`--systems
PATH`, by default <reports>/step_benchmark.csv with its step_benchmark.json: the systems table) and writes the
report (bench/reporting/build.py). `--smoke` reports generated records (bench/reporting/fake_records.py) into
--reports, end to end. `--check-tex` (make tex-check) only compiles the LaTeX fragments already in REPORTS/tex.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench.cli import Parser
from bench.reporting import latex, systems
from bench.reporting.build import write_report
from bench.reporting.frame import ReportError, load_records, load_systems


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: exit code 0 after writing the report, 2 with one line on stderr on bad input."""
    parser = Parser(prog="python -m bench.report", description="Tables and plots from a results folder.")
    parser.add_argument("--results", default="results", help="a results folder or one experiment in it")
    parser.add_argument("--reports", default="reports", help="where to write (existing files are overwritten)")
    parser.add_argument("--systems", type=Path, default=None,
                        help="the isolated step benchmark's CSV for the systems table (default: "
                        f"REPORTS/{systems.DEFAULT_NAME} if it exists, as make bench writes it)")
    parser.add_argument("--reference", action="store_true",
                        help="only the reference experiments (a citable preset's run under its own name, as "
                        "results/cpu): what make report writes into the committed reports/")
    parser.add_argument("--smoke", action="store_true",
                        help="report generated records (bench.reporting.fake_records) instead of --results; seconds")
    parser.add_argument("--check-tex", action="store_true",
                        help="only compile every fragment REPORTS/tex/*.tex with pdflatex in the article it is sized "
                        f"for; exit 1 naming each that fails or overflows by more than {latex.SLACK_PT:g} pt")
    args = parser.parse_args(argv)
    if args.check_tex:
        return check_tex(Path(args.reports) / "tex")
    try:
        isolated = load_systems(args.reports, args.systems)
        if args.smoke:
            from bench.reporting.fake_records import write_smoke_results

            with tempfile.TemporaryDirectory(prefix="tripletbench-report-smoke-") as folder:
                records = load_records(write_smoke_results(Path(folder)))
                written = write_report(records, args.reports, isolated)  # inside: the t-SNE reads the embeddings
        else:
            records = load_records(args.results, reference=args.reference)
            written = write_report(records, args.reports, isolated)
    except (ReportError, OSError) as err:
        print(f"python -m bench.report: error: {err}", file=sys.stderr)
        return 2
    for folder in records.empty:
        print(f"report: {folder} left out: no trial record yet (a grid that has just started; its baselines come "
              "first)", file=sys.stderr)
    print(f"report: {len(written)} files from {records.checkpoints.trial_id.nunique()} records under {args.reports}",
          file=sys.stderr)
    return 0


def check_tex(folder: Path) -> int:
    """make tex-check: 0 when every fragment in folder compiles without an overfull box, 1 with one line per one
    that does not, 2 with one line when pdflatex or a package is missing."""
    try:
        problems = latex.check(folder)
    except latex.TexError as err:
        print(f"python -m bench.report: error: {err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"python -m bench.report: {problem}", file=sys.stderr)
    total = len(list(folder.glob("*.tex")))
    print(f"tex-check: {len(problems)} of {total} fragments in {folder} fail", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
