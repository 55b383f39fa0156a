"""Drawing the pictures from their data (`data.py`, `grid.py`, `bench.py`); each function writes one PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .bench import accuracy_curves
from .data import FrameScores, SegmentTimeline, Trend
from .figure import new_figure, save
from .grid import REGISTER_RGB, OverlayPanel, mask_outline

KEPT_COLOUR = "#1f77b4"
OUTLINE_COLOUR = "#ffd400"  # kept regions' outline: visible on dark and bright frames
REGISTER_COLOUR = tuple(c / 255 for c in REGISTER_RGB)
CUT_COLOUR = "#d62728"
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")


def _trend_label(name: str, trend: Trend) -> str:
    return f"{name} trend: slope {trend.slope:+.2e}/frame, R² {trend.r2:.2f}"


def _score_axes(ax: Any, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("frame")
    ax.grid(alpha=0.3)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    # Below the axes: per-frame curves fill the whole panel, a legend inside would hide points.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, frameon=False)


def plot_frame_scores(scores: FrameScores, path: str | Path, title: str = "") -> Path:
    """Picture 1: mean score per frame before PosC (with the black-frame prior) and after it, each with its
    least-squares positional trend. Without PosC, one panel of the method's scores, titled "no PosC"."""
    x = scores.frames
    panels = 2 if scores.has_posc else 1
    figure = new_figure(5.4 * panels + 0.6, 4.4)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    ax.plot(x, scores.raw, marker="o", markersize=3, color=KEPT_COLOUR, label="attention (video)")
    ax.plot(x, scores.raw_trend.fitted, "--", color=KEPT_COLOUR, label=_trend_label("attention", scores.raw_trend))
    if scores.prior is not None and scores.prior_trend is not None:
        ax.plot(x, scores.prior, marker="s", markersize=3, color="grey", label="PosC prior (black frames)")
        ax.plot(x, scores.prior_trend.fitted, ":", color="grey", label=_trend_label("prior", scores.prior_trend))
    ax.set_ylabel("mean attention per token")
    _score_axes(ax, "before PosC" if scores.has_posc else "no PosC: the scores the method selects on")
    if scores.has_posc:
        ax = axes[1]
        formula = "s − λb" if scores.posc_mode == "subtract" else "s / (b + ε)"
        lam = f", λ = {scores.posc_lambda:g}" if scores.posc_mode == "subtract" and scores.posc_lambda else ""
        ax.plot(x, scores.calibrated, marker="o", markersize=3, color="#2ca02c", label="calibrated score")
        ax.plot(
            x,
            scores.calibrated_trend.fitted,
            "--",
            color="#2ca02c",
            label=_trend_label("calibrated", scores.calibrated_trend),
        )
        if scores.posc_mode == "subtract":
            ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylabel(f"mean calibrated score ({formula})")
        _score_axes(ax, f"after PosC ({scores.posc_mode}: {formula}{lam})")
    figure.suptitle(
        title or f"{scores.method}, K = {scores.layer}: mean score per frame (layer {scores.layer - 1} attention)",
        fontsize=11,
    )
    return save(figure, path)


def _grid_shape(count: int, aspect: float) -> tuple[int, int]:
    """(rows, cols) for `count` panels of width/height `aspect`, close to a square picture."""
    cols = max(1, min(count, math.ceil(math.sqrt(count / aspect))))
    return math.ceil(count / cols), cols


def _pixel_lines(mask: np.ndarray, scale: np.ndarray) -> list[np.ndarray]:
    """`mask_outline` in cell units -> pixel coordinates (imshow puts pixel centres on integers)."""
    return [np.array(edge, dtype=np.float64) * scale - 0.5 for edge in mask_outline(mask)]


def plot_overlay(panels: Sequence[OverlayPanel], path: str | Path, title: str = "") -> Path:
    """Picture 2: a grid of frames, kept cells bright, dropped cells dimmed, registers tinted and outlined."""
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Patch

    height, width = panels[0].image.shape[:2]
    rows, cols = _grid_shape(len(panels), width / height)
    panel_in = 2.1
    figure = new_figure(cols * panel_in * max(1.0, width / height), rows * (panel_in + 0.45) + 0.7)
    axes = figure.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        ax.imshow(panel.image, interpolation="nearest")
        scale = np.array([width / panel.keep.shape[1], height / panel.keep.shape[0]])
        kept_lines, register_lines = (_pixel_lines(m, scale) for m in (panel.keep & ~panel.registers, panel.registers))
        ax.add_collection(LineCollection(kept_lines, colors=OUTLINE_COLOUR, linewidths=1))
        ax.add_collection(LineCollection(register_lines, colors=[REGISTER_COLOUR], linewidths=1.6))
        ax.set_title(panel.label, fontsize=8)
    handles = [
        Patch(facecolor="white", edgecolor=OUTLINE_COLOUR, linewidth=1.5, label="kept token (bright, outlined)"),
        Patch(facecolor="#444444", edgecolor="black", label="dropped (dimmed)"),
    ]
    if any(p.num_registers for p in panels):
        handles.append(Patch(facecolor=REGISTER_COLOUR, edgecolor=REGISTER_COLOUR, label="RegD register"))
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    figure.suptitle(title or "kept tokens", fontsize=11)
    return save(figure, path)


def _shade_segments(ax: Any, timeline: SegmentTimeline) -> None:
    """Alternate light bands over the frames of each segment."""
    if timeline.segment_of_frame is None:
        return
    edges = [0, *(timeline.cuts + 1).tolist(), len(timeline.frames)]
    for s, (start, stop) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        if s % 2:
            ax.axvspan(start - 0.5, stop - 0.5, color="#e8e8e8", zorder=0, linewidth=0)


