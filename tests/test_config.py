"""The config table is the one place each key is typed: flags, preset type checks and docs/config.md follow it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import Parser, config_flags
from bench.engine.config import DEFAULTS, KEYS, ConfigError, resolve
from bench.experiment.gridspec import GridError, parse_grid
from bench.reporting.reference import config_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_docs_config_is_generated_from_the_table() -> None:
    """docs/config.md is config_markdown(); regenerate it with `make docs` after changing a key."""
    assert (ROOT / "docs" / "config.md").read_text() == config_markdown()


def test_every_key_is_a_typed_flag() -> None:
    """Each key has a flag of its type (bool keys as --key / --no-key); an unset flag leaves the default."""
    parser = Parser(prog="t")
    config_flags(parser)
    args = vars(parser.parse_args(["--batch-size", "64", "--margin", "0.1", "--no-normalize", "--lr", "1e-3"]))
    assert set(args) == set(KEYS)
    assert args["batch_size"] == 64 and args["margin"] == 0.1 and args["normalize"] is False and args["lr"] == 1e-3
    assert args["seed"] is None and args["dataset"] is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--batch-size", "many"])


def test_preset_values_are_checked_against_the_table() -> None:
    """A preset's fixed key of the wrong type is refused, also where the default is None (lr)."""
    axes = {"dataset": ["mnist"], "loss": ["batch-all"], "margin": [0.2], "batch_size": [8], "seed": [0]}
    assert parse_grid({"axes": axes, "fixed": {"lr": 1e-3, "budget_samples": 64}}).fixed["lr"] == 1e-3
    with pytest.raises(GridError, match="lr must be float"):
        parse_grid({"axes": axes, "fixed": {"lr": "1e-3"}})
    with pytest.raises(GridError, match="normalize must be bool"):
        parse_grid({"axes": axes, "fixed": {"normalize": 1}})


def test_closed_keys_refuse_other_values() -> None:
    """Every key with a closed set of values refuses one outside it, naming the key."""
    for name, key in KEYS.items():
        if key.choices:
            with pytest.raises(ConfigError, match=f"unknown {name}"):
                resolve({name: "no-such-value"})
    assert resolve({})["loss"] == DEFAULTS["loss"]
