"""The data behind the score and timeline pictures, computed from a `PruneRecord` (numpy, no matplotlib).

Frames here are the record's frames: LLaVA-OneVision's video frames, Qwen-VL's temporal patches (two video
frames each), the generic adapter's `frame_map` ids. Scores, priors and segment ids are aligned with the
tokens the LLM scored: every visual token, or the tokens the pre-LLM stage kept when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..methods.sharp import segm
from ..record import PruneRecord

RECORD_SCORES_HINT = "apply with sp.PruneConfig(..., record_scores=True) (the CLI does this for you)"


# ------------------------------------------------------------------------------------------------ record access


def check_sample(record: Any, sample: int) -> int:
    """`sample` as a valid index into `record`'s samples; InputError otherwise (or when `record` is no record)."""
    if not isinstance(record, PruneRecord):
        raise InputError(f"expected a PruneRecord (handle.last after a prefill), got {type(record).__name__}.")
    if isinstance(sample, bool) or not isinstance(sample, int):
        raise InputError(f"sample must be an int, got {type(sample).__name__} {sample!r}.")
    count = len(record.keep_positions)
    if not 0 <= sample < count:
        raise InputError(f"sample {sample} is out of range: the record holds {count} sample(s) (0..{count - 1}).")
    if len(record.visual_positions) <= sample or len(record.frame_ids) <= sample:
        raise InputError("the record has no visual_positions / frame_ids; take it from handle.last after a prefill.")
    if record.visual_positions[sample].numel() == 0:
        raise InputError(f"sample {sample} has no visual tokens: there is nothing to draw.")
    return sample


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().float().numpy() if tensor.is_floating_point() else tensor.detach().cpu().numpy()


