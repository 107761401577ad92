"""`make bench` at tiny sizes: the outputs and their rows and columns, and the OOM, timeout and skip paths."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.loss_benchmark import (
    COLUMNS,
    HAS_ST,
    IMPLS,
    MARGIN,
    OVERHEAD_COLUMNS,
    PEERS,
    SMOKE,
    Point,
    add_ratios,
    main,
    run_grid,
    st_loss,
    targets,
)
from losses import LOSSES

STATUSES = {"ok", "OOM", "timeout", "skipped", "error"}


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder a --smoke run wrote into; it already held a file that must survive."""
    out = tmp_path_factory.mktemp("reports")
    (out / "other_report.md").write_text("not the benchmark's")
    assert main(["--smoke", "--out", str(out)]) == 0
    return out


def test_smoke_writes_every_output_and_leaves_other_files(smoke_out: Path) -> None:
    names = {path.name for path in smoke_out.iterdir()}
    assert names == {"other_report.md", "loss_benchmark.csv", "loss_benchmark_overhead.csv", "loss_benchmark.md",
                     "loss_benchmark.png"}
    assert (smoke_out / "other_report.md").read_text() == "not the benchmark's"
    assert (smoke_out / "loss_benchmark.png").read_bytes().startswith(b"\x89PNG")


def test_smoke_table_has_one_row_per_point_and_the_ratio_columns(smoke_out: Path) -> None:
    table = pd.read_csv(smoke_out / "loss_benchmark.csv", keep_default_na=False, na_values=[""])
    ratios = [f"{kind}_vs_{peer.replace('-', '_')}" for peer in PEERS for kind in ("speedup", "memory_ratio")]
    assert list(table.columns) == [*COLUMNS, *ratios]
    assert len(table) == len(IMPLS) * len(SMOKE["batch_sizes"]) * len(SMOKE["classes"])
    assert not table.duplicated(["label", "batch_size", "classes"]).any()
    assert set(table["status"]) <= STATUSES - {"error"}
    ours = table[table["impl"] == "tripletbench"]
    assert set(ours["loss"]) == set(LOSSES) and (ours["status"] == "ok").all()
    assert (ours["median_ms"] > 0).all() and (ours["peak_memory_mib"] >= 0).all()
    assert (ours["peak_absolute_mib"] >= ours["baseline_mib"]).all()
    # The dense B⁴ quadruplet at B=32 needs 4 MiB for its term tensor alone: over the smoke cap, so not run.
    quadruplet = table[(table["label"] == "dense/quadruplet") & (table["batch_size"] == 32)]
    assert (quadruplet["status"] == "OOM").all() and quadruplet["note"].str.startswith("est.").all()
    assert quadruplet["median_ms"].isna().all()


def test_smoke_ratios_divide_the_matching_rows(smoke_out: Path) -> None:
    table = pd.read_csv(smoke_out / "loss_benchmark.csv")
    ok = table[table["status"] == "ok"].set_index(["label", "batch_size", "classes"])
    checked = 0
    for (name, batch_size, classes), row in ok.iterrows():
        dense = (name.replace("tripletbench/", "dense/"), batch_size, classes)
        if name.startswith("tripletbench/") and dense in ok.index:
            assert row["speedup_vs_dense"] == pytest.approx(ok.loc[dense, "median_ms"] / row["median_ms"], rel=1e-4)
            checked += 1
        peer = ("pml-all-triplets", batch_size, classes)
        if name.startswith("tripletbench/") and peer in ok.index:
            assert row["speedup_vs_pml_all_triplets"] == pytest.approx(
                ok.loc[peer, "median_ms"] / row["median_ms"], rel=1e-4)
    assert checked > 0
    peers = table[table["impl"] != "tripletbench"]
    assert peers.filter(like="_vs_").isna().all().all()


def test_smoke_markdown_and_overhead(smoke_out: Path) -> None:
    report = (smoke_out / "loss_benchmark.md").read_text()
    assert f"Command: `python -m bench.loss_benchmark --smoke --out {smoke_out}`" in report
    for section in ("## Targets", "## Headline", "## Largest batch size reached", "## Loss overhead",
                    "| torch |", "| hardware |", "(loss_benchmark.png)"):
        assert section in report
    overhead = pd.read_csv(smoke_out / "loss_benchmark_overhead.csv")
    assert list(overhead.columns) == list(OVERHEAD_COLUMNS)
    assert list(overhead["loss"]) == list(LOSSES) and (overhead["status"] == "ok").all()
    assert ((overhead["loss_share"] > 0) & (overhead["loss_ms"] > 0)).all()


