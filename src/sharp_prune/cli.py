"""The `sharp-prune` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from .bench.command import add_bench_parser
from .run import add_run_parser
from .speed import add_speed_parser
from .viz.command import add_viz_parser


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(retention=args.retention, layer=args.layer)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sharp-prune", description="Visual-token pruning inside video LLMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="SmolLM2 answers over a long caption 'video', with and without pruning")
    demo.add_argument("--retention", type=float, default=0.3, help="fraction of visual tokens kept (default 0.3)")
    demo.add_argument("--layer", type=int, default=2, help="decoder layer K where tokens are dropped (default 2)")
    demo.set_defaults(func=_demo)
    add_bench_parser(sub)
    add_run_parser(sub)
    add_speed_parser(sub)
    add_viz_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"sharp-prune: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
