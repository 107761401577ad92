"""docs/config.md, generated from the config table (bench/engine/config.py KEYS): `make docs` writes it."""

from __future__ import annotations

from bench.engine.config import KEYS
from bench.reporting.markdown import table


def config_markdown() -> str:
    """docs/config.md: every key of KEYS with its type, default, values and help, as a Markdown table."""
    rows = [[f"`{name}`", f"{key.type.__name__}{' or None' if key.default is None else ''}", f"`{key.default!r}`",
             ", ".join(key.values() or ()), key.help] for name, key in KEYS.items()]
    return "\n".join([
        "# Config keys", "",
        "Generated from `bench/engine/config.py` (`KEYS`) by `make docs`; `tests/test_config.py` checks that it is",
        "current. A trial is a flat dict of these keys; every key is a `python -m bench.trial` flag (dashes for",
        "underscores) and may be set in a preset's `fixed` or `per_dataset`, or be an axis. `data_dir`, `device`,",
        "`save_embeddings` and `plugins` locate a trial and are not part of its identity",
        "(bench/experiment/identity.py).", "",
        *table(["key", "type", "default", "values", "meaning"], rows), "",
    ])
