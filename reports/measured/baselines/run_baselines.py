"""Raw-pixel and untrained-network baselines of MNIST and CIFAR-10 under both protocols (issue 10's 'Measured').

Run from the repository root, with the data folder and the torch thread count (1 here, beside a sweep):
    python reports/measured/baselines/run_baselines.py ../shared/data 1 > reports/measured/baselines/baselines.jsonl
Each line: the baseline config, its final-checkpoint metrics (whole validation and test sets against the whole
gallery) and the wall seconds of the evaluation (data loading and split included).
"""

import json
import sys
import time

import torch

from bench.experiment.baselines import baseline_config, run_baseline
from bench.experiment.provenance import provenance

data_dir = sys.argv[1]
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else torch.get_num_threads())
print(json.dumps({"provenance": provenance("cpu"), "threads": torch.get_num_threads()}), flush=True)
for dataset, model in (("mnist", "mnist-net"), ("cifar10", "cifar-net")):
    for protocol in ("seen", "unseen"):
        for baseline, seed in (("pixels", None), ("untrained", 0), ("untrained", 1)):
            cfg = {"dataset": dataset, "protocol": protocol, "model": model, **({} if seed is None else {"seed": seed})}
            started = time.perf_counter()
            metrics = run_baseline(baseline_config(baseline, cfg), data_dir, "cpu")
            print(json.dumps({"baseline": baseline, **cfg, "seconds": round(time.perf_counter() - started, 1),
                              **metrics}), flush=True)
