"""Embedding networks and optimisers, and the defaults a trial uses where its config says None.

Every model is a backbone to features and a linear head to the D-d embedding; the head and the L2
normalisation run in fp32 with autocast disabled (EmbeddingNet), so bf16 autocast never quantises the
embeddings. Models (config `model`; None = the dataset's, bench/engine/datasets.py):
- mnist-net: the source tutorial's conv net (3 conv + 3 linear layers);
- resnet18: torchvision's ResNet-18 with a 3×3 stride-1 stem and no max-pool (for the GPU presets);
- cifar-net: a small CIFAR-10 net after airbench's layout (Keller Jordan's CIFAR-10 speedruns): a 2×2 stem conv
  (24 channels) and GELU, then three blocks of widths CIFAR_NET_WIDTHS, each conv3×3 → max-pool 2 → BN → GELU →
  conv3×3 → BN → GELU (pooling before the BN makes BN and GELU 4× cheaper), a global max-pool and the head.
MODEL_DEFAULTS holds each model's embedding size, optimiser and learning rate, chosen on the validation split
(reports/README.md: the width comparison behind cifar-net, the lr sweep, the step throughput of each model).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from bench.engine.config import MODELS, ConfigError
from bench.engine.datasets import DATASETS

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
    import torchvision  # imported by import_model_code before any memory baseline (already loaded then)

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


def import_model_code(model: str) -> None:
    """Import the library that builds `model` (torchvision for resnet18), which is not imported at start-up: it
    costs about 2 s of CPU in every process, most of which build no ResNet. Called before a training-memory
    baseline (bench.engine.memory.TrainingPeak), so that module code never counts as training memory."""
    if model == "resnet18":
        import torchvision  # noqa: F401


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
    cfg["seed"], on `device` in channels_last (faster on the CPU as well; reports/README.md)."""
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

    A None model is the dataset's (bench/engine/datasets.py); None elsewhere is that model's default (MODEL_DEFAULTS).
    """
    model = DATASETS[cfg["dataset"]].model if cfg.get("model") is None else cfg["model"]
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
