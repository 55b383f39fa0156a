"""Presenting bench results: a terminal table, the JSON file, the accuracy-vs-retention plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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


def plot_accuracy(
    summary: Sequence[dict[str, Any]], baseline_accuracy: float, path: str | Path, title: str = ""
) -> Path:
    """Accuracy vs retention, one line per method, one panel per layer K; the unpruned level dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = sorted({row["layer"] for row in summary})
    figure = Figure(figsize=(5 * len(layers), 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(layers), squeeze=False)[0]
    for ax, layer in zip(axes, layers, strict=True):
        rows = [r for r in summary if r["layer"] == layer]
        for method in sorted({r["method"] for r in rows}):
            points = sorted((r["retention"], r["accuracy"]) for r in rows if r["method"] == method)
            style = {"linewidth": 2.5} if method == "sharp" else {"linewidth": 1.2}
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method, **style)
        ax.axhline(baseline_accuracy, color="black", linestyle="--", linewidth=1, label="unpruned")
        ax.set_xlabel("retention r")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"K = {layer}")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8, loc="lower right")
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
