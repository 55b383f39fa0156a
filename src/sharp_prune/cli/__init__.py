"""The `sharp-prune` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from ..errors import SharpPruneError
from .args import decoder_layer, fraction
from .bench import add_bench_parser
from .probe import add_probe_parser
from .run import add_run_parser
from .speed import add_speed_parser
from .viz import add_viz_parser


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(retention=args.retention, layer=args.layer)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sharp-prune", description="Visual-token pruning inside video LLMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    parser.add_argument("--traceback", action="store_true", help="print the traceback of an error, too")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="SmolLM2 answers over a long caption 'video', with and without pruning")
    demo.add_argument("--retention", type=fraction, default=0.3, help="fraction of visual tokens kept (default 0.3)")
    demo.add_argument(
        "--layer", type=decoder_layer, default=2, help="decoder layer K where tokens are dropped (default 2)"
    )
    demo.set_defaults(func=_demo)
    add_bench_parser(sub)
    add_probe_parser(sub)
    add_run_parser(sub)
    add_speed_parser(sub)
    add_viz_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; every failure ends as ``sharp-prune: error: ...`` with exit status 2.

    Bad arguments are refused by argparse (status 2, its usage message); anything raised while a command runs is
    printed as one line (``--traceback`` shows the traceback as well).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("sharp-prune: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the command line reports every failure the same way
        if args.traceback:
            traceback.print_exc()
        print(f"sharp-prune: error: {_describe(err)}", file=sys.stderr)
        return 2


def _describe(err: BaseException) -> str:
    """The library's own errors and the usual suspects speak for themselves; others are named as unexpected."""
    message = str(err).strip() or type(err).__name__
    if isinstance(err, (SharpPruneError, ValueError, TypeError, OSError, ImportError)):
        return message
    return (
        f"unexpected {type(err).__name__}: {message} (rerun with --traceback and report it at the project's "
        "issue tracker)"
    )


if __name__ == "__main__":
    sys.exit(main())
