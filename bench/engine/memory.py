"""Peak memory of a training window, above what the process held once its data was loaded."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import resource
import sys
from pathlib import Path

import torch


def _release_free_memory() -> None:
    """Collect Python's garbage and hand the C heap's free pages back to the OS (glibc's malloc_trim).

    Otherwise memory that earlier work freed stays resident, and training reuses it without raising the RSS.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


def _rss_mib(field: str) -> float:
    """/proc/self/status `field` (VmRSS: resident now, VmHWM: resident peak) in MiB; ru_maxrss without /proc."""
    with contextlib.suppress(OSError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith(f"{field}:")).split()[1]) / 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


class TrainingPeak:
    """peak_memory_mib: the largest peak over the training windows (start() … stop()), evaluation left out.

    - CUDA: torch.cuda.max_memory_allocated, its statistics reset at each start(), above the memory allocated
      when this object is made, once the data is loaded (so the split on the device does not count).
    - CPU (Linux): the process's peak RSS (VmHWM, reset to the current RSS at each start() through
      /proc/self/clear_refs) above its RSS when this object is made, once the data is loaded: neither the
      dataset nor what earlier work in the process peaked at counts, only what the model, the optimiser and
      training add. Free memory is handed back to the OS first (_release_free_memory), at the baseline and at
      each start(), so that training's allocations are counted even where earlier work left freed pages
      resident. Without /proc
      (macOS): the lifetime peak RSS above the lifetime peak at data load, which misses a training peak
      below an earlier one.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type != "cuda":
            _release_free_memory()
        self.baseline = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mib("VmRSS")
        self.peak = 0.0

    def start(self) -> None:
        """Open a training window: reset the device's peak statistics."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _release_free_memory()
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # Linux ≥ 4.0: VmHWM := current RSS

    def stop(self) -> float:
        """Close the window; return the largest peak so far in MiB above the baseline."""
        if self.device.type == "cuda":
            window = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            window = _rss_mib("VmHWM")
        self.peak = max(self.peak, window - self.baseline)
        return self.peak