def plot_timeline(timeline: SegmentTimeline, path: str | Path, title: str = "") -> Path:
    """Picture 3: SegM's frame-to-frame similarity with tau and the cuts (when recorded), over the kept
    tokens per frame (registers stacked on top); segments shaded alternately."""
    has_similarity = timeline.similarity is not None
    frames = len(timeline.frames)
    figure = new_figure(max(6.5, min(14.0, 0.22 * frames + 4)), 5.6 if has_similarity else 3.4)
    axes = figure.subplots(2 if has_similarity else 1, 1, sharex=True, squeeze=False)[:, 0]
    x = timeline.frames
    if has_similarity:
        ax = axes[0]
        _shade_segments(ax, timeline)
        between = x[:-1] + 0.5  # similarity[f] compares frames f and f + 1
        ax.plot(between, timeline.similarity, marker="o", markersize=3, color="black", label="cos(frame f, f+1)")
        if timeline.tau is not None:
            ax.axhline(timeline.tau, color=CUT_COLOUR, linestyle="--", linewidth=1, label=f"τ = {timeline.tau:g}")
        for n, cut in enumerate(timeline.cuts):
            ax.axvline(cut + 0.5, color=CUT_COLOUR, linewidth=1.2, label="cut" if n == 0 else None)
        capped = np.setdiff1d(timeline.below_tau, timeline.cuts)
        if len(capped):
            ax.scatter(
                between[capped],
                timeline.similarity[capped],
                marker="x",
                color=CUT_COLOUR,
                zorder=3,
                label="below τ, not cut (segment cap)",
            )
        ax.set_ylabel("SegM similarity")
        segments = timeline.num_segments
        ax.set_title(f"SegM: {segments} segment{'s' if segments != 1 else ''}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax = axes[-1]
    _shade_segments(ax, timeline)
    plain = timeline.kept - timeline.registers
    top = timeline.kept
    if (timeline.scored != timeline.tokens).any():  # a pre-LLM stage ran: what it left, behind what was kept
        ax.bar(x, timeline.scored, width=0.8, color="#cccccc", label="left by the pre-LLM stage")
        top = np.maximum(top, timeline.scored)
    ax.bar(x, plain, width=0.8, color=KEPT_COLOUR, label="kept tokens")
    if timeline.registers.any():
        ax.bar(x, timeline.registers, width=0.8, bottom=plain, color=REGISTER_COLOUR, label="registers")
    mean = timeline.kept.sum() / max(1, frames)
    ax.axhline(mean, color="black", linestyle=":", linewidth=1, label=f"mean {mean:.1f}/frame")
    if not has_similarity:
        for n, cut in enumerate(timeline.cuts):
            ax.axvline(cut + 0.5, color=CUT_COLOUR, linewidth=1.2, label="cut" if n == 0 else None)
    ax.set_ylabel(f"kept slots (of {int(timeline.tokens.max())})")
    ax.set_xlabel("frame")
    ax.set_xlim(-0.6, frames - 0.4)
    ax.set_ylim(0, max(1, int(top.max())) * 1.12)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if not has_similarity:
        ax.set_title("no SegM similarity recorded (method without SegM)", fontsize=10)
    figure.suptitle(title or f"{timeline.method}: segments and kept tokens per frame", fontsize=11)
    return save(figure, path)


def plot_accuracy(
    summary: Sequence[dict[str, Any]], baseline_accuracy: float, path: str | Path, title: str = ""
) -> Path:
    """Picture 4: accuracy vs retention, one line per method, one panel per layer K; the unpruned level dashed.

    Methods that tie would hide each other: each method's points are shifted sideways by a small fixed amount
    (at most 10% of the gap between measured retentions) and have their own marker; ticks sit at the true r.
    """
    from matplotlib.ticker import PercentFormatter

    curves = accuracy_curves(summary)
    methods = sorted({m for per_layer in curves.values() for m in per_layer})
    retentions = sorted({r for per_layer in curves.values() for points in per_layer.values() for r, _ in points})
    gap = min(np.diff(retentions)) if len(retentions) > 1 else 0.1
    step = 0.2 * gap / max(1, len(methods) - 1)
    figure = new_figure(4.6 * len(curves) + 1.6, 4)
    axes = figure.subplots(1, len(curves), squeeze=False, sharey=True)[0]
    for ax, (layer, per_layer) in zip(axes, curves.items(), strict=True):
        for index, method in enumerate(methods):
            if method not in per_layer:
                continue
            points = per_layer[method]
            shift = (index - (len(methods) - 1) / 2) * step
            style = {"linewidth": 2.6, "zorder": 3} if method == "sharp" else {"linewidth": 1.2}
            ax.plot(
                [r + shift for r, _ in points],
                [a for _, a in points],
                marker=MARKERS[index % len(MARKERS)],
                color=f"C{index % 10}",
                label=method,
                **style,
            )
        ax.axhline(baseline_accuracy, color="black", linestyle="--", linewidth=1, label="unpruned")
        ax.set_xticks(retentions, [f"{r:g}" for r in retentions])
        ax.set_xlim(retentions[0] - gap / 2, retentions[-1] + gap / 2)
        ax.set_xlabel("retention r")
        ax.set_ylim(0, 1.02)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_title(f"K = {layer}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    handles, labels = axes[-1].get_legend_handles_labels()
    for ax in axes[:-1]:  # methods missing from the last panel
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    labels = [f"unpruned ({baseline_accuracy:.1%})" if label == "unpruned" else label for label in labels]
    axes[-1].legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if title:
        figure.suptitle(title)
    return save(figure, path)
