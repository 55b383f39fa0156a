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


def positive_int(text: str) -> int:
    """An argparse `type`: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    """--method, --retention, --layer and --frames, as `run` and `viz` take them (ShaRP, r = 0.2, K = 2, 32)."""
    from .selectors import available_methods

    parser.add_argument(
        "--method", default="sharp", choices=sorted(available_methods()), help="pruning method (default sharp)"
    )
    parser.add_argument("--retention", type=float, default=0.2, help="fraction of video tokens kept (default 0.2)")
    parser.add_argument("--layer", type=int, default=2, help="decoder layer K where tokens are dropped (default 2)")
    parser.add_argument(
        "--frames", type=positive_int, default=32, help="frames sampled evenly over the video (default 32)"
    )
