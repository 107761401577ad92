"""`python -m bench.trial`: one trial from the command line, its record written as JSON.

    python -m bench.trial --dataset mnist --loss batch-all --margin 0.2 --batch-size 256 --budget-samples 30000
    python -m bench.trial --smoke

Every config key of bench/engine/config.py is a flag (dashes for underscores); the loop is bench/engine/train.py,
the record bench/experiment/records.py. Progress goes to stderr: the resolved setup, a bar on a terminal (tqdm)
or plain lines, and one line per checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cli import Parser, config_flags
from bench.engine.config import ConfigError, resolve
from bench.engine.data import DataError
from bench.engine.device import pick_device
from bench.engine.files import finite
from bench.engine.synthetic import write_synthetic
from bench.engine.train import Progress, run_trial
from bench.experiment.identity import record_name
from bench.experiment.provenance import provenance
from bench.experiment.records import trial_record, write_record

PROGRESS_SECONDS = 30.0  # plain progress lines: at every tenth of the steps, or after this long without one
REQUIRED = ("dataset", "loss", "margin", "batch_size", "budget_samples")
SMOKE = {"dataset": "mnist", "loss": "batch-all", "margin": 0.2, "batch_size": 32, "budget_samples": 256,
         "checkpoints": 2, "eval_gallery": 300, "eval_queries": 100}
RECORDS_DIR = Path("results") / "trials"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The CLI's arguments: a flag per config key (bench.cli.config_flags), --out, --json and --smoke."""
    p = Parser(prog="python -m bench.trial", description="Train and evaluate one trial.")
    config_flags(p, required=REQUIRED)
    p.add_argument("--out", help=f"write the trial's record to this .json (default {RECORDS_DIR}/"
                   "<dataset>-<loss>-m<margin>-b<batch size>-seed<seed>-<hash of the config>.json)")
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON line on stdout")
    p.add_argument("--smoke", action="store_true", help="a few steps on generated data in a temporary folder "
                   f"(ignores --data-dir); other flags override {SMOKE}")
    args = p.parse_args(argv)
    missing = [f"--{key.replace('_', '-')}" for key in REQUIRED if getattr(args, key) is None]
    if missing and not args.smoke:
        p.error(f"the following arguments are required: {', '.join(missing)}")
    return args


class Console(Progress):
    """The CLI's progress on stderr: the resolved setup, then a tqdm bar on a terminal (when tqdm is installed)
    or plain lines at every tenth of the steps or PROGRESS_SECONDS, each with the training time left at the
    pace so far (evaluation not included), and one line per checkpoint."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.last_line = time.perf_counter()
        self.tenths = 0

    def write(self, line: str) -> None:
        """One line on stderr, above the bar if there is one."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def setup(self, info: dict[str, Any]) -> None:
        """Print the resolved setup; open the bar on a terminal."""
        self.write("trial: " + ", ".join(f"{key} {value}" for key, value in info.items()))
        if sys.stderr.isatty():
            with contextlib.suppress(ImportError):
                from tqdm import tqdm

                self.bar = tqdm(total=info["steps"], unit="step", file=sys.stderr, dynamic_ncols=True)

    def step(self, step: int, steps: int, train_seconds: float) -> None:
        """Advance the bar, or print a line at a new tenth of the steps or after PROGRESS_SECONDS."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            return
        tenths, now = step * 10 // steps, time.perf_counter()
        if step < steps and (tenths > self.tenths or now - self.last_line >= PROGRESS_SECONDS):
            self.tenths, self.last_line = tenths, now
            left = train_seconds / step * (steps - step)
            self.write(f"step {step}/{steps} ({100 * step / steps:.0f}%), {train_seconds:.1f} s of training, "
                       f"about {left:.0f} s of training left")

    def checkpoint(self, metrics: dict[str, Any]) -> None:
        """One line per checkpoint."""
        self.write(
            f"checkpoint {metrics['checkpoint']}: step {metrics['step']}, {metrics['samples_seen']} samples, "
            f"loss {metrics['loss']:.4f}, knn {metrics['knn_accuracy']:.4f}, p@1 {metrics['precision_at_1']:.4f}, "
            f"MAP@R {metrics['map_at_r']:.4f}, {metrics['samples_per_second']:.0f} samples/s, "
            f"{metrics['train_seconds']:.1f} s training, {metrics['elapsed_seconds']:.1f} s elapsed, "
            f"{metrics['status']} {metrics.get('reason', '')}".rstrip()
        )

    def close(self) -> None:
        """Close the bar, if any."""
        if self.bar is not None:
            self.bar.close()


def default_out(config: dict[str, Any]) -> Path:
    """RECORDS_DIR/<bench.experiment.identity.record_name>.json."""
    return RECORDS_DIR / f"{record_name(config)}.json"


def check_out(path: Path) -> None:
    """Raise ConfigError unless a record can be written at `path` (before the trial runs, so nothing is lost)."""
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; give the path of a .json file")
    existing = next(folder for folder in path.absolute().parents if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ConfigError(f"--out {path}: cannot write under {existing}")


def write_trial_record(path: Path, config: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """The trial's record (bench/experiment/records.py), with this command line and the trial's threads."""
    cfg = resolve(config)
    final = history[-1]
    embeddings = Path(cfg["save_embeddings"]) if cfg["save_embeddings"] else None
    prov = {**provenance(pick_device(cfg["device"]), final.get("threads")),
            "command": shlex.join(["python", "-m", "bench.trial", *sys.argv[1:]])}
    write_record(path, trial_record(
        record_name(cfg), cfg, final["status"], final.get("reason"), history, prov,
        embeddings=str(embeddings) if embeddings is not None and embeddings.is_file() else None,
    ))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: exit code 0 after a trial (whatever its status), 2 on bad input or data."""
    args = vars(parse_args(argv))
    as_json, smoke, out = args.pop("json"), args.pop("smoke"), args.pop("out")
    config = {key: value for key, value in args.items() if value is not None}
    console, history = Console(), []

    def on_checkpoint(metrics: dict[str, Any]) -> None:
        history.append(dict(metrics))
        console.checkpoint(metrics)

    try:
        with contextlib.ExitStack() as stack:
            stack.callback(console.close)
            if smoke:
                data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="tripletbench-trial-smoke-"))
                config = {**SMOKE, **config, "data_dir": data_dir}
                write_synthetic(data_dir, config["dataset"])
            path = Path(out) if out else default_out(config)
            check_out(path)
            metrics = run_trial(config, on_checkpoint, console)
            write_trial_record(path, config, history)
    except (ConfigError, DataError) as err:
        print(f"python -m bench.trial: error: {err}", file=sys.stderr)
        return 2
    console.write(f"record: {path}")
    if as_json:
        print(json.dumps(finite(metrics), allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
