r"""Embedding networks and optimisers, and the defaults a trial uses where its config says None.

Models (config `model`; None = the dataset's: mnist-net for MNIST, resnet18 for CIFAR-10). Every model is a
backbone to features and a linear head to the D-d embedding; the head and the L2 normalisation run in fp32
with autocast disabled (EmbeddingNet), so bf16 autocast never quantises the embeddings. Parameters at the
default D and forward FLOPs per image (forward_flops: 2 × conv and linear multiply-adds; a training step is
about 3×):

    model       input      D    parameters   forward MFLOPs/image
    mnist-net   1×28×28    50   3,137,330    117
    resnet18    3×32×32    128  11,234,496   1,111
    cifar-net   3×32×32    128  310,328      40

- mnist-net: the source tutorial's conv net.
- resnet18: torchvision's ResNet-18 with a 3×3 stride-1 stem and no max-pool (for the GPU presets).
- cifar-net: a small CIFAR-10 net after airbench's layout (Keller Jordan's CIFAR-10 speedruns), written here:
  a 2×2 stem conv (24 channels, no padding) and GELU, then three blocks of widths 32, 64, 128, each
  conv3×3 → max-pool 2 → BN → GELU → conv3×3 → BN → GELU (pooling before the BN makes BN and GELU 4× cheaper),
  a global max-pool and the head. Chosen among three airbench-style widths in a scratch comparison (training
  step at B = 256 in bf16, fastest of 8 steps, on 2 cores shared with other jobs, commit 8a048eb):
      widths 32/64/128 (cifar-net): 1528 samples/s; 48/96/192: 1132; 64/128/256: 819
  and accuracy per sample on real CIFAR-10 (batch-all m = 0.2, B = 256, Adam 1e-3, 40,960 samples, seed 0, 5-NN
  of 1000 test queries against a 5000-image gallery): 32/64/128 k-NN 0.510, MAP@R 0.179; 48/96/192 0.520, 0.194.
  One point on one seed did not pay for 26% fewer samples/s, so cifar-net takes 32/64/128 (CIFAR_NET_WIDTHS).

The trial's own training step (bench.step_benchmark: gather, augment, normalise, forward, batch-all, backward,
Adam; channels_last and deterministic mode as in the trial), median of 20 steps after 5 warm-ups, on 2 quiet
cores (AMD EPYC with avx512_bf16), commit 491108d; samples/s:
    python -m bench.step_benchmark --preset reports/measured/throughput-small.json --precision both \
        --data-dir ../shared/data --out reports/measured/throughput-cpu-nets   (and throughput-resnet18.json)
    model       B=64 fp32   B=64 bf16   B=256 fp32   B=256 bf16
    mnist-net   502         1007        466          1015
    cifar-net   1127        1686        1178         1953
    resnet18    59          105         54           110

Defaults (MODEL_DEFAULTS), and how they were chosen: on the VALIDATION split only (reports/lr_sweep/: every
record, log and the commands), one Adam rate per dataset that serves all four losses, at margin 0.2, B = 256,
bf16, seed 0, 1 thread per trial (two at a time on 2 cores), commit 1472ab3 (first two MNIST trials) and
1955ed2 (the rest), each trial:
    python -m bench.trial --dataset D --model M --loss LOSS --margin 0.2 --batch-size 256 --budget-samples N \
        --checkpoints 2 --lr LR --threads 1 --data-dir ../shared/data --out reports/lr_sweep/D-LOSS-lrLR.json
Rule: the rate with the highest mean validation MAP@R over the four losses; rates within 0.002 of it (inside
one seed's noise) count as tied, and a tie goes to the rate inside the swept range. Final validation MAP@R:
- mnist-net (N = 60,000: 235 steps):
    lr      batch-all   batch-hard          adaptive-mu   quadruplet   mean
    2e-4    0.957       0.782 (pinned)      0.953         0.968        0.915
    5e-4    0.961       0.778 (pinned)      0.964         0.964        0.917
    1e-3    0.966       0.687 (pinned)      0.955         0.973        0.895
  → 5e-4 (2e-4 is tied but at the edge). Batch-hard at B = 256 stays pinned at the margin at every rate.
- cifar-net (N = 50,000: 196 steps, about one epoch):
    lr      batch-all   batch-hard          adaptive-mu   quadruplet   mean
    5e-4    0.177       0.026               0.160         0.178        0.135
    1e-3    0.206       0.029 (pinned)      0.180         0.189        0.151
    2e-3    0.223       0.024 (pinned)      0.161         0.197        0.151
  → 1e-3 (2e-3 is tied but at the edge; batch-all and quadruplet still gain there). Batch-hard barely learns
  here (raw pixels: 0.039, the untrained net 0.022).
  The cpu grid's pilot (reports/pilot/, README "The pilot") then compared schedules at the reference budgets on
  validation: MNIST keeps 5e-4 with a cosine decay (+1.2 to +1.4 points over the constant rate); CIFAR-10 keeps
  1e-3 constant (a cosine decay from 1e-3 or 2e-3 ended up to 6.5 points lower; from 4e-3 it fell behind 2e-3).
  These defaults are the constant-schedule rates; the schedule is config `lr_schedule`, set by the preset.
- resnet18: 128-d, Adam at lr 5e-4. Not measured (a ResNet-18 trial is out of reach on 2 CPU cores): to be
  measured on a GPU.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from bench.config import MODELS, ConfigError

DATASET_MODEL = {"mnist": "mnist-net", "cifar10": "resnet18"}  # the model a config's None means
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist-net": {"embedding_dim": 50, "optimizer": "adam", "lr": 5e-4},
    "resnet18": {"embedding_dim": 128, "optimizer": "adam", "lr": 5e-4},
    "cifar-net": {"embedding_dim": 128, "optimizer": "adam", "lr": 1e-3},
}
CIFAR_NET_WIDTHS = (32, 64, 128)
CIFAR_NET_STEM = 24
MIN_SIDE = 8

OPTIMIZERS = ("adam", "adamw", "sgd")


class EmbeddingNet(nn.Module):
    """A backbone mapping images [B, C, H, W] to features [B, F], and a linear head F → D in float32.

    The head and the L2 normalisation run with autocast disabled, so that bf16 autocast never quantises
    the embeddings that the loss sees and the evaluation searches: under autocast the output is exactly
    head(features.float()), normalised, in float32.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear, normalize: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.normalize = normalize

    def forward(self, x: Tensor) -> Tensor:
        """Embeddings [B, D] in float32 (unit rows when normalising)."""
        features = self.backbone(x)
        with torch.autocast(x.device.type, enabled=False):
            y = self.head(features.float())
            return nn.functional.normalize(y, dim=1) if self.normalize else y


