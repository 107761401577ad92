"""What every command line of the suite shares."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from bench.engine.config import KEYS


class Parser(argparse.ArgumentParser):
    """argparse without prefix abbreviations (--budget-sample is not --budget-samples) that reports a usage
    error as one line on stderr and exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def int_list(text: str) -> list[int]:
    """An argparse type: comma-separated integers ≥ 2 (batch sizes, class counts)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"expected integers ≥ 2, got {text!r}")
    return values


def config_flags(parser: argparse.ArgumentParser, required: Iterable[str] = ()) -> None:
    """A flag per config key of bench.engine.config.KEYS (dashes for underscores; a bool key as --key / --no-key),
    typed and with the key's values and help, default None (unset: the config's default applies)."""
    required = set(required)
    for name, key in KEYS.items():
        flag = "--" + name.replace("_", "-")
        default = "required" if name in required else f"default {key.default!r}"
        values = "" if key.values() is None else f"; one of {', '.join(key.values())}"
        text = f"{key.help}{values} ({default})"
        if key.type is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=name, type=key.type, default=None, help=text.replace("%", "%%"))
