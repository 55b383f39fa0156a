"""`sharp-prune viz`: the pictures of one pruned prefill of a video LLM, or the accuracy picture of a bench result.

    sharp-prune viz --video clip.mp4 --model llava-hf/llava-onevision-qwen2-0.5b-ov-hf \\
        --question "What happens?" --method sharp --retention 0.2 --layer 2 --frames 32 --out outputs/viz
    sharp-prune viz --bench outputs/bench/bench.json --out outputs/viz
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ..config import PruneConfig
from ..errors import InputError
from ..hf_protocol import SUPPORTED_ATTENTION
from ..models.loading import DTYPES
from ..viz.from_video import visualise_video
from .args import add_prune_arguments, output_dir, positive_int, torch_device

logger = logging.getLogger(__name__)


def add_viz_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `viz` subcommand on `subparsers` (from `ArgumentParser.add_subparsers`); returns its parser."""

    parser = subparsers.add_parser(
        "viz",
        help="pictures of what pruning kept (scores per frame, kept tokens on the frames, segments), or of a "
        "bench result",
        description="With --video: answer a question about a video once with pruning (scores recorded) and draw "
        "scores.png (per-frame scores before/after PosC with their positional trend), overlay.png (kept tokens on "
        "the frames) and timeline.png (SegM similarity, cuts, kept tokens per frame). With --bench: draw "
        "accuracy.png (accuracy vs retention per method) from a saved bench.json.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="video file to run the model on (needs --model and --question)")
    source.add_argument("--bench", type=Path, metavar="RESULT.json", help="bench.json written by `sharp-prune bench`")
    parser.add_argument("--out", type=output_dir, default=Path("outputs/viz"), help="folder for the PNGs (outputs/viz)")
    parser.add_argument("--model", help="checkpoint folder or Hugging Face model id (with --video)")
    parser.add_argument("--question", help="the question to ask about the video (with --video)")
    add_prune_arguments(parser)
    parser.add_argument(
        "--sample-frames", type=positive_int, default=16, help="frames shown in overlay.png, evenly spaced (16)"
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=32, help="answer length limit (default 32)")
    parser.add_argument("--dtype", default="auto", choices=list(DTYPES), help="weights dtype (default: checkpoint's)")
    parser.add_argument(
        "--device", type=torch_device, default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)"
    )
    parser.add_argument("--attn", default=None, choices=SUPPORTED_ATTENTION, help="attention implementation")
    parser.set_defaults(func=viz_command)
    return parser


def viz_command(args: argparse.Namespace) -> int:
    """The `viz` subcommand: write the pictures, print their paths; returns 0 (2 when matplotlib is missing)."""
    from ..viz.write import print_written, write_bench

    try:
        if args.bench is not None:
            print_written({"accuracy": write_bench(args.bench, args.out)})
            return 0
        missing = [flag for flag, value in (("--model", args.model), ("--question", args.question)) if not value]
        if missing:
            raise InputError(f"--video needs {' and '.join(missing)} as well.")
        config = PruneConfig(method=args.method, retention=args.retention, layer=args.layer)
        answer, record, written = visualise_video(
            args.model,
            args.video,
            args.question,
            config,
            args.out,
            num_frames=args.frames,
            max_frames=args.sample_frames,
            max_new_tokens=args.max_new_tokens,
            dtype=args.dtype,
            device=args.device,
            attn_implementation=args.attn,
        )
    except ImportError as err:  # matplotlib or PyAV missing
        print(f"sharp-prune: error: {err}", file=sys.stderr)
        return 2
    kept = f"{config.method} kept {record.budget[0]} of {record.num_visual[0]} video tokens"
    print(f"{kept}; answer: {answer or '(empty)'}")
    print_written(written, record)
    return 0
