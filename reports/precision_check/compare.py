"""bf16 against fp32 on MNIST (issue 12): the cpu grid's cell batch-all, margin 0.2, B 256, seeds 0-2 (bf16 autocast,
from results/cpu/records/) against the same three trials run in fp32 (this folder, commands.txt).

Run from the repository root:  python reports/precision_check/compare.py > reports/precision_check/compare.md
Per metric: each precision's mean ± 95% t half-width over the seeds, the per-seed differences (bf16 - fp32) and a
two-sided paired t-test; and the seed-to-seed spread (sample std) within each precision, which the difference is
to be read against.
"""

import json
from pathlib import Path

from bench.reporting.stats import paired_p, t_interval

CELL = {"dataset": "mnist", "loss": "batch-all", "margin": 0.2, "batch_size": 256}
METRICS = ("map_at_r", "knn_accuracy", "precision_at_1", "val_map_at_r")  # speed: the step benchmark (quiet)


def finals(folder: Path, precision: str) -> dict[int, dict]:
    """seed -> final checkpoint of the cell's trials in `folder` whose recorded precision is `precision`."""
    found = {}
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        config = record.get("config", {})
        if record.get("kind") != "baseline" and all(config.get(k) == v for k, v in CELL.items()) \
                and record["final"].get("precision") == precision:
            found[int(config["seed"])] = record["final"]
    return found


bf16 = finals(Path("results/cpu/records"), "bf16")
fp32 = finals(Path("reports/precision_check"), "fp32")
seeds = sorted(bf16.keys() & fp32.keys())
print(f"Cell {CELL}, seeds {seeds} (bf16: results/cpu/records; fp32: reports/precision_check).\n")
print("| metric | bf16 | fp32 | bf16 − fp32 per seed | paired p | seed std bf16 / fp32 |")
print("|---|---|---|---|---|---|")
for metric in METRICS:
    a, b = ({s: float(runs[s][metric]) for s in seeds} for runs in (bf16, fp32))
    ia, ib = t_interval(list(a.values())), t_interval(list(b.values()))
    p, _ = paired_p(a, b)
    diffs = ", ".join(f"{a[s] - b[s]:+.4f}" for s in seeds)
    print(f"| {metric} | {ia.mean:.4f} ± {ia.ci95:.4f} | {ib.mean:.4f} ± {ib.ci95:.4f} | {diffs} | {p:.3f} | "
          f"{ia.std:.4f} / {ib.std:.4f} |")
