"""The `sharp-prune bench` subcommand: options, progress bar, outputs."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from ..bench.report import plot_accuracy, print_table, write_json
from ..bench.runner import DEFAULT_METHODS, BenchOptions, run_bench, smallest_layer
from ..bench.task import ALL_QUESTION_TYPES, VARIANTS, check_task, describe
from ..config import ablations, check_layer, config_for
from ..errors import ConfigError
from ..hf_protocol import layer_kinds, layer_windows
from ..models.loading import DTYPES
from ..pretrained import PRETRAINED, load_pretrained, pretrained_config
from ..steps.sliding import check_linear_layer_k, score_layer
from .args import add_cpu_run_arguments, comma_list, decoder_layer, fraction, positive_int

logger = logging.getLogger(__name__)


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `bench` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "bench",
        help="what pruning keeps: a real LM (SmolLM2-135M, Gemma 3 270M) on the captioned-video task, every method "
        "side by side",
        description="Accuracy, agreement with the unpruned answer, KL, needle recall and prefill time ratio of "
        "every method at every retention and layer, measured in one process against the unpruned model.",
    )
    parser.add_argument("--items", type=positive_int, default=16, help="questions to ask (default 16)")
    parser.add_argument("--split", choices=("test", "validation"), default="test", help="seed set (tune on validation)")
    parser.add_argument("--methods", type=comma_list(str), default=DEFAULT_METHODS, help="comma-separated methods")
    parser.add_argument(
        "--retentions", type=comma_list(fraction), default=(0.1, 0.2, 0.3), help="comma-separated (0.1,0.2,0.3)"
    )
    parser.add_argument(
        "--model",
        choices=tuple(PRETRAINED),
        default="smollm2",
        help="the real LM: "
        + "; ".join(f"{name}: {entry.title}, default K {entry.default_layer}" for name, entry in PRETRAINED.items()),
    )
    parser.add_argument(
        "--layers",
        type=comma_list(decoder_layer),
        default=None,
        help="comma-separated layers K to sweep (default: the model's, 2 for smollm2)",
    )
    parser.add_argument(
        "--ablation", action="store_true", help=f"add each method with one component off: {', '.join(ablations())}"
    )
    parser.add_argument(
        "--task",
        choices=(*VARIANTS, "all"),
        default="redundant",
        help="task variant, or all of them one after the other (default redundant): "
        + "; ".join(f"{name}: {describe(config)}" for name, config in VARIANTS.items()),
    )
    parser.add_argument("--frames", type=positive_int, default=None, help="frames per video (default: the task's)")
    parser.add_argument("--tokens-per-frame", type=positive_int, default=None, help="(default: the task's)")
    parser.add_argument("--scenes", type=positive_int, default=None, help="scenes per video (default: the task's)")
    parser.add_argument("--choices", type=positive_int, default=None, help="candidate answers (default: the task's)")
    parser.add_argument(
        "--question-types",
        type=comma_list(str),
        default=None,
        help="comma-separated, of colour,object,place,after (default colour,object,place; 'after' asks for order)",
    )
    add_cpu_run_arguments(parser, "outputs/bench", "bench.json and bench.png")
    parser.set_defaults(func=bench_command)
    return parser


def options_from_args(args: argparse.Namespace) -> list[BenchOptions]:
    """One `BenchOptions` per task variant asked for (`--task all`: every variant), with the task's fields that
    were given on the command line replacing the variant's."""
    names = tuple(VARIANTS) if args.task == "all" else (args.task,)
    given = {
        field: value
        for field, value in (
            ("frames", args.frames),
            ("tokens_per_frame", args.tokens_per_frame),
            ("scenes", args.scenes),
            ("choices", args.choices),
            ("question_types", args.question_types),
        )
        if value is not None
    }
    runs = []
    for name in names:
        options = BenchOptions(
            items=args.items,
            split=args.split,
            methods=args.methods,
            retentions=args.retentions,
            layers=args.layers or (PRETRAINED[args.model].default_layer,),
            model=args.model,
            ablation=args.ablation,
            task=replace(VARIANTS[name], **given),
            task_variant=name if not given else f"{name} (modified: {', '.join(sorted(given))})",
            dtype=args.dtype,
            threads=args.threads,
        )
        validate(options)
        runs.append(options)
    return runs


