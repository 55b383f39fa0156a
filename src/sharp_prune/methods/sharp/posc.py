"""PosC, positional bias calibration: remove the content-free part of the attention scores.

The prior b is the same score computed on a content-free copy of the input (every visual token's input
embedding replaced by that of a black frame; same text, same segments), through layers 0..K-1 only.
"""

from __future__ import annotations

import torch

EPS = 1e-6


def calibrate(scores: torch.Tensor, prior: torch.Tensor, mode: str = "subtract", lam: float = 1.0) -> torch.Tensor:
    """Calibrated scores: s - lam * b ("subtract") or s / (b + eps) ("divide")."""
    if mode == "subtract":
        return scores - lam * prior
    if mode == "divide":
        return scores / (prior + EPS)
    raise ValueError(f"unknown PosC mode {mode!r}; use 'subtract' or 'divide'.")


def frame_local_index(frame_ids: torch.Tensor) -> torch.Tensor:
    """Rank of each visual token inside its frame: [b, N] non-decreasing frame ids -> [b, N]."""
    n = frame_ids.shape[1]
    index = torch.arange(n, device=frame_ids.device).expand_as(frame_ids)
    new_frame = torch.ones_like(frame_ids, dtype=torch.bool)
    new_frame[:, 1:] = frame_ids[:, 1:] != frame_ids[:, :-1]
    frame_start = torch.cummax(torch.where(new_frame, index, 0), dim=1).values
    return index - frame_start


def tile_blank_frame(
    blank_frame: torch.Tensor, frame_ids: torch.Tensor, kept: torch.Tensor | None = None
) -> torch.Tensor:
    """[P, D] features of one blank frame -> [b, N, D] blank visual embeddings, frame by frame.

    Token i of every frame gets the blank frame's token i (frames longer than P wrap around).

    Args:
        blank_frame: [P, D] features of one blank frame.
        frame_ids: [b, N] non-decreasing frame ids of all the video tokens.
        kept: [b, N'] indices (into the N tokens) of those to tile for, e.g. what the pre-LLM stage kept:
            each keeps its place in its frame (a token's rank among the survivors is not its place).
            Default: all N.
    """
    local = frame_local_index(frame_ids)
    if kept is not None:
        local = local.gather(1, kept)
    return blank_frame[local % blank_frame.shape[0]]
