r"""Embedding networks and optimisers, with the per-dataset defaults a trial uses when its config says None.

Defaults, and how they were chosen:
- MNIST: the source tutorial's conv net, 50-d, Adam at lr 2e-4. Measured on real MNIST on 2 CPU cores at
  commit 7f30cd4 (reports/lr_sweep/: outputs and command), final 5-NN accuracy with a 10k gallery and 5k queries:
    python -m bench.trial --dataset mnist --loss LOSS --margin 0.2 --batch-size B --budget-samples 30000 \
        --optimizer adam --lr LR --eval-queries 5000 --data-dir ../shared/data --json
    lr      batch-all B=256   batch-hard B=256       batch-hard B=64
    1e-4    0.985             0.970 (collapsed)      -
    2e-4    0.988             0.970 (collapsed)      0.990
    5e-4    0.989             0.972 (collapsed)      0.987
    1e-3    -                 0.138 (collapsed)      -
  (SGD at 0.01, batch-hard B=256: 0.953, collapsed.) Batch-hard at B=256 shrinks the embeddings to a ball
  (mean pair distances 0.001-0.007 with Adam, loss pinned at the margin) at every lr tried, yet still ranks
  well below 1e-3; at 1e-3 it collapses to a point (μ_pos = μ_neg = 0.0002), as reported with the source.
  2e-4 is as good as any and 5× below that.
- CIFAR-10: ResNet-18 with a 3×3 stride-1 stem and no max-pool, 128-d, Adam at lr 5e-4. Not measured
  yet (a ResNet-18 trial is out of reach on 2 CPU cores): to be measured on a GPU.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from bench.config import ConfigError

DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {"embedding_dim": 50, "optimizer": "adam", "lr": 2e-4},
    "cifar10": {"embedding_dim": 128, "optimizer": "adam", "lr": 5e-4},
}

OPTIMIZERS = ("adam", "adamw", "sgd")


class EmbeddingNet(nn.Module):
    """Wraps a backbone mapping images [B, C, H, W] to embeddings [B, D], L2-normalised when `normalize`."""

    def __init__(self, backbone: nn.Module, normalize: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.normalize = normalize

    def forward(self, x: Tensor) -> Tensor:
        """Embeddings [B, D] in float32 (unit rows when normalising)."""
        y = self.backbone(x).float()
        return nn.functional.normalize(y, dim=1) if self.normalize else y


def mnist_net(in_channels: int, height: int, width: int, embedding_dim: int) -> nn.Module:
    """The source tutorial's net: 3 conv (5×5, 5×5, 3×3; each ReLU + 2×2 max-pool) and 3 linear layers."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256 * (height // 8) * (width // 8), 1024), nn.ReLU(),
        nn.Linear(1024, 256), nn.ReLU(),
        nn.Linear(256, embedding_dim),
    )


def cifar_resnet18(in_channels: int, embedding_dim: int) -> nn.Module:
    """torchvision ResNet-18 for 32×32 inputs: 3×3 stride-1 stem, no max-pool, a 512→D linear head."""
    net = torchvision.models.resnet18(num_classes=embedding_dim)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def build_model(dataset: str, image_shape: tuple[int, int, int], embedding_dim: int, normalize: bool) -> EmbeddingNet:
    """The dataset's embedding net for images of shape (C, H, W)."""
    channels, height, width = image_shape
    if dataset == "mnist":
        if height < 8 or width < 8:
            raise ConfigError(f"the mnist net needs images of at least 8×8 pixels, got {height}×{width}")
        backbone = mnist_net(channels, height, width, embedding_dim)
    else:
        backbone = cifar_resnet18(channels, embedding_dim)
    return EmbeddingNet(backbone, normalize)


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
    """embedding_dim, optimizer and lr from the config, with the dataset's default where it says None."""
    defaults = DATASET_DEFAULTS[cfg["dataset"]]
    out = {key: defaults[key] if cfg[key] is None else cfg[key] for key in defaults}
    if out["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {out['optimizer']!r}; valid: {', '.join(OPTIMIZERS)}")
    if not float(out["lr"]) > 0:
        raise ConfigError(f"lr must be > 0, got {out['lr']}")
    if int(out["embedding_dim"]) < 1:
        raise ConfigError(f"embedding_dim must be >= 1, got {out['embedding_dim']}")
    return out
