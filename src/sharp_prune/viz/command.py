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

import torch

from ..cli_args import add_prune_arguments, output_dir, positive_int, torch_device
from ..config import PruneConfig
from ..errors import InputError
from .figure import require_matplotlib

logger = logging.getLogger(__name__)


def add_viz_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `viz` subcommand on `subparsers` (from `ArgumentParser.add_subparsers`); returns its parser."""
    from ..run import ATTN_IMPLEMENTATIONS, DTYPES

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
    parser.add_argument("--attn", default=None, choices=ATTN_IMPLEMENTATIONS, help="attention implementation")
    parser.set_defaults(func=viz_command)
    return parser


def visualise_video(
    model: str | Path,
    video: str | Path,
    question: str,
    config: PruneConfig,
    out_dir: str | Path,
    num_frames: int = 32,
    max_frames: int = 16,
    max_new_tokens: int = 32,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
) -> tuple[str, Any, dict[str, Path]]:
    """Answer `question` about `video` once with pruning (scores recorded) and write the pictures.

    One generation (whose prefill is recorded), no timing: cheaper than `run(..., viz_dir=...)`.
    Every check (matplotlib, question, video) runs before the model loads.

    Returns:
        (answer, the `PruneRecord`, {picture: path}).
    """
    from ..engine import apply
    from ..run import build_inputs, check_layer_fits, generate_answer, inputs_on_model, load_model
    from ..video import read_video
    from .write import write_all

    require_matplotlib()
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question is empty; pass the question to ask about the video, e.g. 'What happens?'.")
    config = config.replace(record_scores=True)
    clip = read_video(video, num_frames)
    check_layer_fits(model, config.layer)
    logger.info("loading %s", model)
    loaded, processor = load_model(model, dtype=dtype, device=device, attn_implementation=attn_implementation)
    inputs = inputs_on_model(build_inputs(processor, clip, question), loaded)
    handle = apply(loaded, config)
    try:
        answer = generate_answer(loaded, processor, inputs, max_new_tokens)
        record = handle.last
    finally:
        handle.remove()
    if record is None:
        raise InputError("the model ran without pruning anything (no video tokens found in the prompt?).")
    return answer, record, write_all(record, clip.frames, out_dir, max_frames=max_frames)


def viz_command(args: argparse.Namespace) -> int:
    """The `viz` subcommand: write the pictures, print their paths; returns 0 (2 when matplotlib is missing)."""
    from .write import print_written, write_bench

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
