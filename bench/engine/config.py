"""The trial's flat config: every key, its default and its check, in one place.

Keys map one-to-one onto grid axes (presets) and report columns.
"""

from __future__ import annotations

import math
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench.engine import plugins
from bench.engine.datasets import DATASETS
from losses import CONTROLS, LOSSES, facts

SAMPLERS = ("random", "pk")
PROTOCOLS = ("seen", "unseen")
PRECISIONS = ("auto", "fp32", "bf16")
MODELS = ("mnist-net", "resnet18", "cifar-net")
LR_SCALINGS = ("none", "sqrt", "linear")
LR_SCHEDULES = ("constant", "cosine")
CONTROL_TEMPERATURE = 0.05  # Zhai & Wu's, and pytorch-metric-learning's default

@dataclass(frozen=True)
class Key:
    """One config key: its default, its type (None allowed where the default is None), its help line and, for a
    closed set of values, the values, or the registry whose names they are (plugins may add to it)."""

    default: Any
    type: type
    help: str
    choices: tuple[str, ...] | Mapping[str, Any] | None = None

    def values(self) -> tuple[str, ...] | None:
        """The valid values now (a registry's names as they are after the plugins loaded), None for any."""
        return None if self.choices is None else tuple(self.choices)


# Every config key, once: bench.trial's flags, the presets' type checks and docs/config.md derive from this table.
KEYS: dict[str, Key] = {
    # grid axes
    "dataset": Key("mnist", str, "the data set (bench/engine/datasets.py, or a plugin's)", DATASETS),
    "loss": Key("batch-hard", str, "the loss (losses/, or a plugin's), or a control (losses.CONTROLS: "
                "normalized-softmax)", ChainMap(CONTROLS, LOSSES)),
    "margin": Key(0.2, float, "the loss's margin m >= 0 (0 for a control, which has none)"),
    "temperature": Key(None, float, f"a control's softmax temperature > 0 (None: {CONTROL_TEMPERATURE}); a triplet "
                       "loss has none"),
    "batch_size": Key(256, int, "images per training batch B"),
    "seed": Key(0, int, "fixes the initialisation, the batch plan and the augmentations"),
    # equal compute: whichever budget is reached first ends training
    "budget_samples": Key(30_000, int, "training samples: ceil(budget_samples / batch_size) steps"),
    "budget_seconds": Key(None, float, "training seconds, evaluation excluded (None: no time limit)"),
    "budget_steps": Key(None, int, "optimiser steps (None: no step limit); compares batch sizes at equal updates"),
    "checkpoints": Key(4, int, "evaluations, evenly spaced over the steps, the last one included"),
    "protocol": Key("seen", str, "seen: k-NN classification of held-out images of the training classes; unseen: "
                    "leave-one-out retrieval on classes training never sees (bench/engine/protocol.py)", PROTOCOLS),
    "val_fraction": Key(0.1, float, "seen: the class-stratified validation part of the training split; "
                        "unseen: no effect"),
    "sampler": Key("pk", str, "random, or pk: P classes x K images per batch", SAMPLERS),
    "samples_per_class": Key(4, int, "K of the pk sampler"),
    # model and optimiser (None = the dataset's measured default, see bench/engine/models.py)
    "embedding_dim": Key(None, int, "embedding size D (None: the model's default)"),
    "normalize": Key(True, bool, "L2-normalise the embeddings"),
    "model": Key(None, str, "the network (None: the dataset's, bench/engine/datasets.py)", MODELS),
    "optimizer": Key(None, str, "adam, adamw or sgd (None: the model's default)"),
    "lr": Key(None, float, "learning rate at lr_reference_batch (None: the model's default)"),
    "lr_scaling": Key("none", str, "lr x (batch_size / lr_reference_batch) ** {none: 0, sqrt: 0.5, linear: 1}",
                      LR_SCALINGS),
    "lr_reference_batch": Key(256, int, "the batch size at which the lr is as given"),
    "lr_schedule": Key("constant", str, "constant, or cosine from the full lr to 0 at the sample budget",
                       LR_SCHEDULES),
    "precision": Key("auto", str, "auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32 "
                     "(bench/engine/precision.py)", PRECISIONS),
    "eval_gallery": Key(None, int, "gallery images at the checkpoints before the last (0: all; None: all on CUDA, "
                        "budget-scaled on the CPU); the last checkpoint evaluates everything"),
    "eval_queries": Key(None, int, "validation and test queries at the checkpoints before the last (as "
                        "eval_gallery)"),
    "train_subset": Key(0, int, "train on a fixed subset of this size (0: all)"),
    # where and how (not part of a trial's identity)
    "data_dir": Key("datasets", str, "folder of <dataset>.npz (datasets/README.md)"),
    "device": Key("auto", str, "auto (CUDA when available), cpu or cuda"),
    "save_embeddings": Key("", str, "write the first 1000 test embeddings and labels to this .npz"),
    # part of the identity: on the CPU the thread count changes the floating-point reduction order, so the metrics
    "threads": Key(None, int, "torch intra-op CPU threads (None: what the backend gives the trial)"),
    "plugins": Key("", str, "comma-separated .py files imported first, which may add losses and data sets "
                   "(docs/own-loss.md)"),
}
DEFAULTS: dict[str, Any] = {name: key.default for name, key in KEYS.items()}

# Keys that locate a trial on the machine rather than define what it computes.
LOCATION_KEYS = ("data_dir", "device", "save_embeddings", "plugins")

