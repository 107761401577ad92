"""The report as one pure function: records (bench/reporting/frame.py) to files.

bench.reporting.stats.summarize -> bench.reporting.tables (summary.csv, systems.csv, summary.md, summary.tex,
tex/*.tex fragments), bench.reporting.plots (plots/<experiment>/*.png) and bench.reporting.claims (claims.md: the
sources' claims tested on the reference runs). The same inputs give the same bytes
whatever the file order or PYTHONHASHSEED.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.engine.files import write_text
from bench.reporting import claims, plots, stats, systems, tables
from bench.reporting.frame import Records, load_records, load_systems
from losses import CONTROLS, LOSSES


def write_report(records: Records, reports_dir: Path | str, isolated: systems.Systems | None = None) -> list[Path]:
    """Write summary.csv, systems.csv, summary.md, summary.tex, tex/*.tex, plots/<experiment>/*.png and claims.md;
    the paths written. `isolated` is the step benchmark (load_systems) behind the systems table; None states there
    is none."""
    reports_dir = Path(reports_dir)
    summary = stats.summarize(records.checkpoints, records.grids, (*LOSSES, *CONTROLS))
    figures: dict[str, dict[str, Any]] = {}
    points = None
    if isolated is not None:
        frame = pd.DataFrame(list(isolated.rows), columns=list(systems.ROW_COLUMNS))
        frame = frame[frame["compile"].isin(["none", ""])]
        frame = frame.assign(**{column: pd.to_numeric(frame[column], errors="coerce") for column in systems.NUMERIC})
        caption = (f"{isolated.source}: {tables.systems_hardware(isolated)}, commit {isolated.info('git_commit')}, "
                   f"{isolated.info('date')}; median of {isolated.info('steps')} steps")
        points = (frame, caption)
    reports_dir.mkdir(parents=True, exist_ok=True)
    written = [tables.write_csv(summary, reports_dir / "summary.csv"),
               systems.write_csv(isolated, reports_dir / "systems.csv")]
    for experiment in sorted(records.grids):  # each experiment's figures saved (and closed) before the next's
        trials = records.checkpoints[records.checkpoints.experiment == experiment]
        cells = summary[summary.experiment == experiment]
        citation = stats.citation(records.grids[experiment], cells, trials[trials.kind == "trial"])
        figures[experiment] = plots.make_plots(trials, cells, (*LOSSES, *CONTROLS), citation, points)
        written += plots.save(figures[experiment], reports_dir / "plots" / experiment)
    document = tables.document(records.checkpoints, records.grids, summary, figures, isolated)
    written += tables.write_documents(document, reports_dir)
    final = stats.final_rows(records.checkpoints)
    text = claims.markdown(claims.claims(summary, final), records.checkpoints.trial_id.nunique(), summary, final)
    written.append(write_text(reports_dir / "claims.md", text))
    _remove_stale(reports_dir, written)
    return written


def _remove_stale(reports_dir: Path, written: list[Path]) -> None:
    """Delete the files under tex/ and plots/ (the report's own folders) that this report did not write, and the
    folders left empty: a fragment of an experiment now complete or left out must not outlive its numbers."""
    kept = {path.resolve() for path in written}
    for folder in (reports_dir / "tex", reports_dir / "plots"):
        for path in sorted(folder.rglob("*"), reverse=True) if folder.is_dir() else []:
            if path.is_file() and path.resolve() not in kept:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def build_report(results_dir: Path | str, reports_dir: Path | str,
                 systems_path: Path | str | None = None) -> list[Path]:
    """load_records(results_dir) and load_systems, then write_report into reports_dir; the paths written."""
    return write_report(load_records(results_dir), reports_dir, load_systems(reports_dir, systems_path))
