"""The `sharp-prune probe` subcommand: where does the question signal appear, per layer and score variant?"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..bench.probe import (
    RANDOM,
    VARIANTS,
    Prompt,
    check_layers,
    item_from_prompt,
    item_from_task,
    parse_layers,
    read_prompts,
    run_probe,
)
from ..bench.task import SPLIT_SEEDS, check_task, describe, make_items
from ..bench.task import VARIANTS as TASKS
from ..errors import ConfigError
from ..models.loading import DTYPES
from ..pretrained import PRETRAINED, pretrained_config
from .args import add_cpu_run_arguments, positive_int

LEGEND = (
    "Cells: rank of the relevant frames x100 [95% bootstrap interval over items]: 0 = they score above every "
    "other frame, 50 = random, 100 = below every other; * = beats random (upper bound < 50); min: the smallest "
    "such K (none: no K). K = scores of decoder layer K-1, what a method with that K selects on. last: last "
    "token's row (FastV); text: text rows after the video (ShaRP); +posc: minus the blank-frame prior; "
    "last-norope: RoPE removed (FEATHER). Frame score = mean of its tokens' scores; no SegM mask."
)
SLIDING_NOTE = (
    "s: decoder layer K-1 is a sliding-window layer: scored with the full causal softmax (beyond the window the model "
    "does not attend); the engine cannot use it, and it does not count for min."
)


def layers_type(text: str) -> tuple[int, ...]:
    """An argparse `type`: "1-15", "2,4,6" or "1-3,8"."""
    try:
        return parse_layers(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_probe_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `probe` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "probe",
        help="layer probe: at which layer K, and with which score, do the question's frames stand out?",
        description="For each layer K (default 1..L/2) and score variant (last token, text query, with and without "
        "PosC, RoPE removed): the rank of the relevant frames among all frames (0 = top, 0.5 = random) with a 95% "
        "interval over items, and the smallest K where each score beats random. Writes probe.json and probe.png.",
    )
    parser.add_argument("--model", choices=tuple(PRETRAINED), default="smollm2", help="pretrained LM (default smollm2)")
    parser.add_argument(
        "--task",
        choices=(*TASKS, "all"),
        default=None,
        help="bench task variant, or all (default redundant; not with --prompts): "
        + "; ".join(f"{name}: {describe(config)}" for name, config in TASKS.items()),
    )
    parser.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help='your own prompts, JSON lines: {"frames": ["text of frame 0", ...], "question": "...", "relevant": '
        "[frame indices]}",
    )
    parser.add_argument(
        "--items", type=positive_int, default=16, help="task items to probe (default 16; --prompts probes every prompt)"
    )
    parser.add_argument(
        "--split", choices=tuple(SPLIT_SEEDS), default="validation", help="task seeds (default validation)"
    )
    parser.add_argument(
        "--layers", type=layers_type, default=None, help="K to probe: 1-15 or 2,4,6 (default 1..L/2 of the model)"
    )
    add_cpu_run_arguments(parser, "outputs/probe", "probe.json, probe.png")
    parser.set_defaults(func=probe_command)
    return parser


@dataclass(frozen=True)
class ProbeOptions:
    """What to probe, checked before any weights load (`options_from_args`)."""

    model: str
    tasks: tuple[str, ...]
    prompts: tuple[Prompt, ...] | None
    prompts_path: str | None
    items: int
    split: str
    layers: tuple[int, ...]
    num_layers: int
    dtype: str
    threads: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "tasks": list(self.tasks),
            "prompts": self.prompts_path,
            "items": self.items,
            "split": self.split,
            "layers": list(self.layers),
            "dtype": self.dtype,
            "threads": self.threads,
        }


def options_from_args(args: argparse.Namespace) -> ProbeOptions:
    """Check every argument (reading the model's config, not its weights); `ConfigError` says what to change."""
    if args.prompts is not None and args.task is not None:
        raise ConfigError("--task and --prompts exclude each other: probe either the bench task or your prompts.")
    prompts = tuple(read_prompts(args.prompts)) if args.prompts is not None else None
    tasks: tuple[str, ...] = ()
    if prompts is None:
        tasks = tuple(TASKS) if args.task == "all" else (args.task or "redundant",)
        for name in tasks:
            check_task(TASKS[name])
    try:
        config = pretrained_config(args.model)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"--model {args.model}: {err}") from err
    num_layers = int(config.num_hidden_layers)
    layers = args.layers if args.layers is not None else tuple(range(1, num_layers // 2 + 1))
    check_layers(layers, num_layers, PRETRAINED[args.model].title)
    return ProbeOptions(
        model=args.model,
        tasks=tasks,
        prompts=prompts,
        prompts_path=str(args.prompts) if args.prompts is not None else None,
        items=args.items,
        split=args.split,
        layers=tuple(layers),
        num_layers=num_layers,
        dtype=args.dtype,
        threads=args.threads,
    )


def load_model(name: str, dtype: str) -> tuple[Any, Any]:
    """The pretrained model and its tokenizer (a seam for the tests)."""
    from ..pretrained import load_pretrained

    return load_pretrained(name, dtype=DTYPES[dtype])


def probe(options: ProbeOptions, model: Any, tokenizer: Any) -> dict[str, Any]:
    """Run the probe for every task (or the prompts file) of `options`; the JSON-able result."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    sources: list[tuple[str, list[Any]]] = []
    if options.prompts is not None:
        sources.append((Path(options.prompts_path).name, [item_from_prompt(tokenizer, p) for p in options.prompts]))
    for name in options.tasks:
        items = make_items(tokenizer, options.items, options.split, TASKS[name])
        sources.append((name, [item_from_task(item) for item in items]))
    runs = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as bar:
        for name, items in sources:
            task = bar.add_task(f"probe {name}", total=len(items))
            started = time.perf_counter()
            run = run_probe(model, items, options.layers, lambda done, total, t=task: bar.update(t, completed=done))
            runs.append({"name": name, **run, "wall_s": time.perf_counter() - started})
    return {
        "options": options.to_dict(),
        "model": {"name": options.model, "title": PRETRAINED[options.model].title, "num_layers": options.num_layers},
        "variants": list(VARIANTS),
        "rank": "mean over the relevant frames of the share of the other frames scoring higher (ties half): "
        "0 = top, 0.5 = random, 1 = bottom; interval: 95% percentile bootstrap over items; beats random: high < 0.5",
        "runs": runs,
    }


def _cell(cell: dict[str, Any]) -> str:
    star = "*" if cell["beats_random"] else " "
    return f"{100 * cell['mean']:.0f} [{100 * cell['low']:.0f},{100 * cell['high']:.0f}]{star}"


def _span(values: list[int]) -> str:
    """1, 2 or 3 distinct values as "a/b/c", more as "min-max" (prompts files mix sizes)."""
    return "/".join(map(str, values)) if len(values) <= 3 else f"{min(values)}-{max(values)}"


def print_table(result: dict[str, Any], console: Any = None) -> None:
    """Per run, a table (a row per K, a column per variant, a last row with the smallest K that beats random) that
    fits 80 columns, and a legend."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"{result['model']['title']}: where the relevant frames rank, per layer K", markup=False)
    sliding = False
    for run in result["runs"]:
        console.print(
            f"{run['name']}: {run['items']} items, {_span(run['frames'])} frames ({_span(run['relevant_frames'])} "
            f"relevant), {_span(run['num_visual'])} video tokens",
            markup=False,
        )
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
        table.add_column("K", justify="right", no_wrap=True)
        for variant in VARIANTS:
            table.add_column(variant, justify="right", no_wrap=True)
        rows = run["layers"]
        for number, row in enumerate(rows):
            mark = "" if row["attention"] == "full" else " s"
            sliding = sliding or bool(mark)
            cells = (_cell(row["variants"][v]) for v in VARIANTS)
            table.add_row(f"{row['layer']}{mark}", *cells, end_section=number == len(rows) - 1)
        smallest = run["smallest_layer"]
        table.add_row("min", *(str(smallest[v]) if smallest[v] is not None else "none" for v in VARIANTS))
        console.print(table)
    console.print(LEGEND, markup=False)
    if sliding:
        console.print(SLIDING_NOTE, markup=False)


def probe_command(args: argparse.Namespace) -> int:
    options = options_from_args(args)  # every check before the weights load
    previous_threads = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        started = time.perf_counter()
        model, tokenizer = load_model(options.model, options.dtype)
        result = probe(options, model, tokenizer)
        result["wall_s"] = time.perf_counter() - started
        result["machine"] = {"threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": options.dtype}
    finally:
        torch.set_num_threads(previous_threads)
    result["command"] = "sharp-prune " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "sharp-prune probe"
    print_table(result)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "probe.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    if not args.no_plot:
        try:
            from ..viz.probe import plot_probe

            title = f"{result['model']['title']}: where the relevant frames rank (random = {RANDOM})"
            print(f"wrote {plot_probe(result['runs'], args.out / 'probe.png', title)}")
        except ImportError:
            print("matplotlib is not installed (pip install 'sharp-prune[viz]'): no plot", file=sys.stderr)
    return 0
