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
# the cpuinfo flags that decide torch's CPU kernels and whether bf16 is native: two CPUs of one model name (the
# workplace's "AMD EPYC") can differ in them, and so in a trial's speed and rounding
CPU_ISA_FLAGS = ("avx2", "avx512f", *CPU_BF16_FLAGS)


@cache
def cpu_isa(cpuinfo: str | None = None) -> str | None:
    """The CPU_ISA_FLAGS that the CPU has, space-joined in that order ('' for none of them), read from the first
    'flags' line of `cpuinfo` (default: this host's /proc/cpuinfo); None where there is no such line (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = next((line.split(":", 1)[-1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    return None if flags is None else " ".join(flag for flag in CPU_ISA_FLAGS if flag in flags)


def isa_text(isa: str) -> str:
    """cpu_isa's flags for a reader: as they are, or 'none of avx2, avx512f, avx512_bf16, amx_bf16' for ''."""
    return isa or f"none of {', '.join(CPU_ISA_FLAGS)}"


def cpu_has_native_bf16(isa: str | None = None) -> bool:
    """Whether a CPU computes bf16 natively: a flag of CPU_BF16_FLAGS in `isa` (cpu_isa's form; default: this
    host's)."""
    isa = cpu_isa() if isa is None else isa
    return any(flag in (isa or "").split() for flag in CPU_BF16_FLAGS)


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
