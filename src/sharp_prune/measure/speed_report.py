"""Presenting `sharp-prune speed` results: the terminal table and the speedup / memory plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MEMORY_SHORT = {
    "cuda": "max_memory_allocated above what was allocated before the forward",
    "cpu": "peak live bytes of tensors allocated in the forward (activations, KV cache, logits; not weights)",
}


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(payload: dict[str, Any]) -> str:
    """The plain-text results table of a `run_speed` payload."""
    machine, prompt = payload["machine"], payload["prompt"]
    where = machine.get("gpu") or machine["cpu"]
    lines = [
        f"sharp-prune speed: {payload['model']['shape']} ({payload['model']['class']}, random weights), "
        f"{machine['dtype']} on {machine['device']} ({where}, {machine['torch_threads']} threads)",
        f"prompt {prompt['seq_len']} tokens: {prompt['prefix_tokens']} text + {prompt['frames']} frames x "
        f"{prompt['tokens_per_frame']} visual + {prompt['suffix_tokens']} text; "
        f"K={payload['options']['layer']}; {payload['options']['repeats']} timed repeats",
        "",
    ]
    header = (
        "config",
        "kept",
        "segs",
        "median ms",
        "min ms",
        "max ms",
        "x unpruned",
        "speedup",
        "FLOPs ratio",
        "peak MiB",
        "KV MiB",
    )
    rows = [header]
    for r in payload["results"]:
        rows.append(
            (
                r["name"],
                str(r["kept_visual"]),
                "-" if r["segments"] is None else str(r["segments"]),
                f"{r['median_s'] * 1e3:.1f}",
                f"{r['min_s'] * 1e3:.1f}",
                f"{r['max_s'] * 1e3:.1f}",
                f"{r['time_ratio']:.3f}",
                f"{r['speedup']:.2f}x",
                _fmt(r["flops_ratio"], ".3f"),
                _mib(r["peak_delta_bytes"]),
                _mib(r["kv_cache_bytes"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("x unpruned = median / unpruned median, same process; speedup = its inverse")
    memory = MEMORY_SHORT[machine["device"]] if payload["memory_measure"] else "not measured (--no-memory)"
    lines.append(f"peak MiB = {memory}; KV MiB = KV cache after the prefill")
    if payload["flops"]["errors"]:
        lines.append(f"FLOPs ratio missing: {'; '.join(payload['flops']['errors'])}")
    return "\n".join(lines)


def plot_speed(payload: dict[str, Any], path: str | Path) -> None:
    """PNG: speedup over unpruned vs retention per method (dashed: the FLOPs bound), and peak memory."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = payload["results"]
    base = results[0]
    methods = list(dict.fromkeys(r["method"] for r in results[1:]))
    figure = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(figure)
    speed_ax, memory_ax = figure.subplots(1, 2)
    colours = [f"C{i}" for i in range(10)]
    has_bound = False
    for i, method in enumerate(methods):
        rows = sorted((r for r in results if r["method"] == method), key=lambda r: r["retention"])
        x = [r["retention"] for r in rows]
        colour = colours[i % len(colours)]
        speed_ax.plot(x, [r["speedup"] for r in rows], "o-", color=colour, label=method)
        bound = [r["speedup_bound"] for r in rows]
        if all(b is not None for b in bound):
            # a marker too, so that a single retention still shows its bound
            speed_ax.plot(x, bound, "--", marker="_", markersize=14, color=colour, alpha=0.6)
            has_bound = True
        memory = [r["peak_delta_bytes"] for r in rows]
        if all(m is not None for m in memory):
            memory_ax.plot(x, [m / 2**20 for m in memory], "o-", color=colour, label=method)
    speed_ax.axhline(1.0, color="grey", lw=1, label="unpruned")
    if has_bound:
        speed_ax.plot([], [], "--", marker="_", color="grey", alpha=0.6, label="FLOPs bound (1 / FLOPs ratio)")
    speed_ax.set_xlabel("retention r (share of visual tokens kept past layer K)")
    speed_ax.set_ylabel("prefill speedup over unpruned (median)")
    speed_ax.set_title("time to first token")
    speed_ax.set_ylim(bottom=0)
    speed_ax.legend(fontsize=7, framealpha=0.8)
    speed_ax.grid(alpha=0.3)
    if base["peak_delta_bytes"] is not None:
        memory_ax.axhline(base["peak_delta_bytes"] / 2**20, color="grey", lw=1, label="unpruned")
    memory_ax.set_xlabel("retention r")
    memory_ax.set_ylabel("peak memory of the forward (MiB)")
    memory_ax.set_title("peak memory of the prefill")
    memory_ax.set_ylim(bottom=0)
    memory_ax.legend(fontsize=7, framealpha=0.8)
    memory_ax.grid(alpha=0.3)
    machine, prompt = payload["machine"], payload["prompt"]
    figure.suptitle(
        f"{payload['model']['shape']} (random weights), {prompt['frames']}x{prompt['tokens_per_frame']} visual tokens, "
        f"K={payload['options']['layer']}, {machine['dtype']} on {machine.get('gpu') or machine['device']}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)


# --------------------------------------------------------------------------------------------- CLI