# Per-checkpoint metric names: fixed, because the report and users depend on them.
METRICS = (
    "knn_accuracy",
    "precision_at_1",
    "map_at_r",
    "samples_per_second",
    "peak_memory_mib",
    "loss",
    "fraction_easy",
    "fraction_semihard",
    "fraction_hard",
    "mu_pos",
    "mu_neg",
    "samples_seen",
    "elapsed_seconds",
    "status",
    # evaluation protocol (bench/engine/protocol.py): validation metrics, evaluation sizes used, split sizes
    "val_knn_accuracy",
    "val_precision_at_1",
    "val_map_at_r",
    "val_gallery_size",
    "val_queries_size",
    "test_gallery_size",
    "test_queries_size",
    "train_size",
    "val_size",
    "test_size",
    "n_train_classes",
)

# Trial outcomes. The trial itself reports the first three; the grid runner adds the last two.
STATUSES = ("ok", "diverged", "collapsed", "OOM", "error")


def sample_budget(cfg: dict[str, Any]) -> float:
    """The training samples a config plans: budget_samples, or budget_steps x batch_size where fewer (a config
    without budget_steps has no step limit)."""
    samples, steps = float(cfg["budget_samples"]), cfg.get("budget_steps")
    return samples if steps is None else min(samples, int(steps) * int(cfg["batch_size"]))


def planned_steps(cfg: dict[str, Any]) -> int:
    """The optimiser steps a config plans: ceil(sample_budget / batch_size), so at most budget_steps."""
    return math.ceil(sample_budget(cfg) / int(cfg["batch_size"]))


class ConfigError(ValueError):
    """A config value that no trial can run with; the message names the key and the valid values."""


def resolve(config: dict[str, Any]) -> dict[str, Any]:
    """Return DEFAULTS updated with `config`, checked; raise ConfigError naming the first bad key."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **config}
    try:
        plugins.load(plugins.split(str(cfg["plugins"])))
    except plugins.PluginError as err:
        raise ConfigError(str(err)) from None
    for name, key in KEYS.items():
        values = key.values()
        if values is not None and cfg[name] not in values and not (key.default is None and cfg[name] is None):
            raise ConfigError(f"unknown {name} {cfg[name]!r}; valid: {', '.join(values)}")
    if not 0 < float(cfg["val_fraction"]) <= 0.5:
        raise ConfigError(f"val_fraction must be in (0, 0.5], got {cfg['val_fraction']}")
    if not int(cfg["lr_reference_batch"]) > 0:
        raise ConfigError(f"lr_reference_batch must be > 0, got {cfg['lr_reference_batch']}")
    if cfg["threads"] is not None and int(cfg["threads"]) < 1:
        raise ConfigError(f"threads must be >= 1, got {cfg['threads']}")
    if not float(cfg["margin"]) >= 0:
        raise ConfigError(f"margin must be >= 0, got {cfg['margin']}")
    if cfg["loss"] in CONTROLS:
        if float(cfg["margin"]) != 0:
            raise ConfigError(f"margin must be 0 for {cfg['loss']} (a control has no margin), got {cfg['margin']}")
        cfg["temperature"] = CONTROL_TEMPERATURE if cfg["temperature"] is None else cfg["temperature"]
        if not float(cfg["temperature"]) > 0:
            raise ConfigError(f"temperature must be > 0, got {cfg['temperature']}")
    elif cfg["temperature"] is not None:
        raise ConfigError(f"temperature is a control's setting (losses.CONTROLS: {', '.join(CONTROLS)}); "
                          f"{cfg['loss']} has none, got {cfg['temperature']}")
    if int(cfg["batch_size"]) < 2:
        raise ConfigError(f"batch_size must be >= 2, got {cfg['batch_size']}")
    if int(cfg["samples_per_class"]) < 2:
        raise ConfigError(f"samples_per_class must be >= 2, got {cfg['samples_per_class']}")
    if cfg["sampler"] == "pk" and int(cfg["batch_size"]) % int(cfg["samples_per_class"]):
        raise ConfigError(
            f"batch_size {cfg['batch_size']} is not a multiple of samples_per_class "
            f"{cfg['samples_per_class']} (required by the pk sampler)"
        )
    classes, needed = int(cfg["batch_size"]) // int(cfg["samples_per_class"]), facts(cfg["loss"]).min_classes
    if cfg["sampler"] == "pk" and classes < needed:
        raise ConfigError(
            f"batch_size {cfg['batch_size']} with samples_per_class {cfg['samples_per_class']} gives {classes} class"
            f"{'' if classes == 1 else 'es'} per batch; {cfg['loss']} needs at least {needed} for a valid "
            f"{'quadruplet' if needed > 2 else 'triplet'} (batch_size >= {needed * int(cfg['samples_per_class'])})"
        )
    if not float(cfg["budget_samples"]) > 0:
        raise ConfigError(f"budget_samples must be > 0, got {cfg['budget_samples']}")
    if cfg["budget_steps"] is not None and int(cfg["budget_steps"]) < 1:
        raise ConfigError(f"budget_steps must be >= 1, got {cfg['budget_steps']}")
    if cfg["budget_seconds"] is not None and not float(cfg["budget_seconds"]) > 0:
        raise ConfigError(f"budget_seconds must be > 0, got {cfg['budget_seconds']}")
    for key in ("eval_gallery", "eval_queries", "train_subset"):
        if cfg[key] is not None and int(cfg[key]) < 0:
            raise ConfigError(f"{key} must be >= 0 (0 = the whole split), got {cfg[key]}")
    if int(cfg["checkpoints"]) < 1:
        raise ConfigError(f"checkpoints must be >= 1, got {cfg['checkpoints']}")
    return cfg

