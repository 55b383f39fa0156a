"""`sharp-prune speed`: prefill latency and peak memory, pruned against unpruned (see `sharp_prune.measure.speed`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import variants
from ..hf_protocol import SUPPORTED_ATTENTION
from ..measure import speed as speed_module
from ..measure.shapes import SHAPES
from ..measure.speed import BASELINE, SPEED_DTYPES, SpeedOptions, run_speed
from .args import comma_list, decoder_layer, fraction, nonnegative_int, output_dir, positive_int


def options_from_args(args: argparse.Namespace) -> SpeedOptions:
    """`SpeedOptions` from the parsed `speed` subcommand."""
    return SpeedOptions(
        shape=args.shape,
        frames=args.frames,
        tokens_per_frame=args.tokens_per_frame,
        prefix_tokens=args.prefix_tokens,
        suffix_tokens=args.suffix_tokens,
        scenes=args.scenes,
        methods=args.methods,
        retentions=args.retentions,
        layer=args.layer,
        warmup=args.warmup,
        repeats=args.repeats,
        dtype=args.dtype,
        device=args.device,
        attn_implementation=args.attn,
        threads=args.threads,
        seed=args.seed,
        memory=args.memory,
        out=str(args.out),
        plot=args.plot,
    )


def _speed_command(args: argparse.Namespace) -> int:
    run_speed(options_from_args(args), progress=not args.quiet)
    return 0


def add_speed_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `speed` subcommand on `subparsers` (from `add_subparsers`); its `func` returns an exit code."""
    defaults = SpeedOptions()
    parser = subparsers.add_parser(
        "speed",
        help="prefill latency (time to first token) and peak memory, pruned vs unpruned, on random-weight models",
        description=(speed_module.__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--shape", choices=list(SHAPES), default=defaults.shape, help="model shape (random weights)")
    parser.add_argument(
        "--frames", type=positive_int, default=defaults.frames, help="video frames (default %(default)s)"
    )
    parser.add_argument(
        "--tokens-per-frame",
        type=positive_int,
        default=defaults.tokens_per_frame,
        help="visual tokens per frame (default %(default)s)",
    )
    parser.add_argument(
        "--prefix-tokens", type=nonnegative_int, default=defaults.prefix_tokens, help="text before the video"
    )
    parser.add_argument(
        "--suffix-tokens", type=positive_int, default=defaults.suffix_tokens, help="question after the video"
    )
    parser.add_argument(
        "--scenes",
        type=positive_int,
        default=None,
        help="frames repeat within this many scenes (default: every frame differs)",
    )
    parser.add_argument(
        "--methods",
        type=comma_list(str),
        default=defaults.methods,
        help=f"comma-separated methods, timed against the unpruned baseline (default {','.join(defaults.methods)}; "
        f"any of {', '.join(m for m in variants() if m != BASELINE)})",
    )
    parser.add_argument(
        "--retentions",
        type=comma_list(fraction),
        default=defaults.retentions,
        help=f"comma-separated retentions (default {','.join(f'{r:g}' for r in defaults.retentions)})",
    )
    parser.add_argument(
        "--layer", type=decoder_layer, default=defaults.layer, help="decoder layer K (default %(default)s)"
    )
    parser.add_argument(
        "--warmup",
        type=nonnegative_int,
        default=defaults.warmup,
        help="untimed forwards per configuration (default %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=defaults.repeats,
        help="timed forwards per configuration (default %(default)s)",
    )
    parser.add_argument(
        "--dtype", choices=list(SPEED_DTYPES), default=defaults.dtype, help="weights dtype (default %(default)s)"
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=defaults.device,
        help="auto (default): cuda if torch sees one",
    )
    parser.add_argument(
        "--attn",
        choices=list(SUPPORTED_ATTENTION),
        default=defaults.attn_implementation,
        help="attention implementation (default %(default)s)",
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of weights and token ids")
    parser.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the CPU memory forward (CUDA memory is free)"
    )
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="do not write the PNG")
    parser.add_argument("--out", type=output_dir, default=defaults.out, help="output folder (default %(default)s)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=_speed_command)
    return parser