def _points(label: str, batch_sizes: list[int], **caps: float) -> list[Point]:
    impl, loss = next((impl, loss) for impl, loss in IMPLS if label in (impl, f"{impl}/{loss}"))
    return [Point(impl, loss, b, 4, 16, "cpu", 1, caps.get("time_cap", 60.0), caps.get("memory_cap_mib", 1024.0))
            for b in batch_sizes]


def test_estimated_oom_is_recorded_without_running_and_larger_batches_are_skipped() -> None:
    rows = run_grid(_points("dense/batch-all", [64, 128], memory_cap_mib=0.5))
    assert [row["status"] for row in rows] == ["OOM", "skipped"]
    assert rows[0]["note"].startswith("est. ≥ 1 MiB > cap 0.5 MiB")
    assert rows[1]["note"] == "failed at B=64"


def test_allocation_beyond_the_cap_is_recorded_as_oom() -> None:
    # The B³ term tensor (512 MiB) fits the cap, but the dense loss needs about 2 GiB in all.
    (row,) = run_grid(_points("dense/batch-all", [512], memory_cap_mib=512.0))
    assert row["status"] == "OOM" and not row["note"].startswith("est.")


def test_a_point_past_the_time_cap_is_a_timeout_and_is_not_retried_larger() -> None:
    rows = run_grid(_points("dense/quadruplet", [64, 128], time_cap=0.05))
    assert [row["status"] for row in rows] == ["timeout", "skipped"]


@pytest.mark.skipif(not HAS_ST, reason="sentence-transformers is not installed (make bench installs the peers extra)")
def test_sentence_transformers_peers_compute_the_losses_they_stand_beside() -> None:
    embeddings = torch.nn.functional.normalize(torch.randn(48, 8, generator=torch.Generator().manual_seed(3)), dim=1)
    labels = torch.arange(48) % 6
    for loss in ("batch-all", "batch-hard"):  # by definition ours; semi-hard is TF Addons' (docs/pml.md)
        ours = LOSSES[loss](embeddings, labels, MARGIN)
        torch.testing.assert_close(st_loss(loss)(embeddings, labels), ours, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(st_loss("semi-hard")(embeddings, labels))


@pytest.mark.parametrize("hard_ms,quadruplet_ms", [(9.0, 19.0), (11.0, 21.0)])
def test_the_speed_targets_compare_the_matching_rows(hard_ms: float, quadruplet_ms: float) -> None:
    """batch-hard against pml-batch-hard at every B (the worst B decides) and quadruplet against batch-all at 4096."""
    rows = [("tripletbench", "batch-hard", 128, 5.0), ("pml-batch-hard", "pml-batch-hard", 128, 6.0),
            ("tripletbench", "batch-hard", 4096, hard_ms), ("pml-batch-hard", "pml-batch-hard", 4096, 10.0),
            ("tripletbench", "batch-all", 4096, 10.0), ("tripletbench", "quadruplet", 4096, quadruplet_ms)]
    table = add_ratios(pd.DataFrame(
        [{"impl": impl, "loss": loss, "batch_size": b, "classes": 10, "median_ms": ms, "peak_memory_mib": 1.0,
          "status": "ok", "note": ""} for impl, loss, b, ms in rows]))
    verdicts = {name: (measured, verdict) for name, measured, verdict in targets(table, table.iloc[:0], "cpu")}
    hard = verdicts["CPU: batch-hard at or below pml-batch-hard's time at every B"]
    quadruplet = verdicts["CPU: quadruplet at B=4096 within 2× batch-all's time"]
    assert hard[0] == f"worst B=4096, 10 classes: {hard_ms / 10:.2f}× its time"
    assert quadruplet[0] == f"worst 10 classes: {quadruplet_ms / 10:.2f}× its time"
    assert hard[1].startswith("met" if hard_ms <= 10 else "**missed**")
    assert quadruplet[1].startswith("met" if quadruplet_ms <= 20 else "**missed**")
