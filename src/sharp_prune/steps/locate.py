"""Step "locate": where the video tokens are (`VisualLayout`, found by the model family's adapter from one
forward call's inputs), and what follows from it before any layer runs (`Located`: the budget, the query rows
that will score the video, padding).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import InputError
from .indices import true_first


@dataclass(frozen=True)
class VisualLayout:
    """Prunable visual tokens of a batch, in original sequence coordinates.

    Every sample of a batch carries the same number N of prunable visual tokens (the engine keeps the
    same budget per sample and a rectangular kept sequence).

    Attributes:
        positions: [b, N] long, sorted sequence positions (in the padded input) of the visual tokens.
        frame_ids: [b, N] long, frame index (0-based, non-decreasing) of each visual token.
        grid: (h, w) when each frame's tokens are an h x w raster (VLMs), else None.
        span_end: [b] long, the last position of the video span, counting video tokens that are never pruned
            (LLaVA-OV's trailing newline, a video token that ends the prompt); None: the last prunable one.
            Text query rows are the text tokens after it.
        frames: the number of frames (`frame_ids.max() + 1`) when known on the host, else None.
    """

    positions: torch.Tensor
    frame_ids: torch.Tensor
    grid: tuple[int, int] | None = None
    span_end: torch.Tensor | None = None
    frames: int | None = None

    @property
    def video_end(self) -> torch.Tensor:
        """[b] last position of the video span (see `span_end`)."""
        return self.positions[:, -1] if self.span_end is None else self.span_end

    @property
    def batch_size(self) -> int:
        return self.positions.shape[0]

    @property
    def num_visual(self) -> int:
        return self.positions.shape[1]

    @property
    def num_frames(self) -> int:
        if self.frames is not None:
            return self.frames
        return int(self.frame_ids.max().item()) + 1 if self.num_visual else 0

    @classmethod
    def from_frame_map(cls, frame_map: torch.Tensor, grid: tuple[int, int] | None = None) -> VisualLayout | None:
        """Build a layout from a [b, L] map holding each visual token's frame index and -1 elsewhere.

        Returns None when no sample has a visual token. Raises `InputError` when samples differ in their
        number of visual tokens, or when frame indices are not non-decreasing along the sequence.
        """
        if frame_map.ndim != 2:
            raise InputError(f"visual frame map must be [batch, seq_len], got shape {tuple(frame_map.shape)}.")
        is_visual = frame_map >= 0
        # Frame indices must not go down along the sequence: compare each visual token with the running
        # maximum of the tokens before it (text is -1, so it never raises the maximum).
        running = frame_map.cummax(dim=1).values
        goes_down = is_visual[:, 1:] & (frame_map[:, 1:] < running[:, :-1])
        summary = torch.stack([is_visual.sum(dim=1), frame_map.max(dim=1).values, goes_down.any(dim=1).long()])
        counts, last_frame, down = summary.tolist()  # the host sync of this step: N sets every shape after it
        if max(counts) == 0:
            return None
        if 0 in counts:
            empty = [i for i, c in enumerate(counts) if c == 0]
            raise InputError(
                f"sample(s) {empty} of the batch carry no video tokens while others carry {max(counts)}; a batch is "
                "pruned together, so run the text-only samples in a batch of their own (or without pruning)."
            )
        if len(set(counts)) != 1:
            raise InputError(
                f"every sample of a batch must carry the same number of video tokens to be pruned together, got "
                f"{counts}; sample the same number of frames at the same size per video, or run the samples "
                "one at a time."
            )
        if any(down):
            raise InputError("frame indices of visual tokens must be non-decreasing along the sequence.")
        n = counts[0]
        # A stable sort puts each sample's visual positions first, in order (nonzero() would wait for the device).
        positions = true_first(is_visual, dim=1)[:, :n].contiguous()
        frame_ids = frame_map.gather(1, positions)
        return cls(positions=positions, frame_ids=frame_ids, grid=grid, frames=max(last_frame) + 1)


def protect_last_token(
    layout: VisualLayout,
    key_valid: torch.Tensor | None,
    seq_len: int,
    ends: list[int] | None = None,
    last: torch.Tensor | None = None,
) -> VisualLayout | None:
    """The layout without the prompt's last token when that token is a video token.

    The last position yields the next-token logits (and `generate`'s first token): it is never pruned. It leaves
    the prunable set and counts as part of the video span (`span_end`), so text-query scoring still sees no
    text after the video. Returns None when no prunable token is left.

    Raises `InputError` when some samples of the batch end in a video token and others do not (the samples
    would keep different numbers of video tokens).

    `ends`: per sample, 1 where it ends in a video token, when the caller has read it already (else read here);
    `last`: [b] each sample's last real position, when the caller has it.
    """
    if last is None:
        last = _last_real(layout, key_valid, seq_len)
    if ends is None:
        ends = (layout.positions[:, -1] == last).long().tolist()  # positions are sorted: only the last can be it
    count = sum(ends)
    if count == 0:
        return layout
    if count != layout.batch_size:
        rows = [i for i, e in enumerate(ends) if e]
        raise InputError(
            f"sample(s) {rows} of the batch end with a video token and the others do not; the last token is never "
            "pruned (it gives the next-token logits), so those samples would keep one video token fewer. Put text "
            "after the video in every sample (or in none), or run them separately."
        )
    if layout.num_visual == 1:
        return None
    return VisualLayout(
        positions=layout.positions[:, :-1],
        frame_ids=layout.frame_ids[:, :-1],
        grid=layout.grid,
        span_end=torch.maximum(layout.video_end, last),
    )


def _last_real(layout: VisualLayout, key_valid: torch.Tensor | None, seq_len: int) -> torch.Tensor:
    """[b] the last non-padding position of each sample."""
    device = layout.positions.device
    if key_valid is None:
        return torch.full((layout.batch_size,), seq_len - 1, device=device)
    return torch.where(key_valid.to(device), torch.arange(seq_len, device=device), -1).max(dim=1).values


def frame_map_for_span(
    seq_len: int, start: int, num_frames: int, tokens_per_frame: int, batch_size: int = 1
) -> torch.LongTensor:
    """[batch_size, seq_len] map for the generic adapter: frames laid out contiguously from `start`.

    Token `start + f * tokens_per_frame + i` belongs to frame f; every other position is -1 (text).
    """
    for name, value in (
        ("seq_len", seq_len),
        ("start", start),
        ("num_frames", num_frames),
        ("tokens_per_frame", tokens_per_frame),
        ("batch_size", batch_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"frame_map_for_span: {name} must be an int, got {type(value).__name__} {value!r}.")
    if batch_size < 1:
        raise InputError(f"frame_map_for_span: batch_size must be >= 1, got {batch_size}.")
    end = start + num_frames * tokens_per_frame
    if start < 0 or num_frames < 1 or tokens_per_frame < 1 or end > seq_len:
        raise InputError(
            f"span of {num_frames} frames x {tokens_per_frame} tokens from position {start} does not fit a "
            f"sequence of {seq_len} tokens."
        )
    row = torch.full((seq_len,), -1, dtype=torch.long)
    row[start:end] = torch.arange(num_frames).repeat_interleave(tokens_per_frame)
    return row.unsqueeze(0).expand(batch_size, -1).clone()


def checked_frame_map(frame_map: Any) -> torch.Tensor:
    """A declared frame map (generic adapter) as a long tensor, or `InputError` saying what a frame map is."""
    what = "a frame map is an integer tensor [batch, seq_len]: each visual token's frame index (0, 1, ...), -1 for text"
    if not isinstance(frame_map, torch.Tensor) or frame_map.ndim != 2 or 0 in frame_map.shape:
        shape = tuple(frame_map.shape) if isinstance(frame_map, torch.Tensor) else type(frame_map).__name__
        raise InputError(f"{what}; got {shape}. Build one with sp.frame_map_for_span(...).")
    if frame_map.dtype == torch.bool:
        raise InputError(
            f"{what}; got a bool mask, which cannot say which frame a token belongs to (False would read as frame "
            "0). Use torch.where(mask, frame_index, -1), or sp.frame_map_for_span(...)."
        )
    if frame_map.is_floating_point() or frame_map.is_complex():
        raise InputError(f"{what}; got dtype {frame_map.dtype}.")
    frame_map = frame_map.long()
    if frame_map.numel() and int(frame_map.min()) < -1:
        raise InputError(f"{what}; got {int(frame_map.min())}, below -1.")
    return frame_map


def query_rows(
    layout: VisualLayout, key_valid: torch.Tensor | None, seq_len: int, which: str, text_after: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """[b, R] query positions and validity: the last real token, or every text token after the video.

    `text_after`: per sample, the number of real text tokens after the video, when the caller has read it.
    """
    device = layout.positions.device
    b = layout.batch_size
    positions = torch.arange(seq_len, device=device).expand(b, -1)
    valid = key_valid if key_valid is not None else torch.ones(b, seq_len, dtype=torch.bool, device=device)
    if which == "last":
        last = torch.where(valid, positions, -1).max(dim=1).values
        return last[:, None], torch.ones(b, 1, dtype=torch.bool, device=device)
    rows_mask = (positions > layout.video_end[:, None]) & valid
    counts = rows_mask.sum(dim=1)
    if text_after is None:
        text_after = counts.tolist()
    if min(text_after) == 0:
        raise InputError(
            "scoring with text queries needs at least one text token after the last video token in every "
            "sample; put the question after the video, or use a method that scores with the last token."
        )
    width = max(text_after)
    # Stable sort puts each sample's query rows first, in order; pad with the last row, marked invalid.
    order = torch.sort((~rows_mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
    query_valid = torch.arange(width, device=device)[None, :] < counts[:, None]
    return order, query_valid


@dataclass(frozen=True)
class Located:
    """The video tokens of one prefill, in the coordinates of the sequence entering the decoder.

    Attributes:
        layout: the prunable video tokens and their frames.
        seq_len: L, the padded length entering the decoder.
        key_valid: [b, L] bool, False at padding (None: no padding mask).
        budget: B, video slots per sample that continue past layer K.
        query_index, query_valid: [b, R] the rows that score the video at K-1 (None: the method scores nothing).
        num_query_rows: per sample, the valid query rows (None: the method scores nothing, or not read yet).
    """

    layout: VisualLayout
    seq_len: int
    key_valid: torch.Tensor | None
    budget: int
    query_index: torch.Tensor | None = None
    query_valid: torch.Tensor | None = None
    num_query_rows: list[int] | None = None


def locate(
    layout: VisualLayout | None, key_valid: torch.Tensor | None, seq_len: int, budget_of: Any, query: str
) -> Located | None:
    """The `Located` of a prefill from the adapter's layout (None: nothing to prune).

    Args:
        layout: what the adapter found, or None.
        key_valid: [b, L] False at padding, or None.
        seq_len: L.
        budget_of: the method's budget rule, N -> B.
        query: the method's query rows ("none", "last", "text").
    """
    if layout is None:
        return None
    # Everything the host must know before the budget and the query rows, read from the device at once.
    valid = key_valid.bool() if key_valid is not None else None
    last = _last_real(layout, valid, seq_len)
    ends = layout.positions[:, -1] == last
    after = torch.arange(seq_len, device=last.device)[None, :] > layout.video_end[:, None]
    text_after = (after & valid).sum(dim=1) if valid is not None else after.sum(dim=1)
    padded = (~valid.gather(1, layout.positions)).any(dim=1) if valid is not None else torch.zeros_like(ends)
    padded, ends, text_after = torch.stack([padded.long(), ends.long(), text_after]).tolist()
    if any(padded):
        raise InputError("some visual tokens are masked out as padding in attention_mask; check the inputs.")
    layout = protect_last_token(layout, key_valid, seq_len, ends, last)
    if layout is None:
        return None
    # a sample that ends in a video token has no text after it either way
    return located_for(layout, key_valid, seq_len, budget_of, query, text_after)


def located_for(
    layout: VisualLayout,
    key_valid: torch.Tensor | None,
    seq_len: int,
    budget_of: Any,
    query: str,
    text_after: list[int] | None = None,
) -> Located:
    """`Located` of a layout: its budget, and the query rows for `query` (`text_after`: see `query_rows`)."""
    located = Located(layout=layout, seq_len=seq_len, key_valid=key_valid, budget=budget_of(layout.num_visual))
    if query == "none":
        return located
    index, valid = query_rows(layout, key_valid, seq_len, query, text_after)
    if query == "last":
        rows = [1] * layout.batch_size
    else:
        rows = text_after if text_after is not None else valid.sum(dim=1).tolist()
    return replace(located, query_index=index, query_valid=valid, num_query_rows=rows)
