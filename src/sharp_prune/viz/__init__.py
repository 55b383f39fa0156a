"""Pictures of what pruning did: `sharp-prune viz`, `sharp-prune run --viz DIR`, or from Python:

    handle = sp.apply(model, sp.PruneConfig(method="sharp", retention=0.2, record_scores=True))
    model.generate(**inputs, max_new_tokens=1)
    sharp_prune.viz.write_all(handle.last, clip.frames, "outputs/viz")   # scores, overlay, timeline PNGs

Each picture's data comes from a pure function (numpy, testable, no matplotlib): `frame_scores`,
`keep_mask` / `register_mask` / `overlay_panels`, `segment_timeline`, `accuracy_curves`; the `plot_*`
functions draw them with matplotlib's object API (the `viz` extra: pip install 'sharp-prune[viz]').
"""

from .bench import accuracy_curves, check_bench, load_bench
from .data import FrameScores, SegmentTimeline, Trend, frame_scores, linear_trend, segment_timeline
from .from_video import visualise_video
from .grid import (
    OverlayPanel,
    as_frames,
    decoded_frame_spans,
    keep_mask,
    overlay_image,
    overlay_panels,
    panel_frames,
    register_mask,
)
from .plots import plot_accuracy, plot_frame_scores, plot_overlay, plot_timeline
from .write import FILES, print_written, skipped, write_all, write_bench

__all__ = [
    "FILES",
    "FrameScores",
    "OverlayPanel",
    "SegmentTimeline",
    "Trend",
    "accuracy_curves",
    "as_frames",
    "check_bench",
    "decoded_frame_spans",
    "frame_scores",
    "keep_mask",
    "linear_trend",
    "load_bench",
    "overlay_image",
    "overlay_panels",
    "panel_frames",
    "plot_accuracy",
    "plot_frame_scores",
    "plot_overlay",
    "plot_timeline",
    "print_written",
    "register_mask",
    "segment_timeline",
    "skipped",
    "visualise_video",
    "write_all",
    "write_bench",
]