def mnist_net(in_channels: int, height: int, width: int, embedding_dim: int) -> tuple[nn.Module, nn.Linear]:
    """The source tutorial's net: 3 conv (5×5, 5×5, 3×3; each ReLU + 2×2 max-pool) and 3 linear layers.

    Returned as (backbone up to the 256-d features, the last linear layer 256 → D).
    """
    layers = [
        nn.Conv2d(in_channels, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256 * (height // 8) * (width // 8), 1024), nn.ReLU(),
        nn.Linear(1024, 256), nn.ReLU(),
        nn.Linear(256, embedding_dim),
    ]
    return nn.Sequential(*layers[:-1]), layers[-1]


def cifar_resnet18(in_channels: int, embedding_dim: int) -> tuple[nn.Module, nn.Linear]:
    """torchvision ResNet-18 for 32×32 inputs: 3×3 stride-1 stem, no max-pool; (backbone to 512-d, 512 → D head)."""
    net = torchvision.models.resnet18(num_classes=embedding_dim)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    head, net.fc = net.fc, nn.Identity()
    return net, head


def _conv_block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    """3×3 conv (no bias), optional 2×2 max-pool before the BN (a quarter of its cost), BN, GELU."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), *([nn.MaxPool2d(2)] if pool else []),
            nn.BatchNorm2d(cout), nn.GELU()]


def cifar_net(
    in_channels: int, embedding_dim: int, widths: tuple[int, ...] = CIFAR_NET_WIDTHS, stem: int = CIFAR_NET_STEM
) -> tuple[nn.Module, nn.Linear]:
    """The small CIFAR-10 net, after airbench's layout; (backbone to widths[-1]-d features, head → D).

    A 2×2 stem conv (no padding) + GELU, then per width a block of conv → max-pool → BN → GELU and
    conv → BN → GELU, then a global max-pool. 32×32 inputs: 31 → 15 → 7 → 3 → 1.
    """
    layers: list[nn.Module] = [nn.Conv2d(in_channels, stem, 2), nn.GELU()]
    cin = stem
    for cout in widths:
        layers += [*_conv_block(cin, cout, pool=True), *_conv_block(cout, cout, pool=False)]
        cin = cout
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), nn.Linear(cin, embedding_dim)


def build_model(model: str, image_shape: tuple[int, int, int], embedding_dim: int, normalize: bool) -> EmbeddingNet:
    """The embedding net `model` (one of MODELS) for images of shape (C, H, W)."""
    channels, height, width = image_shape
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
    if min(height, width) < MIN_SIDE:
        raise ConfigError(f"model {model} needs images of at least {MIN_SIDE}×{MIN_SIDE} pixels, got {height}×{width}")
    if model == "mnist-net":
        backbone, head = mnist_net(channels, height, width, embedding_dim)
    elif model == "resnet18":
        backbone, head = cifar_resnet18(channels, embedding_dim)
    else:
        backbone, head = cifar_net(channels, embedding_dim)
    return EmbeddingNet(backbone, head, normalize)


def initial_model(cfg: dict[str, Any], image_shape: tuple[int, int, int], device: torch.device) -> EmbeddingNet:
    """The trial's network before its first update: model_settings(cfg)'s net for images (C, H, W), seeded with
    cfg["seed"], on `device` in channels_last (faster on the CPU as well: an MNIST step at B = 256 on 2 cores took
    291-297 ms vs 308-363 ms contiguous; median of 6 steps after 2 warm-ups, two alternating runs, commit 7f30cd4)."""
    settings = model_settings(cfg)
    torch.manual_seed(int(cfg["seed"]))
    model = build_model(settings["model"], image_shape, int(settings["embedding_dim"]), cfg["normalize"])
    return model.to(device, memory_format=torch.channels_last)


def build_optimizer(name: str, params: Any, lr: float, fused: bool = False) -> torch.optim.Optimizer:
    """Adam / AdamW (weight decay 5e-4) / SGD (momentum 0.9, Nesterov, weight decay 5e-4) at `lr`.

    `fused` selects the single-kernel implementations (for CUDA).
    """
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, fused=fused or None)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=5e-4, fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=fused or None)
    raise ConfigError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def model_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """model, embedding_dim, optimizer and lr from the config, with the defaults where it says None.

    A None model is the dataset's (DATASET_MODEL); None elsewhere is that model's default (MODEL_DEFAULTS).
    """
    model = DATASET_MODEL[cfg["dataset"]] if cfg.get("model") is None else cfg["model"]
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
    defaults = MODEL_DEFAULTS[model]
    out = {"model": model, **{key: defaults[key] if cfg[key] is None else cfg[key] for key in defaults}}
    if out["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {out['optimizer']!r}; valid: {', '.join(OPTIMIZERS)}")
    if not float(out["lr"]) > 0:
        raise ConfigError(f"lr must be > 0, got {out['lr']}")
    if int(out["embedding_dim"]) < 1:
        raise ConfigError(f"embedding_dim must be >= 1, got {out['embedding_dim']}")
    return out


def forward_flops(net: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """Floating-point operations of one image's forward pass: 2 × the multiply-adds of every conv and linear layer.

    Counted with forward hooks on a one-image batch in eval mode; normalisation, activations and pooling
    (all O(activations)) are left out. A training step costs about 3× this per sample.
    """
    macs = 0

    def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            macs += output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
        elif isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, *image_shape))
    finally:
        net.train(training)
        for hook in hooks:
            hook.remove()
    return 2 * macs
