"""Argument types shared by the `sharp-prune` subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    """An argparse `type` that reads "a,b,c" into a tuple of `kind` values (empty items skipped)."""

    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(item.strip()) for item in text.split(",") if item.strip())
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"not a comma-separated list: {text!r} ({err})") from err

    return parse
