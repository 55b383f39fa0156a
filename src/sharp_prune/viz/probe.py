"""The layer probe's picture: rank of the relevant frames against layer K, one line per score variant."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .figure import new_figure, save

COLOURS = {
    "last": "#1f77b4",
    "text": "#d62728",
    "last+posc": "#17becf",
    "text+posc": "#ff7f0e",
    "last-norope": "#2ca02c",
}
MARKERS = {"last": "o", "text": "s", "last+posc": "v", "text+posc": "^", "last-norope": "D"}


def plot_probe(runs: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """One panel per run (task or prompts file): for each variant, the mean rank of the relevant frames at each
    layer K with its 95% interval as a band, a dashed line at 0.5 (random), sliding-window layers shaded.

    Args:
        runs: probe results (`bench.probe.run_probe`), each with a "name".
        path: the PNG to write.
        title: the figure's title.
    """
    panels = max(1, len(runs))
    figure = new_figure(4.4 * panels + 0.6, 4.2)
    axes = figure.subplots(1, panels, squeeze=False, sharey=True)[0]
    for ax, run in zip(axes, runs, strict=False):
        rows = run["layers"]
        layers = [row["layer"] for row in rows]
        for row in rows:
            if row["attention"] != "full":  # the model attends within a window there: not usable by the engine
                ax.axvspan(row["layer"] - 0.5, row["layer"] + 0.5, color="0.9", lw=0)
        for variant in rows[0]["variants"] if rows else ():
            cells = [row["variants"][variant] for row in rows]
            colour = COLOURS.get(variant)
            ax.fill_between(
                layers, [c["low"] for c in cells], [c["high"] for c in cells], color=colour, alpha=0.15, lw=0
            )
            ax.plot(
                layers,
                [c["mean"] for c in cells],
                marker=MARKERS.get(variant, "o"),
                markersize=3,
                color=colour,
                label=variant,
            )
        ax.axhline(0.5, color="black", ls="--", lw=1, label="random")
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("layer K (scores of decoder layer K-1)")
        ax.set_title(f"{run.get('name', '')} ({run.get('items', '?')} items)", fontsize=10)
        ax.grid(alpha=0.3)
        if len(layers) > 1:
            ax.set_xticks(layers if len(layers) <= 16 else layers[:: max(1, len(layers) // 8)])
    axes[0].set_ylabel("rank of relevant frames (0 = top, 0.5 = random)")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=11)
    return save(figure, path)
