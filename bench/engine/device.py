"""The device a run uses, its synchronisation for timing, and the one rule for "this failed for lack of memory"."""

from __future__ import annotations

import re

import torch

from bench.engine.config import ConfigError

ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # a terminal colour code, as in Ray's tracebacks
# CUDA's and the CPU allocator's messages (torch: "DefaultCPUAllocator: can't allocate memory"), Ray's memory
# monitor ("Task was killed due to the node running low on memory") and a pickled OutOfMemoryError's name
OOM_PATTERN = re.compile(r"out of memory|low on memory|can't allocate memory|OutOfMemoryError", re.IGNORECASE)


def pick_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cpu', 'cuda' or 'cuda:N' as given (ConfigError if absent)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; valid: auto, cpu, cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for, but CUDA is not available here")
    return device


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a wall-clock reading covers it; nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_line(err: BaseException, limit: int = 300) -> str:
    """`Type: message`, terminal colour codes (Ray's tracebacks) dropped, whitespace collapsed to single spaces and
    cut to `limit` characters."""
    text = " ".join(ANSI_COLOUR.sub("", f"{type(err).__name__}: {err}").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_oom(err: BaseException) -> bool:
    """Whether an exception means that the work ran out of (GPU or host) memory."""
    return isinstance(err, torch.OutOfMemoryError | MemoryError) or bool(OOM_PATTERN.search(one_line(err, 10**6)))


def release_cached() -> None:
    """Hand CUDA's cached blocks back after a failure, so that the next trial or point starts clean."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
