"""The trial's flat config: every key, its default and its check, in one place.

Keys map one-to-one onto grid axes (presets) and report columns.
"""

from __future__ import annotations

from typing import Any

from losses import LOSSES

DATASETS = ("mnist", "cifar10")
SAMPLERS = ("random", "pk")
PROTOCOLS = ("seen", "unseen")
PRECISIONS = ("auto", "fp32", "bf16")
MODELS = ("mnist-net", "resnet18", "cifar-net")
LR_SCALINGS = ("none", "sqrt", "linear")
LR_SCHEDULES = ("constant", "cosine")

DEFAULTS: dict[str, Any] = {
    # grid axes
    "dataset": "mnist",
    "loss": "batch-hard",
    "margin": 0.2,
    "batch_size": 256,
    "seed": 0,
    # equal compute: whichever budget is reached first ends training (None = no time limit)
    "budget_samples": 30_000,
    "budget_seconds": None,
    "checkpoints": 4,
    # evaluation protocol (bench/protocol.py): `seen` = k-NN classification of held-out images of the training
    # classes; `unseen` = leave-one-out retrieval on the classes that training never sees
    "protocol": "seen",
    # seen: the class-stratified validation part of the training split; unseen: no effect (all the held-out
    # classes' training images are the validation set)
    "val_fraction": 0.1,
    # batches
    "sampler": "pk",
    "samples_per_class": 4,
    # model and optimiser (None = the dataset's measured default, see bench/models.py)
    "embedding_dim": None,
    "normalize": True,
    "model": None,
    "optimizer": None,
    "lr": None,
    # lr × (batch_size / lr_reference_batch) ** {none: 0, sqrt: 0.5, linear: 1}
    "lr_scaling": "none",
    "lr_reference_batch": 256,
    # constant, or cosine: lr · (1 + cos(π · steps done / planned steps)) / 2, from the full lr to 0 at the budget
    "lr_schedule": "constant",
    # numerics: auto = bf16 autocast on CUDA and on CPUs with native bf16, fp32 otherwise (bench/precision.py)
    "precision": "auto",
    # evaluation sizes of the checkpoints before the last (the last evaluates everything): 0 = the whole set,
    # None = the device's default (bench.protocol.intermediate_sizes: budget-scaled on the CPU, all on CUDA)
    "eval_gallery": None,
    "eval_queries": None,
    "train_subset": 0,
    # where and how (not part of a trial's identity)
    "data_dir": "datasets",
    "device": "auto",
    "save_embeddings": "",
    # intra-op CPU threads (None = the CPUs the backend gives the trial); part of the identity, since on the
    # CPU the thread count changes the floating-point reduction order and so the metrics
    "threads": None,
}

# Keys that locate a trial on the machine rather than define what it computes.
LOCATION_KEYS = ("data_dir", "device", "save_embeddings")

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
    # evaluation protocol (bench/protocol.py): validation metrics, evaluation sizes used, split sizes
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


class ConfigError(ValueError):
    """A config value that no trial can run with; the message names the key and the valid values."""


def resolve(config: dict[str, Any]) -> dict[str, Any]:
    """Return DEFAULTS updated with `config`, checked; raise ConfigError naming the first bad key."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **config}
    if cfg["dataset"] not in DATASETS:
        raise ConfigError(f"unknown dataset {cfg['dataset']!r}; valid: {', '.join(DATASETS)}")
    if cfg["loss"] not in LOSSES:
        raise ConfigError(f"unknown loss {cfg['loss']!r}; valid: {', '.join(LOSSES)}")
    for key, valid in (
        ("protocol", PROTOCOLS), ("precision", PRECISIONS), ("lr_scaling", LR_SCALINGS), ("lr_schedule", LR_SCHEDULES)
    ):
        if cfg[key] not in valid:
            raise ConfigError(f"unknown {key} {cfg[key]!r}; valid: {', '.join(valid)}")
    if cfg["model"] is not None and cfg["model"] not in MODELS:
        raise ConfigError(f"unknown model {cfg['model']!r}; valid: {', '.join(MODELS)}")
    if not 0 < float(cfg["val_fraction"]) <= 0.5:
        raise ConfigError(f"val_fraction must be in (0, 0.5], got {cfg['val_fraction']}")
    if not int(cfg["lr_reference_batch"]) > 0:
        raise ConfigError(f"lr_reference_batch must be > 0, got {cfg['lr_reference_batch']}")
    if cfg["threads"] is not None and int(cfg["threads"]) < 1:
        raise ConfigError(f"threads must be >= 1, got {cfg['threads']}")
    if cfg["sampler"] not in SAMPLERS:
        raise ConfigError(f"unknown sampler {cfg['sampler']!r}; valid: {', '.join(SAMPLERS)}")
    if not float(cfg["margin"]) >= 0:
        raise ConfigError(f"margin must be >= 0, got {cfg['margin']}")
    if int(cfg["batch_size"]) < 2:
        raise ConfigError(f"batch_size must be >= 2, got {cfg['batch_size']}")
    if int(cfg["samples_per_class"]) < 2:
        raise ConfigError(f"samples_per_class must be >= 2, got {cfg['samples_per_class']}")
    if cfg["sampler"] == "pk" and int(cfg["batch_size"]) % int(cfg["samples_per_class"]):
        raise ConfigError(
            f"batch_size {cfg['batch_size']} is not a multiple of samples_per_class "
            f"{cfg['samples_per_class']} (required by the pk sampler)"
        )
    if not float(cfg["budget_samples"]) > 0:
        raise ConfigError(f"budget_samples must be > 0, got {cfg['budget_samples']}")
    if cfg["budget_seconds"] is not None and not float(cfg["budget_seconds"]) > 0:
        raise ConfigError(f"budget_seconds must be > 0, got {cfg['budget_seconds']}")
    for key in ("eval_gallery", "eval_queries", "train_subset"):
        if cfg[key] is not None and int(cfg[key]) < 0:
            raise ConfigError(f"{key} must be >= 0 (0 = the whole split), got {cfg[key]}")
    if int(cfg["checkpoints"]) < 1:
        raise ConfigError(f"checkpoints must be >= 1, got {cfg['checkpoints']}")
    return cfg


def trial_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config without location keys, its None model settings filled with the defaults they stand
    for (bench.models.model_settings): what makes two trials the same trial, so that a changed default never
    passes an old record off as a new trial."""
    from bench.models import model_settings  # bench.models imports this module

    cfg = resolve(config)
    return {**{k: v for k, v in cfg.items() if k not in LOCATION_KEYS}, **model_settings(cfg)}
