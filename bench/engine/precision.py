"""Numerics of a trial: which precision `auto` means on a device, and the autocast context for it.

- `fp32`: everything in float32.
- `bf16`: bf16 autocast for the network's forward pass (matmuls and convolutions); the loss, the embedding
  head's normalisation and the optimiser stay in float32.
- `auto`: bf16 on CUDA, and on CPUs with native bf16 arithmetic (avx512_bf16 or AMX), fp32 otherwise.
"""

from __future__ import annotations

import contextlib
from functools import cache
from pathlib import Path

import torch

from bench.engine.config import ConfigError

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux: a cpuinfo flag in CPU_BF16_FLAGS)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return any(flag in flags.split() for flag in CPU_BF16_FLAGS)


def resolve_precision(requested: str, device: torch.device) -> str:
    """'fp32' or 'bf16': what `requested` ('auto', 'fp32', 'bf16') runs as on `device`."""
    if requested == "auto":
        return "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"
    if requested not in ("fp32", "bf16"):
        raise ConfigError(f"unknown precision {requested!r}; valid: auto, fp32, bf16")
    return requested


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's context: bf16 autocast on `device` for 'bf16', nothing for 'fp32'."""
    return torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")
