"""User plugins: Python files that add losses (losses.LOSSES) and data sets (bench.engine.datasets.DATASETS) to the
suite without an edit to it (docs/own-loss.md). Each file is imported once per process, by its absolute path,
and its content hash goes into the provenance of what it ran."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

LOADED: dict[str, str] = {}  # absolute path -> the first 16 hex characters of the file's sha256


class PluginError(ValueError):
    """A plugin that cannot be imported; the message is one line naming the file."""


def split(text: str) -> list[str]:
    """The paths of a comma-separated `plugins` config value ('' is none)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def load(paths: list[str]) -> dict[str, str]:
    """Import each .py file of `paths` not yet imported in this process; {absolute path: sha256[:16]} of them all."""
    resolved = [str(Path(given).expanduser().resolve()) for given in paths]
    for given, path in zip(paths, map(Path, resolved), strict=True):
        if str(path) in LOADED:
            continue
        if path.suffix != ".py" or not path.is_file():
            raise PluginError(f"plugin {given}: no such .py file (resolved: {path})")
        name = "tripletbench_plugin_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # a user's file may raise anything; name it in one line
            del sys.modules[name]
            raise PluginError(f"plugin {given}: importing it raised {type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}") from None
        LOADED[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return {path: LOADED[path] for path in resolved}
