"""The training step, shared by the trial's loop (bench/trial.py) and the step benchmark (bench/step_benchmark.py),
so that both run and time the same code.

    loss_fn, loss_parameters = training_loss(cfg, classes, device)   # the optimiser trains both
    x = batch_input(x_train, batch, mean, std, generator, augmenting)
    embeddings, loss = train_step(model, optimizer, loss_fn, x, labels, margin, precision, lr)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from bench.engine.data import augment, normalize
from bench.engine.models import model_settings
from bench.engine.precision import autocast
from losses import CONTROLS, LOSSES

Loss = Callable[..., Tensor]


def training_loss(cfg: dict[str, Any], classes: int, device: torch.device) -> tuple[Loss, list[nn.Parameter]]:
    """The loss of a resolved config, f(embeddings [B, D], labels [B], margin, check_finite), and the parameters of
    its own for the optimiser: none for a triplet loss (losses.LOSSES); for a control (losses.CONTROLS), its module
    over labels 0 … classes − 1 at the config's embedding size and temperature, initialised from the config's seed."""
    if cfg["loss"] not in CONTROLS:
        return LOSSES[cfg["loss"]], []
    head = CONTROLS[cfg["loss"]](classes, int(model_settings(cfg)["embedding_dim"]), float(cfg["temperature"]),
                                 torch.Generator().manual_seed(int(cfg["seed"]))).to(device)

    def loss_fn(embeddings: Tensor, labels: Tensor, margin: float, check_finite: bool = True) -> Tensor:
        return head(embeddings, labels, check_finite)  # a control has no margin

    return loss_fn, list(head.parameters())


def batch_input(x_train: Tensor, batch: Tensor, mean: Tensor, std: Tensor, generator: torch.Generator,
                augmenting: bool) -> Tensor:
    """The training input [B, C, H, W] of plan row `batch` (indices [B] into uint8 x_train [N, C, H, W]): gathered,
    augmented when `augmenting` (CIFAR-10, random draws from `generator`), normalised, channels_last."""
    x = x_train[batch]
    x = normalize(augment(x, generator) if augmenting else x, mean, std)
    return x.contiguous(memory_format=torch.channels_last)


def train_step(forward: Callable[[Tensor], Tensor], optimizer: torch.optim.Optimizer, loss_fn: Loss, x: Tensor,
               labels: Tensor, margin: float, precision: str, lr: float) -> tuple[Tensor, Tensor]:
    """One update at `lr`: the forward pass under `precision` (bench.engine.precision), the loss in fp32 whatever ran in
    the forward pass, zero_grad, backward, optimiser step. Returns the embeddings [B, D] (fp32, graph attached)
    and the loss (a detached scalar, left on the device), non-finite whenever an embedding is: the trial's divergence
    check reads it, and a loss may map a NaN embedding to a finite value (by leaving its terms out, say)."""
    with autocast(precision, x.device):
        embeddings = forward(x)
    embeddings = embeddings.float()
    loss = loss_fn(embeddings, labels, margin, check_finite=False)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return embeddings, loss.detach() + embeddings.detach().sum() * 0
