"""The data behind the overlay picture: kept / register cells on each frame's token grid, and frame images.

Each frame's visual tokens form an h x w raster in row-major order (`record.grid`), covering the whole frame
as the processor saw it (LLaVA-OneVision resizes frames to a square, Qwen-VL keeps the aspect ratio), so
cell (i, j) is drawn over rows [i H / h, (i + 1) H / h) and columns [j W / w, (j + 1) W / w) of the frame.

Record frames and decoded frames need not be one to one: a Qwen-VL record frame is a temporal patch of two
video frames. `decoded_frame_spans` maps the F_r record frames evenly onto the F_d decoded frames: record
frame f covers decoded frames [floor(f F_d / F_r), floor((f + 1) F_d / F_r)) (at least one), and is drawn
on the first of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..record import PruneRecord
from .data import check_sample, keep_frame_ids, num_frames, visual_tokens

logger = logging.getLogger(__name__)

DIM = 0.3  # brightness of dropped cells
REGISTER_RGB = (255, 0, 200)  # magenta: no natural video colour, visible on dark and bright frames
REGISTER_TINT = 0.55  # weight of the register colour in a register cell


def _grid(record: PruneRecord, sample: int) -> tuple[int, int]:
    check_sample(record, sample)
    if record.grid is None:
        raise InputError(
            "the overlay needs a raster layout (each frame's tokens as an h x w grid), and this record has "
            "none (generic adapter: tokens come from a frame_map); the score and timeline pictures still work."
        )
    h, w = (int(v) for v in record.grid)
    _, frame_ids = visual_tokens(record, sample)
    counts = np.bincount(frame_ids)
    if (counts != h * w).any():
        bad = int(np.flatnonzero(counts != h * w)[0])
        raise InputError(f"frame {bad} has {int(counts[bad])} visual tokens, not the grid's {h} x {w} = {h * w}.")
    return h, w


def _cell_mask(record: PruneRecord, sample: int, only_registers: bool) -> np.ndarray:
    h, w = _grid(record, sample)
    positions, frame_ids = visual_tokens(record, sample)
    mask = np.zeros((num_frames(record, sample), h, w), dtype=bool)
    _, registers = keep_frame_ids(record, sample)
    keep = record.keep_positions[sample].cpu().numpy().astype(np.int64)
    if only_registers:
        keep = keep[registers]
    index = np.searchsorted(positions, keep)
    # Rank of each token inside its frame = its cell in row-major order.
    frame_start = np.searchsorted(frame_ids, frame_ids, side="left")
    local = (np.arange(len(positions)) - frame_start)[index]
    mask[frame_ids[index], local // w, local % w] = True
    return mask


def keep_mask(record: PruneRecord, sample: int = 0) -> np.ndarray:
    """[F, h, w] bool: True at the grid cells whose slot continued past layer K (registers included).

    Raises:
        InputError: the record has no grid (generic adapter), or a frame's tokens do not fill the grid.
    """
    return _cell_mask(record, sample, only_registers=False)


def register_mask(record: PruneRecord, sample: int = 0) -> np.ndarray:
    """[F, h, w] bool: True at the cells where a RegD register sits (a subset of `keep_mask`)."""
    return _cell_mask(record, sample, only_registers=True)


def decoded_frame_spans(record_frames: int, decoded_frames: int) -> list[tuple[int, int]]:
    """Per record frame, the [start, stop) decoded frames it covers (evenly; see the module docstring)."""
    if record_frames < 1 or decoded_frames < 1:
        raise InputError(f"cannot map {record_frames} record frames onto {decoded_frames} decoded frames.")
    spans = []
    for f in range(record_frames):
        start = f * decoded_frames // record_frames
        stop = max(start + 1, (f + 1) * decoded_frames // record_frames)
        spans.append((start, stop))
    return spans


def panel_frames(total: int, max_frames: int) -> np.ndarray:
    """Up to `max_frames` record frames spread evenly over `total`, first and last included."""
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise InputError(f"the number of frames shown must be an int >= 1, got {max_frames!r}.")
    if total <= max_frames:
        return np.arange(total)
    return np.unique(np.round(np.linspace(0, total - 1, max_frames)).astype(np.int64))


def as_frames(frames: Any) -> np.ndarray:
    """Decoded frames as uint8 [F, H, W, 3] RGB, from what `read_video` returns or a close relative:
    a list of HxWx3 arrays or PIL images, grey [F, H, W], RGBA, channel-first [F, 3, H, W], floats in [0, 1]."""
    try:
        array = np.stack([np.asarray(f) for f in frames]) if isinstance(frames, (list, tuple)) else np.asarray(frames)
    except (ValueError, TypeError) as err:
        raise InputError(f"frames must be an array [F, H, W, 3] (or a list of equal-size frames): {err}") from err
    if array.ndim == 3:  # grey
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim == 4 and array.shape[-1] not in (3, 4) and array.shape[1] in (3, 4):
        array = array.transpose(0, 2, 3, 1)  # channel-first
    if array.ndim != 4 or array.shape[-1] not in (3, 4) or 0 in array.shape:
        raise InputError(f"frames must be RGB images [F, H, W, 3] with F, H, W >= 1, got shape {array.shape}.")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"frames must hold numbers, got dtype {array.dtype}.")
    scale = 255.0 if np.issubdtype(array.dtype, np.floating) and np.nanmax(array) <= 1.0 else 1.0
    return np.clip(np.nan_to_num(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def upsample(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w] cell mask -> [height, width] pixel mask; cell (i, j) covers its even share of the frame."""
    h, w = mask.shape
    rows = np.arange(height) * h // height
    cols = np.arange(width) * w // width
    return mask[rows][:, cols]


