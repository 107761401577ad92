"""The pilot's table (issue 12): each pilot trial's validation MAP@R at every checkpoint and its plateau gap, from
the records in a folder (default: this one; reports/plateau/ holds the longer CIFAR-10 runs). Validation only: the
pilot chooses, so its test metrics are not shown (they stay in the records).

Run from the repository root:  python reports/pilot/summarize.py [FOLDER] > FOLDER/summary.md
Intermediate checkpoints are on evaluation subsets unless the trial evaluated whole sets throughout
(eval_gallery = eval_queries = 0); the final checkpoint is always on the whole sets, so only final values compare
across trials.
"""

import json
import sys
from pathlib import Path

folder = Path(sys.argv[1] if len(sys.argv) > 1 else "reports/pilot")
if not sorted(folder.glob("*.json")):
    sys.exit(f"summarize.py: error: no trial records (*.json) in {folder}")

print("| trial | schedule | lr | samples | val MAP@R per checkpoint | final val MAP@R | plateau gap | wall s |")
print("|---|---|---|---|---|---|---|---|")
for path in sorted(folder.glob("*.json")):
    record = json.loads(path.read_text())
    config, final, history = record["config"], record["final"], record["history"]
    whole = config["eval_gallery"] == 0 and config["eval_queries"] == 0
    curve = " ".join(f"{c['val_map_at_r']:.3f}" for c in history) + (" (all whole sets)" if whole else "")
    gap = final.get("plateau_gap")
    gap_text = f"{gap:+.4f}" if gap is not None else f"{final['val_map_at_r'] - history[-2]['val_map_at_r']:+.4f}"
    schedule = config.get("lr_schedule", "constant")  # the first pilot trial predates the key
    print(f"| {path.stem} | {schedule} | {final['lr']:g} | {final['samples_seen']} | {curve} | "
          f"{final['val_map_at_r']:.4f} | {gap_text} | {final['elapsed_seconds']:.0f} |")
