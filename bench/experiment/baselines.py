"""Reference rows evaluated exactly like a trial's final checkpoint: raw pixels and the untrained network.

- `pixels`: each image's raw values (0..255), flattened and L2-normalised, as its embedding.
- `untrained`: the trial's network before its first update (seeded and built as the trial builds it), its
  BatchNorm running statistics re-estimated on the training images (bench.engine.train.recalibrate_batchnorm: no
  gradient step; a fresh net's mean-0 variance-1 statistics would squeeze every embedding together in eval mode),
  embedding under the trial's precision, as the trial's evaluation does. Its config says so
  (`batchnorm: "recalibrated on the training images"`), so that untrained baselines recorded before this rule get
  other ids and are never taken for these.
Both go through bench.engine.protocol.evaluate on the whole validation and test sets against the whole gallery
(sizes 0), so that they report the same metric and size names as a trial's checkpoint. A baseline config
holds what its numbers depend on: the data keys for pixels, and also the network keys for untrained.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from bench.engine.config import resolve
from bench.engine.data import channel_stats
from bench.engine.device import pick_device
from bench.engine.models import initial_model
from bench.engine.precision import resolve_precision
from bench.engine.protocol import Splits, evaluate, load_splits
from bench.engine.train import EVAL_BATCH, embed, recalibrate_batchnorm
from bench.experiment.identity import baseline_id
from bench.experiment.provenance import provenance
from bench.experiment.records import baseline_record

BASELINES = ("pixels", "untrained")
DATA_KEYS = ("dataset", "protocol", "val_fraction", "train_subset")  # what both baselines depend on
NET_KEYS = ("seed", "model", "embedding_dim", "normalize", "precision")  # what only the untrained net depends on
BATCHNORM_RULE = "recalibrated on the training images"  # the untrained net's BatchNorm statistics


def pixel_embeddings(images: Tensor) -> Tensor:
    """Flattened, L2-normalised raw pixel values [N, C·H·W] float32 of uint8 images [N, C, H, W]."""
    parts = [torch.nn.functional.normalize(images[start:start + EVAL_BATCH].flatten(1).float(), dim=1)
             for start in range(0, len(images), EVAL_BATCH)]
    return torch.cat(parts)


def untrained_embedder(cfg: dict[str, Any], splits: Splits, device: torch.device) -> Callable[[Tensor], Tensor]:
    """The embedding function of the trial's network for resolved config `cfg` before its first update."""
    mean, std = channel_stats(splits.x_train)
    model = initial_model(cfg, tuple(splits.x_train.shape[1:]), device)
    precision = resolve_precision(cfg["precision"], device)
    recalibrate_batchnorm(model, splits.x_train, mean, std, precision)
    return lambda images: embed(model, images, mean, std, precision)


def baseline_config(baseline: str, config: dict[str, Any]) -> dict[str, Any]:
    """The identity of one baseline of a trial config: {"baseline", DATA_KEYS, NET_KEYS (None for pixels),
    ["batchnorm": BATCHNORM_RULE (untrained),] "eval_gallery": 0, "eval_queries": 0} (0: the whole sets)."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; valid: {', '.join(BASELINES)}")
    cfg = resolve({key: value for key, value in config.items() if key != "baseline"})
    return {"baseline": baseline, **{key: cfg[key] for key in DATA_KEYS},
            **{key: cfg[key] if baseline == "untrained" else None for key in NET_KEYS},
            **({"batchnorm": BATCHNORM_RULE} if baseline == "untrained" else {}), "eval_gallery": 0, "eval_queries": 0}


def run_baseline(config: dict[str, Any], data_dir: str, device: str = "auto") -> dict[str, Any]:
    """The final-checkpoint metrics and sizes (bench.engine.protocol.evaluate) of one baseline config."""
    keys = (*DATA_KEYS, *(NET_KEYS if config["baseline"] == "untrained" else ()))
    cfg = resolve({**{key: config[key] for key in keys}, "data_dir": data_dir, "device": device})
    where = pick_device(cfg["device"])
    splits = load_splits(cfg, where)
    embedder = pixel_embeddings if config["baseline"] == "pixels" else untrained_embedder(cfg, splits, where)
    return evaluate(embedder, splits)[0]


def baseline_configs(configs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct baseline configs of trial configs, in first-seen order: pixels per data set, protocol
    and split; untrained also per seed and network."""
    out: list[dict[str, Any]] = []
    for config in configs:
        out += [b for name in BASELINES if (b := baseline_config(name, config)) not in out]
    return out


def baseline_records(
    configs: Iterable[dict[str, Any]], data_dir: str, fingerprints: dict[str, str], device: str = "auto",
    recorded: Callable[[str], bool] = lambda baseline_id: False, *, experiment: str | None = None,
    preset: str | None = None, command: str = "",
) -> Iterator[dict[str, Any]]:
    """Per baseline of the trial configs not `recorded` yet (by id, which holds the data set's fingerprint of
    `fingerprints`): its record (bench/experiment/records.py), run now."""
    for config in baseline_configs(configs):
        fingerprint = fingerprints[config["dataset"]]
        bid = baseline_id(config, fingerprint)
        if recorded(bid):
            continue
        final = run_baseline(config, data_dir, device)
        yield baseline_record(bid, config["baseline"], config, final,
                              {**provenance(pick_device(device)), "command": command}, fingerprint,
                              experiment=experiment, preset=preset)
