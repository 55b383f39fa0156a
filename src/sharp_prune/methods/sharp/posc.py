"""PosC, positional bias calibration: remove the content-free part of the attention scores.

The prior b is the same score computed on a content-free copy of the input (every visual token's input
embedding replaced by that of a black frame; same text, same segments), through layers 0..K-1 only.
"""

from __future__ import annotations

import torch

EPS = 1e-6
MODES = ("subtract", "divide")


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


def blank_embeddings(
    embeds: torch.Tensor,
    positions: torch.Tensor,
    blank_frame: torch.Tensor,
    frame_ids: torch.Tensor,
    kept: torch.Tensor | None = None,
) -> torch.Tensor:
    """The content-free copy of the decoder's input: every visual token replaced by the black frame's token at
    its place in its frame.

    Args:
        embeds: [b, L, D] input embeddings of the decoder (text unchanged).
        positions: [b, N] positions of the visual tokens in `embeds`.
        blank_frame: [P, D] features of one black frame (from the model family's vision tower).
        frame_ids: [b, N0] frame ids of all the video's tokens (before any pre-LLM stage).
        kept: [b, N] indices into those N0 of the tokens present (after a pre-LLM stage), or None (all).
    """
    blank = tile_blank_frame(blank_frame, frame_ids, kept)
    return embeds.scatter(1, positions[..., None].expand_as(blank), blank.to(embeds.dtype))


def layout_key(
    seq_len: int,
    grid: tuple[int, int] | None,
    positions: torch.Tensor,
    frame_ids: torch.Tensor,
    key_valid: torch.Tensor | None,
    query_valid: torch.Tensor | None,
    segments: torch.Tensor | None,
    survivors: torch.Tensor | None,
) -> tuple:
    """What the cached prior (`posc_prior="cached"`) depends on: the token layout (and segments), not the content.

    Every video position counts, not only the first (text may sit between frames), and so does the frame
    grid (a 2 x 3 and a 3 x 2 grid have the same token counts but different blank frames and M-RoPE
    positions); after the pre-LLM stage, so do the original positions of the survivors (their places).
    """
    b, n = positions.shape
    device = positions.device
    # Everything the key holds, read from the device in one transfer (one host sync per prefill).
    if key_valid is not None:
        first_real = key_valid.long().argmax(dim=1)  # the first non-padding position
    else:
        first_real = torch.zeros(b, dtype=torch.long, device=device)
    queries = query_valid.long().sum(dim=1) if query_valid is not None else torch.zeros_like(first_real)
    parts = [first_real[:, None], queries[:, None], positions - first_real[:, None], frame_ids.to(device)]
    if segments is not None:
        parts.append(segments.to(device))
    if survivors is not None:
        parts.append(survivors.to(device))
    flat = torch.cat([p.long() for p in parts], dim=1).tolist()
    return (seq_len, grid, segments is not None, survivors is not None, tuple(tuple(row) for row in flat))
