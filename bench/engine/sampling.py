"""Batch index plans for a whole trial, drawn up front on a seeded torch.Generator: [steps, B] int64.

- `random`: the concatenation of independent shuffles of range(N) (one per epoch), cut into
  consecutive batches of B; a batch that straddles two epochs may repeat an index.
- `pk` (Hermans et al. 2017): each batch is P = B / K slots of K samples from one class. When the data
  has at least P classes, a batch has P distinct classes drawn uniformly. When it has fewer
  (e.g. MNIST's 10 classes at B = 256, K = 4), the slots take the classes of ⌈P / C⌉ concatenated
  shuffles of the class list, so every class fills ⌊P / C⌋ or ⌈P / C⌉ slots of the batch.
  A class's slots take K members at a time from successive shuffles of the class, each cut to a
  multiple of K, so a slot repeats no member, and members are used equally often up to one shuffle.
  A class with fewer than K members fills each slot with one shuffle of all its members, tiled to K
  (sampling with replacement). The member shuffles are drawn after the class order of every step, so two
  budgets of one seed share the class order of their first steps but not the members (a `random` plan's
  prefix is the same at every budget).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bench.engine.config import ConfigError


def _shuffles(count: int, n: int, generator: torch.Generator) -> Tensor:
    """`count` independent permutations of range(n), concatenated: int64 [count * n]."""
    keys = torch.rand(count, n, generator=generator, dtype=torch.float64)
    return keys.argsort(dim=1, stable=True).flatten()


def random_batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Tensor:
    """Indices [steps, batch_size] into range(n): consecutive chunks of concatenated per-epoch shuffles."""
    epochs = math.ceil(steps * batch_size / n)
    return _shuffles(epochs, n, generator)[: steps * batch_size].view(steps, batch_size)


def pk_batches(
    labels: Tensor, batch_size: int, samples_per_class: int, steps: int, generator: torch.Generator
) -> Tensor:
    """Indices [steps, batch_size] into labels [N]: per batch, P = B / K class slots of K samples each."""
    k = samples_per_class
    if batch_size % k:
        raise ConfigError(f"batch_size {batch_size} is not a multiple of samples_per_class {k} (pk sampler)")
    labels = labels.cpu()
    classes, class_of = torch.unique(labels, return_inverse=True)
    n_classes, slots = len(classes), batch_size // k
    class_order = _shuffles(steps * math.ceil(slots / n_classes), n_classes, generator)
    slot_class = class_order.view(steps, -1)[:, :slots].flatten()  # class position of each slot
    slots_per_class = torch.bincount(slot_class, minlength=n_classes)
    streams = []
    for c in range(n_classes):
        members = torch.nonzero(class_of == c).flatten()
        n_slots, n = int(slots_per_class[c]), len(members)
        if n >= k:
            passes = math.ceil(n_slots * k / (n - n % k))
            shuffled = members[_shuffles(passes, n, generator)].view(passes, n)[:, : n - n % k]
            streams.append(shuffled.flatten()[: n_slots * k])
        else:  # one shuffle per slot, tiled to K
            shuffled = members[_shuffles(n_slots, n, generator)].view(n_slots, n)
            streams.append(shuffled[:, torch.arange(k) % n].flatten())
    stream_start = torch.cumsum(slots_per_class * k, 0) - slots_per_class * k
    order = torch.argsort(slot_class, stable=True)
    slot_start = torch.cumsum(slots_per_class, 0) - slots_per_class
    rank = torch.empty_like(slot_class)
    rank[order] = torch.arange(len(slot_class)) - slot_start[slot_class[order]]
    positions = (stream_start[slot_class] + rank * k)[:, None] + torch.arange(k)
    return torch.cat(streams)[positions].view(steps, batch_size)


def make_batches(
    sampler: str, labels: Tensor, batch_size: int, samples_per_class: int, steps: int, generator: torch.Generator
) -> Tensor:
    """The trial's batch plan [steps, batch_size] (CPU int64) for sampler 'random' or 'pk'."""
    if sampler == "random":
        return random_batches(len(labels), batch_size, steps, generator)
    if sampler == "pk":
        return pk_batches(labels, batch_size, samples_per_class, steps, generator)
    raise ConfigError(f"unknown sampler {sampler!r}; valid: random, pk")
