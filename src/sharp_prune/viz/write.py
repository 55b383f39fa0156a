"""`write_all`: every picture of one pruned prefill; `write_bench`: the accuracy picture of a bench result."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from ..errors import InputError
from ..record import PruneRecord
from .bench import check_bench, load_bench
from .data import RECORD_SCORES_HINT, check_sample, frame_scores, records_scores, scores_anything, segment_timeline
from .figure import require_matplotlib
from .grid import overlay_panels
from .plots import plot_accuracy, plot_frame_scores, plot_overlay, plot_timeline

logger = logging.getLogger(__name__)

FILES = {"scores": "scores.png", "overlay": "overlay.png", "timeline": "timeline.png"}


def skipped(record: PruneRecord) -> dict[str, str]:
    """The pictures `write_all` leaves out for `record`, each with why."""
    out = {}
    if not scores_anything(record):
        out["scores"] = f"method {record.method!r} scores no tokens"
    if record.grid is None:
        out["overlay"] = "no frame grid in the record (generic adapter)"
    return out


def _describe(record: PruneRecord) -> str:
    config = record.config
    retention = f", r = {config['retention']:g}" if "retention" in config else ""
    return f"{record.method}{retention}, K = {record.layer}"


def write_all(
    record: PruneRecord,
    frames: Any | None,
    out_dir: str | Path,
    sample: int = 0,
    max_frames: int = 16,
) -> dict[str, Path]:
    """Write the pictures of one pruned prefill as PNGs into `out_dir`.

    - scores.png: mean score per frame before and after PosC, with the positional trends (skipped when
      the method scores nothing: random, uniform, divprune, none);
    - overlay.png: up to `max_frames` frames, kept tokens bright, registers marked (skipped without a grid);
    - timeline.png: SegM's frame similarity and cuts, kept tokens per frame.

    Args:
        record: `handle.last` after a prefill with `PruneConfig(record_scores=True)`.
        frames: the decoded frames, uint8 [F, H, W, 3] as `read_video` returns (a Qwen-VL record frame
            covers two video frames: see `sharp_prune.viz.grid`), or None to draw the overlay on grey.
        out_dir: folder to write to (created).
        sample: which sample of the batch.
        max_frames: frames shown in the overlay, evenly spaced.

    Returns:
        {"scores" | "overlay" | "timeline": path} for the pictures written.

    Raises:
        InputError: the record was made without `record_scores=True`, bad `sample`, frames or `max_frames`
            (all checked before anything is drawn).
        ImportError: matplotlib is missing.
    """
    check_sample(record, sample)
    if not records_scores(record):
        raise InputError(f"the record has no scores: {RECORD_SCORES_HINT}.")
    require_matplotlib()
    left_out = skipped(record)
    for name, why in left_out.items():
        logger.info("no %s picture: %s", name, why)
    # Every piece of data first, so that bad input fails before any file is written.
    scores = frame_scores(record, sample) if "scores" not in left_out else None
    panels = overlay_panels(record, frames, sample, max_frames) if "overlay" not in left_out else None
    timeline = segment_timeline(record, sample)
    out = Path(out_dir)
    what = _describe(record)
    written: dict[str, Path] = {}
    if scores is not None:
        written["scores"] = plot_frame_scores(scores, out / FILES["scores"])
    if panels is not None:
        total = int(timeline.kept.sum())
        title = f"{what}: {total} of {int(timeline.tokens.sum())} video tokens kept"
        if len(panels) < len(timeline.frames):
            title += f" ({len(panels)} of {len(timeline.frames)} frames shown)"
        written["overlay"] = plot_overlay(panels, out / FILES["overlay"], title=title)
    written["timeline"] = plot_timeline(timeline, out / FILES["timeline"], title=f"{what}: segments and kept tokens")
    return written


def write_bench(result: dict[str, Any] | str | Path, out_dir: str | Path, title: str = "") -> Path:
    """Draw accuracy vs retention (one panel per K) of a bench result (its dict or bench.json) to
    `out_dir`/accuracy.png; returns the path."""
    result = check_bench(result) if isinstance(result, dict) else load_bench(result)
    require_matplotlib()
    if not title and "num_visual" in result:
        title = f"accuracy vs retention ({result['num_visual']} visual tokens)"
    return plot_accuracy(result["summary"], result["baseline"]["accuracy"], Path(out_dir) / "accuracy.png", title)


def print_written(
    written: Mapping[str, str | Path], record: PruneRecord | None = None, file: TextIO | None = None
) -> None:
    """Print "wrote PATH" per picture written, and why any picture of `record` was left out."""
    file = file if file is not None else sys.stdout
    for path in written.values():
        print(f"wrote {path}", file=file)
    if record is not None:
        for name, why in skipped(record).items():
            if name not in written:
                print(f"no {FILES[name]}: {why}", file=file)