def mask_outline(mask: np.ndarray) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Edges around the True region of an [h, w] cell mask, as ((x0, y0), (x1, y1)) in cell units (x = column,
    y = row, cell (i, j) spans [j, j + 1] x [i, i + 1]): each side of a True cell whose neighbour is False or
    outside the grid."""
    padded = np.pad(mask.astype(bool), 1)
    inside = padded[1:-1, 1:-1]
    edges = []
    for i, j in zip(*np.nonzero(inside), strict=True):
        if not padded[i, j + 1]:  # above
            edges.append(((j, i), (j + 1, i)))
        if not padded[i + 2, j + 1]:  # below
            edges.append(((j, i + 1), (j + 1, i + 1)))
        if not padded[i + 1, j]:  # left
            edges.append(((j, i), (j, i + 1)))
        if not padded[i + 1, j + 2]:  # right
            edges.append(((j + 1, i), (j + 1, i + 1)))
    return [(tuple(map(int, a)), tuple(map(int, b))) for a, b in edges]


def overlay_image(frame: np.ndarray | None, keep: np.ndarray, registers: np.ndarray, size: int = 192) -> np.ndarray:
    """One panel: `frame` (uint8 HxWx3) at full brightness on kept cells, dimmed to `DIM` elsewhere, register
    cells tinted magenta. Without a frame, a mid-grey frame of `size` pixels a side stands in."""
    if frame is None:
        frame = np.full((size, size * keep.shape[1] // keep.shape[0], 3), 160, dtype=np.uint8)
    height, width = frame.shape[:2]
    kept = upsample(keep, height, width)[..., None]
    reg = upsample(registers, height, width)[..., None]
    image = np.where(kept, frame.astype(np.float64), frame * DIM)
    image = np.where(reg, (1 - REGISTER_TINT) * frame + REGISTER_TINT * np.array(REGISTER_RGB), image)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class OverlayPanel:
    """One frame of the overlay picture.

    Attributes:
        frame: the record frame shown.
        decoded: the decoded frame drawn under it, or None without frames.
        image: uint8 [H, W, 3], the frame with dropped cells dimmed and register cells tinted.
        keep, registers: [h, w] bool cell masks of this frame (`keep_mask`, `register_mask`).
        kept, tokens, num_registers: kept slots (registers included), tokens and registers of this frame.
        label: the panel's title.
    """

    frame: int
    decoded: int | None
    image: np.ndarray
    keep: np.ndarray
    registers: np.ndarray
    kept: int
    tokens: int
    num_registers: int
    label: str


def overlay_panels(
    record: PruneRecord, frames: Any | None, sample: int = 0, max_frames: int = 16
) -> list[OverlayPanel]:
    """The overlay's panels: per shown record frame, its image, masks, counts and label.

    Args:
        record: a `PruneRecord` with a grid.
        frames: the decoded frames (see `as_frames`), or None to draw the cells on grey.
        sample: which sample of the batch.
        max_frames: at most this many frames, evenly spaced (`panel_frames`).

    Raises:
        InputError: no grid in the record, frames that are not images, or `max_frames` < 1.
    """
    keep, registers = keep_mask(record, sample), register_mask(record, sample)
    total = keep.shape[0]
    shown = panel_frames(total, max_frames)
    images = as_frames(frames) if frames is not None else None
    spans = decoded_frame_spans(total, len(images)) if images is not None else None
    if images is not None and len(images) != total:
        logger.info(
            "%d record frames over %d decoded frames: record frame f is drawn on decoded frame floor(f * %d / %d)",
            total,
            len(images),
            len(images),
            total,
        )
    h, w = keep.shape[1:]
    panels = []
    for f in shown.tolist():
        decoded = spans[f][0] if spans is not None else None
        label = f"frame {f}"
        if spans is not None and spans[f] != (f, f + 1):
            start, stop = spans[f]
            label += f" (clip {start})" if stop - start == 1 else f" (clip {start}-{stop - 1})"
        kept, regs = int(keep[f].sum()), int(registers[f].sum())
        label += f"\nkept {kept}/{h * w}" + (f", {regs} reg" if regs else "")
        image = overlay_image(images[decoded] if images is not None else None, keep[f], registers[f])
        panels.append(OverlayPanel(f, decoded, image, keep[f], registers[f], kept, h * w, regs, label))
    return panels
