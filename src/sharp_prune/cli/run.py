"""`sharp-prune run`: answer a question about a video file with a video LLM, pruned (and, with --compare, not).

    sharp-prune run --model llava-hf/llava-onevision-qwen2-0.5b-ov-hf --video clip.mp4 \\
        --question "What happens after the dog jumps?" --method sharp --retention 0.2 --layer 2 --compare

The work is `sharp_prune.run.run`; this module holds the options and the printed table.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from ..config import PruneConfig
from ..hf_protocol import SUPPORTED_ATTENTION
from ..models.loading import DTYPES
from ..run import RunResult, run
from .args import add_prune_arguments, output_dir, positive_int, torch_device


def format_result(result: RunResult) -> str:
    """`result` as a small text table: one row per answer (unpruned first, with `compare`)."""
    info = result.video
    cfg = result.config
    seconds = f", {info['duration_s']:.1f} s" if info.get("duration_s") else ""
    lines = [
        f"model     {result.model} ({result.model_class}, {result.device}, {result.dtype})",
        f"video     {info.get('path', '?')}: {result.frames} of {info.get('total_frames', '?')} frames, "
        f"{info.get('width', '?')}x{info.get('height', '?')}{seconds}",
        f"question  {result.question}",
        f"pruning   method={cfg['method']} retention={cfg['retention']} layer K={cfg['layer']}",
        "",
    ]
    rows = []
    if result.unpruned_answer is not None:
        rows.append(("unpruned", result.video_tokens, result.unpruned_prefill_s, result.unpruned_answer))
    rows.append((cfg["method"], result.kept_tokens, result.prefill_s, result.answer))
    width = max(len("run"), *(len(r[0]) for r in rows))
    kept_width = max(4, len(str(result.video_tokens)) * 2 + 1)
    lines.append(f"{'run':<{width}}  {'kept':>{kept_width}}  {'prefill':>9}  answer")
    for name, kept, prefill, answer in rows:
        kept_text = f"{kept}/{result.video_tokens}"
        prefill_text = f"{prefill * 1000:.0f} ms" if prefill is not None else "-"
        shown = " ".join(answer.split()) or "(empty)"
        lines.append(f"{name:<{width}}  {kept_text:>{kept_width}}  {prefill_text:>9}  {shown}")
    speedup = result.speedup
    footer = f"\nkept {result.retained_fraction:.1%} of {result.video_tokens} video tokens"
    if speedup is not None:
        footer += f"; prefill speed-up x{speedup:.2f} (unpruned / pruned time)"
    footer += f"; prefill = median of forwards after a warm-up, measured here; {result.prompt_tokens} prompt tokens."
    lines.append(footer)
    return "\n".join(lines)


def print_result(result: RunResult, file: TextIO | None = None) -> None:
    """Print `format_result(result)` to `file` (default stdout)."""
    print(format_result(result), file=file if file is not None else sys.stdout)


def add_run_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `run` subcommand on `subparsers` (from `ArgumentParser.add_subparsers`); returns its parser.

    Its `func` default runs the command and returns the exit code (0).
    """

    parser = subparsers.add_parser(
        "run",
        help="answer a question about a video file with a video LLM, pruned (and unpruned with --compare)",
        description="Answer a question about a video file with a video LLM (LLaVA-OneVision, Qwen2-VL, "
        "Qwen2.5-VL), pruning video tokens inside the LLM; --compare also answers unpruned and times both.",
    )
    parser.add_argument("--model", required=True, help="checkpoint folder or Hugging Face model id")
    parser.add_argument("--video", required=True, help="video file (any format FFmpeg reads)")
    parser.add_argument("--question", required=True, help="the question to ask about the video")
    add_prune_arguments(parser)
    parser.add_argument("--compare", action="store_true", help="also answer without pruning and compare prefill")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="answer length limit (default 64)")
    parser.add_argument("--dtype", default="auto", choices=list(DTYPES), help="weights dtype (default: checkpoint's)")
    parser.add_argument(
        "--device", type=torch_device, default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)"
    )
    parser.add_argument("--attn", default=None, choices=SUPPORTED_ATTENTION, help="attention implementation")
    parser.add_argument(
        "--prefill-repeats", type=positive_int, default=3, help="timed prefill forwards after a warm-up (default 3)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument(
        "--viz",
        type=output_dir,
        default=None,
        metavar="DIR",
        help="also draw the pruned prefill's pictures (PNG) into DIR",
    )
    parser.set_defaults(func=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    """The `run` subcommand: run with the parsed options, print the table (or JSON); returns 0."""
    config = PruneConfig(method=args.method, retention=args.retention, layer=args.layer)
    result = run(
        args.model,
        args.video,
        args.question,
        config=config,
        num_frames=args.frames,
        compare=args.compare,
        max_new_tokens=args.max_new_tokens,
        dtype=args.dtype,
        device=args.device,
        attn_implementation=args.attn,
        prefill_repeats=args.prefill_repeats,
        viz_dir=getattr(args, "viz", None),
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_result(result)
        if result.viz is not None:
            from .viz import print_written

            print_written(result.viz, result.record)
    return 0


__all__ = ["add_run_parser", "format_result", "print_result", "run_command"]