def visual_tokens(record: PruneRecord, sample: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(positions [N], frame ids [N]) of every visual token of `sample`, sorted by position."""
    check_sample(record, sample)
    positions = _numpy(record.visual_positions[sample]).astype(np.int64)
    frames = _numpy(record.frame_ids[sample]).astype(np.int64)
    if positions.shape != frames.shape:
        raise InputError(f"visual_positions {positions.shape} and frame_ids {frames.shape} differ in length.")
    return positions, frames


def num_frames(record: PruneRecord, sample: int = 0) -> int:
    """F, the number of frames of `sample` in the record (frame ids run 0..F-1)."""
    return int(visual_tokens(record, sample)[1].max()) + 1


def frames_of(record: PruneRecord, positions: np.ndarray, sample: int = 0) -> np.ndarray:
    """Frame id of each original `position` (each must be a visual position of `sample`)."""
    visual, frames = visual_tokens(record, sample)
    index = np.searchsorted(visual, positions)
    bad = (index >= len(visual)) | (visual[np.minimum(index, len(visual) - 1)] != positions)
    if bad.any():
        raise InputError(
            f"position {int(positions[bad][0])} is not a visual position of sample {sample}: the record is "
            "inconsistent (was it edited?)."
        )
    return frames[index]


def scored_frame_ids(record: PruneRecord, sample: int = 0) -> np.ndarray:
    """Frame id of each token the LLM scored: all visual tokens, or those the pre-LLM stage kept."""
    if record.pre_keep_positions is not None:
        return frames_of(record, _numpy(record.pre_keep_positions[sample]).astype(np.int64), sample)
    return visual_tokens(record, sample)[1]


def keep_frame_ids(record: PruneRecord, sample: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(frame id of each kept slot [B], whether it is a register [B]) of `sample`."""
    keep = _numpy(record.keep_positions[sample]).astype(np.int64)
    registers = np.zeros(len(keep), dtype=bool)
    if record.is_register is not None:
        registers = _numpy(record.is_register[sample]).astype(bool)
        if registers.shape != keep.shape:
            raise InputError(f"is_register {registers.shape} is not aligned with keep_positions {keep.shape}.")
    return frames_of(record, keep, sample), registers


def per_frame_mean(values: np.ndarray, frame_ids: np.ndarray, frames: int) -> np.ndarray:
    """[F] mean of `values` over each frame's tokens; NaN for a frame without tokens."""
    values = np.asarray(values, dtype=np.float64)
    sums = np.bincount(frame_ids, weights=values, minlength=frames)
    counts = np.bincount(frame_ids, minlength=frames)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


# ------------------------------------------------------------------------------------------------ linear trend


@dataclass(frozen=True)
class Trend:
    """Least-squares line y = slope * frame + intercept through the finite points.

    Attributes:
        slope: change per frame.
        intercept: value at frame 0.
        fitted: [F] the line at every frame.
        r2: coefficient of determination (1 - SS_res / SS_tot); 0 when y is constant or has < 2 points.
    """

    slope: float
    intercept: float
    fitted: np.ndarray
    r2: float


def linear_trend(y: np.ndarray, x: np.ndarray | None = None) -> Trend:
    """Fit a line to `y` over `x` (default 0..F-1), ignoring NaN points."""
    y = np.asarray(y, dtype=np.float64)
    x = np.arange(len(y), dtype=np.float64) if x is None else np.asarray(x, dtype=np.float64)
    finite = np.isfinite(y)
    xs, ys = x[finite], y[finite]
    if len(ys) < 2 or np.ptp(xs) == 0:
        intercept = float(ys.mean()) if len(ys) else float("nan")
        return Trend(0.0, intercept, np.full_like(x, intercept), 0.0)
    dx = xs - xs.mean()
    slope = float((dx * (ys - ys.mean())).sum() / (dx**2).sum())  # exactly 0 for a constant y
    intercept = float(ys.mean() - slope * xs.mean())
    ss_res = float(((ys - (slope * xs + intercept)) ** 2).sum())
    ss_tot = float(((ys - ys.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    return Trend(slope, intercept, slope * x + intercept, r2)


# ----------------------------------------------------------------------------------- picture 1: scores per frame


@dataclass(frozen=True)
class FrameScores:
    """Mean score per frame before and after PosC, with their linear positional trends (the paper's figs 2, 4).

    Attributes:
        method: the method that ran.
        layer: K (the scores come from layer K - 1).
        frames: [F] frame index 0..F-1.
        tokens: [F] scored tokens per frame.
        raw: [F] mean attention before calibration; raw_trend its line.
        prior: [F] mean PosC prior (black-frame attention), or None without PosC; prior_trend its line.
        calibrated: [F] mean score after PosC (what ShaRP selects on), or None without PosC;
            calibrated_trend its line.
        posc_mode, posc_lambda: PosC's formula ("subtract": s - lambda b; "divide": s / (b + eps)), or None.
    """

    method: str
    layer: int
    frames: np.ndarray
    tokens: np.ndarray
    raw: np.ndarray
    raw_trend: Trend
    prior: np.ndarray | None = None
    prior_trend: Trend | None = None
    calibrated: np.ndarray | None = None
    calibrated_trend: Trend | None = None
    posc_mode: str | None = None
    posc_lambda: float | None = None

    @property
    def has_posc(self) -> bool:
        """Whether PosC ran (a prior and calibrated scores are present)."""
        return self.prior is not None and self.calibrated is not None


def records_scores(record: PruneRecord) -> bool:
    """Whether the record was made with `record_scores=True` (from its config; else from its fields)."""
    if "record_scores" in record.config:
        return bool(record.config["record_scores"])
    return record.scores is not None or record.raw_scores is not None


def scores_anything(record: PruneRecord) -> bool:
    """Whether the method scored the visual tokens (False for random, uniform, divprune, none)."""
    return record.raw_scores is not None or record.scores is not None


def frame_scores(record: PruneRecord, sample: int = 0) -> FrameScores:
    """Per-frame mean scores of `sample` before and after PosC, and their least-squares trends over frames.

    Raises:
        InputError: the record was made without `record_scores=True`, or the method scores nothing
            (random, uniform, divprune, none), or the score vectors do not match the scored tokens.
    """
    check_sample(record, sample)
    if not records_scores(record):
        raise InputError(f"the record has no scores: {RECORD_SCORES_HINT}.")
    if not scores_anything(record):
        raise InputError(f"method {record.method!r} scores no tokens: there are no scores per frame to draw.")
    frame_ids = scored_frame_ids(record, sample)
    frames = num_frames(record, sample)

    def mean(values: list[torch.Tensor] | None, name: str) -> np.ndarray | None:
        if values is None:
            return None
        row = _numpy(values[sample]).astype(np.float64)
        if row.shape != frame_ids.shape:
            raise InputError(f"record.{name} has {row.shape[0]} scores for {frame_ids.shape[0]} scored tokens.")
        return per_frame_mean(row, frame_ids, frames)

    raw = mean(record.raw_scores if record.raw_scores is not None else record.scores, "raw_scores")
    prior = mean(record.prior, "prior")
    # With PosC, `scores` are the calibrated ones; without it they equal the raw scores.
    calibrated = mean(record.scores, "scores") if prior is not None else None
    posc = prior is not None and calibrated is not None
    return FrameScores(
        method=record.method,
        layer=record.layer,
        frames=np.arange(frames),
        tokens=np.bincount(frame_ids, minlength=frames),
        raw=raw,
        raw_trend=linear_trend(raw),
        prior=prior,
        prior_trend=linear_trend(prior) if prior is not None else None,
        calibrated=calibrated if posc else None,
        calibrated_trend=linear_trend(calibrated) if posc else None,
        posc_mode=record.config.get("posc_mode") if posc else None,
        posc_lambda=record.config.get("posc_lambda") if posc else None,
    )


# ------------------------------------------------------------------------------------- picture 3: the timeline


@dataclass(frozen=True)
class SegmentTimeline:
    """SegM's view of the video and what each frame kept.

    Attributes:
        method: the method that ran.
        frames: [F] frame index 0..F-1.
        similarity: [F-1] cosine between the SegM descriptors of frames f and f+1, or None (no SegM record).
        tau: SegM's threshold `segm_tau`, or None when unknown.
        cuts: frames f after which a new segment starts (segment id of f+1 != that of f).
        below_tau: frames f with similarity[f] < tau; more than `cuts` when `segm_max_segments` capped them.
        segment_of_frame: [F] segment id of each frame, or None (method without segments).
        tokens: [F] visual tokens per frame.
        scored: [F] tokens per frame the LLM saw (after the pre-LLM stage, if any).
        kept: [F] kept slots per frame, registers included.
        registers: [F] register slots per frame.
    """

    method: str
    frames: np.ndarray
    similarity: np.ndarray | None
    tau: float | None
    cuts: np.ndarray
    below_tau: np.ndarray
    segment_of_frame: np.ndarray | None
    tokens: np.ndarray
    scored: np.ndarray
    kept: np.ndarray
    registers: np.ndarray

    @property
    def num_segments(self) -> int:
        """Segments found (1 when the method has none)."""
        return len(self.cuts) + 1


def segments_from_similarity(similarity: np.ndarray, tau: float, max_segments: int) -> np.ndarray:
    """[F] segment id of each frame by SegM's own rule (`segm.segments_from_similarity`) on the recorded
    [F-1] similarity."""
    return segm.segments_from_similarity(torch.from_numpy(np.asarray(similarity)), tau, max_segments).numpy()


def _segment_of_frame(
    record: PruneRecord, sample: int, frames: int, similarity: np.ndarray | None
) -> np.ndarray | None:
    if record.segment_ids is None:
        return None
    segments = _numpy(record.segment_ids[sample]).astype(np.int64)
    frame_ids = scored_frame_ids(record, sample)
    if segments.shape != frame_ids.shape:
        raise InputError(f"record.segment_ids has {segments.shape[0]} ids for {frame_ids.shape[0]} scored tokens.")
    out = np.full(frames, -1, dtype=np.int64)
    out[frame_ids] = segments  # one segment per frame: SegM segments whole frames
    known = out >= 0
    if known.all():
        return out
    # Frames the pre-LLM stage emptied carry no segment id: redo SegM's rule on the recorded similarity, and
    # trust it where it agrees with every recorded id; else such a frame joins the segment before it.
    tau, cap = record.config.get("segm_tau"), record.config.get("segm_max_segments")
    if similarity is not None and tau is not None and cap is not None:
        rebuilt = segments_from_similarity(similarity, tau, cap)
        if np.array_equal(rebuilt[known], out[known]):
            return rebuilt
    for f in range(frames):
        if out[f] < 0:
            out[f] = out[f - 1] if f > 0 else 0
    return out


def segment_timeline(record: PruneRecord, sample: int = 0) -> SegmentTimeline:
    """Frame-to-frame similarity, cut points, and kept tokens per frame of `sample`."""
    check_sample(record, sample)
    _, frame_ids = visual_tokens(record, sample)
    frames = num_frames(record, sample)
    kept_frames, is_register = keep_frame_ids(record, sample)
    similarity = None
    if record.frame_similarity is not None:
        similarity = _numpy(record.frame_similarity[sample]).astype(np.float64)
        if similarity.shape != (frames - 1,):
            raise InputError(f"record.frame_similarity has {similarity.shape[0]} values for {frames} frames.")
    tau = record.config.get("segm_tau")
    segment_of_frame = _segment_of_frame(record, sample, frames, similarity)
    cuts = np.flatnonzero(np.diff(segment_of_frame) != 0) if segment_of_frame is not None else np.array([], int)
    below = np.flatnonzero(similarity < tau) if similarity is not None and tau is not None else np.array([], int)
    return SegmentTimeline(
        method=record.method,
        frames=np.arange(frames),
        similarity=similarity,
        tau=float(tau) if tau is not None else None,
        cuts=cuts,
        below_tau=below,
        segment_of_frame=segment_of_frame,
        tokens=np.bincount(frame_ids, minlength=frames),
        scored=np.bincount(scored_frame_ids(record, sample), minlength=frames),
        kept=np.bincount(kept_frames, minlength=frames),
        registers=np.bincount(kept_frames[is_register], minlength=frames),
    )