def validate(options: BenchOptions) -> None:
    """Reject bad options before the model loads."""
    from ..bench.runner import method_config

    if options.items < 1:
        raise ConfigError(f"--items must be >= 1, got {options.items}.")
    if not options.retentions or not options.layers or not options.method_list():
        raise ConfigError("--methods, --retentions and --layers each need at least one value.")
    for method in options.method_list():
        for retention in options.retentions:
            for layer in options.layers:
                method_config(method, retention, layer)  # raises ConfigError on a bad name or value
    unknown = set(options.task.question_types) - set(ALL_QUESTION_TYPES)
    if unknown or not options.task.question_types:
        raise ConfigError(
            f"--question-types must be a non-empty subset of {ALL_QUESTION_TYPES}, got {unknown or 'none'}."
        )
    try:
        check_task(options.task)
    except ValueError as error:
        raise ConfigError(f"{error} Change --frames or --scenes.") from error
    if options.task.choices < 2:
        raise ConfigError(f"--choices must be >= 2, got {options.task.choices}.")
    check_model_layers(options.model, options.layers, options.method_list())


def check_model_layers(model: str, layers: Sequence[int], methods: Sequence[str]) -> None:
    """Every K in range for the model, and with a full-attention layer below it for the methods that read scores
    (from the model's config only: no weights are read)."""
    config = pretrained_config(model)
    title = PRETRAINED[model].title
    num_layers = config.num_hidden_layers
    windows = layer_windows(config, num_layers, title)
    kinds = layer_kinds(config, num_layers, title)
    for layer in layers:
        check_layer(layer, num_layers, title)
        check_linear_layer_k(kinds, layer, title)
        if any(config_for(method, layer=layer).query != "none" for method in methods):
            score_layer(windows, layer, title, kinds)


def bench_command(args: argparse.Namespace) -> int:
    runs = options_from_args(args)
    for options in runs:
        out = args.out if len(runs) == 1 else args.out / options.task_variant
        result = run_with_progress(options)
        result["command"] = "sharp-prune " + shlex.join(sys.argv[1:]) if sys.argv else "sharp-prune bench"
        print_table(result)
        layers = smallest_layer(result["summary"])
        if len(options.layers) > 1:
            print(
                "smallest K keeping >= 97% of unpruned accuracy at r=0.2: "
                + ", ".join(f"{m} {k}" for m, k in layers.items())
            )
        result["smallest_layer_97_at_r0.2"] = layers
        path = write_json(result, out / "bench.json")
        print(f"wrote {path}")
        if not args.no_plot:
            try:
                png = plot_accuracy(
                    result["summary"],
                    result["baseline"]["accuracy"],
                    out / "bench.png",
                    title=f"{PRETRAINED[options.model].title}, task {options.task_variant} "
                    f"({result['num_visual']} visual tokens)",
                )
                print(f"wrote {png}")
            except ImportError:
                print("matplotlib is not installed (pip install 'sharp-prune[viz]'): no plot", file=sys.stderr)
    return 0


def run_with_progress(options: BenchOptions) -> dict[str, Any]:
    """Load the model and run the benchmark with a progress bar."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    previous_threads = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        dtype = DTYPES[options.dtype]
        model, tokenizer = load_pretrained(options.model, dtype=dtype)
        started = time.perf_counter()
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task("bench", total=None)

            def progress(done: int, total: int, what: str) -> None:
                bar.update(task, completed=done, total=total, description=what)

            result = run_bench(model, tokenizer, options, progress)
        result["wall_s"] = time.perf_counter() - started
        result["machine"] = {"threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": options.dtype}
        return result
    finally:
        torch.set_num_threads(previous_threads)
