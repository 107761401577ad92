"""Where a result came from: date, commit, hardware and versions, and for a trial the node and resources it ran on."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import math
import os
import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

from bench.engine import plugins
from bench.engine.precision import cpu_isa, isa_text

THREADS = re.compile(r" \(\d+ threads?\)$")  # the thread count that a CPU's `hardware` name ends with
OUTPUTS = ("results", "reports")  # what runs write into the checkout: never code, so never "dirty"


def git_commit(root: Path | None = None) -> str:
    """The checkout's HEAD commit, with '-dirty' if tracked files outside OUTPUTS changed (a grid rewrites its
    results/<experiment>/grid.json when it grows); 'unknown' outside git. `root`: the checkout (default: this one)."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *(f":!{o}" for o in OUTPUTS)],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def cpu_model() -> str:
    """This host's CPU model name (/proc/cpuinfo's 'model name', else the platform's processor or machine)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_kind(hardware: str, isa: str | None) -> str:
    """A CPU's `hardware` name with its cpu_isa flags before the thread count: 'AMD EPYC (1 thread)' and 'avx2' →
    'AMD EPYC [avx2] (1 thread)' (isa_text's words for none); the name as it is where the flags are not recorded."""
    if isa is None:
        return hardware
    found = THREADS.search(hardware)
    cut = found.start() if found else len(hardware)
    return f"{hardware[:cut]} [{isa_text(isa)}]{hardware[cut:]}"


def hardware(device: str | torch.device = "cpu", threads: int | None = None) -> str:
    """A readable name of the device: the GPU's name on CUDA, else the CPU model and the thread count (`threads`,
    e.g. what a trial ran with; default: torch's count now)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads() if threads is None else threads
    return f"{cpu_model()} ({threads} thread{'' if threads == 1 else 's'})"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(device: str | torch.device = "cpu", threads: int | None = None) -> dict[str, Any]:
    """Date (UTC), git commit, hardware (with `threads`, see hardware), the host CPU's instruction sets that decide
    kernels and native bf16 (`cpu_isa`, bench.engine.precision.cpu_isa), device, library versions, the host's load
    average and CPU count (see load_average), and the plugins imported (path and content hash), flat JSON."""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git_commit(),
        "hardware": hardware(device, threads),
        "cpu_isa": cpu_isa(),
        "device": str(torch.device(device)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "ray": _version("ray"),
        "numpy": _version("numpy"),
        "load_average": load_average(),
        "cpus": os.cpu_count(),
        **({"plugins": "; ".join(f"{path} sha256 {digest}" for path, digest in plugins.LOADED.items())}
           if plugins.LOADED else {}),
    }


def load_average() -> float | None:
    """The host's 1-minute load average when the result was written (None where the OS has none): above `cpus`,
    other work shared the machine with the timed run."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def local_placement(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Where a trial of the local backend ran: this host, all its CPUs (and its GPU on CUDA), one trial at a time."""
    host = socket.gethostname()
    gpu = 1 if torch.device(device).type == "cuda" else 0
    return {"node": {"node_id": host, "hostname": host}, "resources": {"cpu": os.cpu_count() or 1, "gpu": gpu},
            "concurrent_trials": 1}


def ray_placement(n_trials: int) -> dict[str, Any]:
    """Where the calling Ray trial runs: Ray's node id and hostname, the CPUs and GPUs Ray reserved for it, and
    how many trials of that size its node can hold at once (its CPUs and GPUs over the reservation, capped at
    the grid's `n_trials`)."""
    import ray

    context = ray.get_runtime_context()
    node_id = context.get_node_id()
    assigned = context.get_assigned_resources()
    cpu, gpu = assigned.get("CPU", 0.0), assigned.get("GPU", 0.0)
    total = next((node["Resources"] for node in ray.nodes() if node["NodeID"] == node_id), {})
    fits = [math.floor(total.get(name, 0.0) / need + 1e-9) for name, need in (("CPU", cpu), ("GPU", gpu)) if need > 0]
    return {"node": {"node_id": node_id, "hostname": socket.gethostname()}, "resources": {"cpu": cpu, "gpu": gpu},
            "concurrent_trials": min([n_trials, *fits])}
