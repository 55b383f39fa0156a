"""Argument types shared by the `sharp-prune` subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    """An argparse `type` that reads "a,b,c" into a tuple of `kind` values (empty items skipped)."""

    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(item.strip()) for item in text.split(",") if item.strip())
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"not a comma-separated list: {text!r} ({err})") from err

    return parse


def _whole_number(text: str, minimum: int, why: str = "") -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from err
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{why}must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse `type`: a whole number >= 1."""
    return _whole_number(text, 1)


def nonnegative_int(text: str) -> int:
    """An argparse `type`: a whole number >= 0."""
    return _whole_number(text, 0)


def fraction(text: str) -> float:
    """An argparse `type`: a fraction in (0, 1]."""
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from err
    if not 0.0 < value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"a retention is the fraction of video tokens kept, in (0, 1]; got {text}")
    return value


def decoder_layer(text: str) -> int:
    """An argparse `type`: a decoder layer K >= 1 (its upper bound is checked against the model's config)."""
    return _whole_number(text, 1, "K (scores at K-1, tokens dropped before K) ")


def torch_device(text: str) -> str:
    """An argparse `type`: a torch device that exists here (cpu, cuda, cuda:1, ...)."""
    import torch

    try:
        parsed = torch.device(text)
    except (RuntimeError, TypeError) as err:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; pass e.g. cpu, cuda or cuda:1") from err
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text}: torch {torch.__version__} sees no CUDA GPU here; pass --device cpu (or install a CUDA torch)"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: there are {torch.cuda.device_count()} CUDA devices here")
    elif parsed.type not in ("cpu", "meta"):
        try:
            torch.empty(0, device=parsed)
        except (RuntimeError, AssertionError) as err:
            raise argparse.ArgumentTypeError(f"device {text!r} is not available here; pass --device cpu") from err
    return text


def output_dir(text: str) -> Path:
    """An argparse `type`: a folder to write into (created later); an existing file is refused."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; pass a folder (it is created when missing)")
    return path


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    """--method, --retention, --layer and --frames, as `run` and `viz` take them (ShaRP, r = 0.2, K = 2, 32)."""
    from ..methods import available_methods

    parser.add_argument(
        "--method", default="sharp", choices=sorted(available_methods()), help="pruning method (default sharp)"
    )
    parser.add_argument("--retention", type=fraction, default=0.2, help="fraction of video tokens kept (default 0.2)")
    parser.add_argument(
        "--layer", type=decoder_layer, default=2, help="decoder layer K where tokens are dropped (default 2)"
    )
    parser.add_argument(
        "--frames", type=positive_int, default=32, help="frames sampled evenly over the video (default 32)"
    )


def add_cpu_run_arguments(parser: argparse.ArgumentParser, out: str, writes: str) -> None:
    """--dtype, --threads, --out and --no-plot, as the commands that run a real LM on the CPU (bench, probe) take
    them; `out` is the default folder, `writes` what goes into it."""
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="model dtype (default bf16)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=output_dir, default=Path(out), help=f"folder for {writes}")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
