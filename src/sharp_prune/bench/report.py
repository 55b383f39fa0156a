"""Presenting bench results: a terminal table, the JSON file, the accuracy-vs-retention plot.

The plot is `sharp_prune.viz.plot_accuracy` (shared with `sharp-prune viz --bench`), re-exported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..viz.plots import plot_accuracy

__all__ = ["plot_accuracy", "print_table", "write_json"]


LEGEND = (
    "acc: accuracy, % [95% bootstrap interval over items]; d unpr: accuracy minus the unpruned model's on the same "
    "items, points [interval]; agree: same answer as unpruned, %; KL: of the answer distribution from unpruned; "
    "needle: recall of the needle scene's tokens, %; time: prefill time / unpruned (median)"
)


def _pct(value: float) -> str:
    return f"{100 * value:.0f}"


def _interval(low: float, high: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"[{100 * low:{sign}.0f},{100 * high:{sign}.0f}]"


def print_table(result: dict[str, Any], console: Any = None) -> None:
    """A table per layer K, one row per method and retention, that fits 80 columns (short headers, a legend)."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    baseline = result["baseline"]
    options = result["options"]
    task = result.get("task_variant") or "custom"
    console.print(
        f"task {task}: {options['items']} {options['split']} items, {result['num_visual']} visual tokens "
        f"({result['seq_len']} in all). Unpruned: {baseline['accuracy']:.1%} "
        + (
            "(by type: " + ", ".join(f"{k} {v:.0%}" for k, v in baseline["by_type"].items()) + ")"
            if baseline.get("by_type")
            else ""
        )
        + f", prefill {baseline['prefill_s_median'] * 1000:.0f} ms (median)."
    )
    for layer in sorted({row["layer"] for row in result["summary"]}):
        table = Table(title=f"K = {layer}", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
        for name in ("method", "r", "acc", "d unpr", "agree", "KL", "needle", "time"):
            table.add_column(name, justify="left" if name == "method" else "right", no_wrap=True)
        rows = sorted(
            (r for r in result["summary"] if r["layer"] == layer), key=lambda r: (r["method"], r["retention"])
        )
        for row in rows:
            ci = row.get("accuracy_ci")
            delta = row.get("vs_unpruned")
            table.add_row(
                escape(row["method"]),
                f"{row['retention']:.2f}",
                _pct(row["accuracy"]) + (" " + _interval(*ci) if ci else ""),
                (f"{100 * delta['mean']:+.0f} " + _interval(delta["low"], delta["high"], True)) if delta else "-",
                _pct(row["agreement"]),
                f"{row['kl']:.2f}",
                _pct(row["needle_recall"]),
                f"{row['time_ratio_median']:.2f}",
            )
        console.print(table)
        kept = sorted({(r["retention"], r["kept"]) for r in rows})
        console.print("kept tokens: " + ", ".join(f"r={r:.2f}: {k}" for r, k in kept))
        for c in (c for c in result.get("comparisons", []) if c["layer"] == layer):
            console.print(
                f"{c['method']} - {c['against']} at r={c['retention']:.2f}: {100 * c['mean']:+.1f} points "
                f"{_interval(c['low'], c['high'], True)}",
                markup=False,
            )
    console.print(LEGEND, markup=False)


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path
