"""The experiment lock: one run per experiment folder at a time.

RESULTS/E/run.lock is created atomically (O_CREAT | O_EXCL) holding {"pid", "host", "since", "command"} and
removed when the run ends. A second run refuses with one line naming the holder. A lock whose process is gone
on this host (stale: the run was killed) is taken over with a message; a lock held from another host cannot be
checked from here, so the message says to delete the file once that run is known to be gone.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

LOCK_NAME = "run.lock"


class LockError(RuntimeError):
    """The experiment is locked by a live run; the message is one line naming it."""


def _alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(path: Path) -> dict[str, Any] | None:
    """The lock's content, or None when it vanished; an unreadable lock (a crash mid-write) reads as {}."""
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _create(path: Path, command: str) -> bool:
    """Create the lock file atomically with this process as holder; False when it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    since = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with os.fdopen(fd, "w") as file:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": since, "command": command}, file)
    return True


def acquire(experiment_dir: Path, command: str = "") -> Path:
    """Take the experiment's lock (taking over a stale one, with a message); raise LockError if it is held."""
    path = Path(experiment_dir) / LOCK_NAME
    for _ in range(20):
        if _create(path, command):
            return path
        holder = _holder(path)
        if holder is None:  # released between our attempt and the read
            continue
        if not holder:  # being written by a run that is starting now, or left unreadable by a crash
            time.sleep(0.1)
            continue
        pid, host = holder.get("pid"), holder.get("host")
        if host != socket.gethostname() or not isinstance(pid, int):
            raise LockError(f"{experiment_dir} is locked by pid {pid} on {host} since {holder.get('since')}; "
                            f"if that run is gone, delete {path}")
        if _alive(pid):
            raise LockError(f"{experiment_dir} is being run by pid {pid} on {host} since {holder.get('since')} "
                            f"({holder.get('command') or 'no command recorded'}); wait for it to finish")
        print(f"taking over the stale lock of pid {pid} on {host} (since {holder.get('since')}): that process "
              "is gone", flush=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    raise LockError(f"{path} cannot be taken (unreadable, or runs keep starting); if no run is going on, delete it")


def release(path: Path) -> None:
    """Remove the lock if this process still holds it."""
    holder = _holder(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
