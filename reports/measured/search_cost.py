"""The cost of the final evaluation's exact search on this machine: 10,000 queries against the training gallery.

    .venv/bin/python reports/measured/search_cost.py > reports/measured/search_cost.json

Times bench.engine.evaluate.retrieval_metrics (centred, float64) on random unit embeddings shaped like MNIST's
(54,000 × 50-d gallery, 10 classes) and CIFAR-10's (45,000 × 128-d), best of 3 runs, at torch's thread count;
and, for comparison, the same search ranked in float32 on the raw coordinates (the rule before 2026-12-02).
"""

from __future__ import annotations

import json
import time

import torch

from bench.engine import evaluate
from bench.experiment.provenance import provenance


def float32_raw(gallery: torch.Tensor, queries: torch.Tensor | None, depths: torch.Tensor):
    """The old search: ‖g‖² − 2 q·g in float32 on the raw coordinates."""
    sq = (gallery * gallery).sum(dim=1)
    rows = max(1, evaluate.CHUNK_ELEMENTS // len(gallery))
    for start in range(0, len(queries), rows):
        part = slice(start, min(start + rows, len(queries)))
        distances = sq - 2 * queries[part] @ gallery.T
        yield part, distances.topk(int(depths[part].max()), dim=1, largest=False, sorted=True).indices


def best_of(runs: int, fn) -> float:
    """The fastest of `runs` calls, in seconds."""
    times = []
    for _ in range(runs):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return min(times)


def main() -> None:
    rows = []
    generator = torch.Generator().manual_seed(0)
    for name, n_gallery, dim in (("mnist", 54_000, 50), ("cifar10", 45_000, 128)):
        gallery = torch.nn.functional.normalize(torch.randn(n_gallery, dim, generator=generator), dim=1)
        queries = torch.nn.functional.normalize(torch.randn(10_000, dim, generator=generator), dim=1)
        labels, query_labels = torch.arange(n_gallery) % 10, torch.arange(10_000) % 10
        args = (gallery, labels, queries, query_labels)
        exact = best_of(3, lambda args=args: evaluate.retrieval_metrics(*args))
        nearest = evaluate._nearest
        evaluate._nearest = float32_raw
        try:
            old = best_of(3, lambda args=args: evaluate.retrieval_metrics(*args))
        finally:
            evaluate._nearest = nearest
        rows.append({"shape": name, "gallery": n_gallery, "queries": 10_000, "dim": dim,
                     "exact_float64_centred_s": round(exact, 2), "float32_raw_s": round(old, 2),
                     "ratio": round(exact / old, 2)})
    print(json.dumps({"rows": rows, "threads": torch.get_num_threads(),
                      "provenance": provenance("cpu", torch.get_num_threads())}, indent=1))


if __name__ == "__main__":
    main()
