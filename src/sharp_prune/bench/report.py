"""Presenting bench results: a terminal table, the JSON file, the accuracy-vs-retention plot.

The plot is `sharp_prune.viz.plot_accuracy` (shared with `sharp-prune viz --bench`), re-exported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..viz.plots import plot_accuracy

__all__ = ["plot_accuracy", "print_table", "write_json"]


def print_table(result: dict[str, Any], console: Any = None) -> None:
    """A rich table per layer K: one row per method and retention."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    baseline = result["baseline"]
    console.print(
        f"unpruned accuracy {baseline['accuracy']:.1%} on {result['options']['items']} {result['options']['split']} "
        f"items ({result['num_visual']} visual tokens, {result['seq_len']} in all; by type: "
        + ", ".join(f"{k} {v:.0%}" for k, v in baseline["by_type"].items())
        + f"); unpruned prefill {baseline['prefill_s_median'] * 1000:.0f} ms (median)"
    )
    for layer in sorted({row["layer"] for row in result["summary"]}):
        table = Table(title=f"K = {layer}")
        for name in (
            "method",
            "r",
            "kept",
            "accuracy",
            "vs unpruned",
            "agree",
            "KL",
            "needle recall",
            "answer kept",
            "prefill x",
        ):
            table.add_column(name, justify="left" if name == "method" else "right")
        for row in sorted(
            (r for r in result["summary"] if r["layer"] == layer), key=lambda r: (r["method"], r["retention"])
        ):
            table.add_row(
                row["method"],
                f"{row['retention']:.2f}",
                str(row["kept"]),
                f"{row['accuracy']:.1%}",
                f"{row['relative_accuracy']:.1%}" if row["relative_accuracy"] is not None else "-",
                f"{row['agreement']:.1%}",
                f"{row['kl']:.3f}",
                f"{row['needle_recall']:.1%}",
                f"{row['answer_kept']:.1%}",
                f"{row['time_ratio_median']:.2f}",
            )
        console.print(table)


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path
