"""Sliding-window layers (Gemma 3, Gemma 4, ...): where scores can be read, and their masks after pruning.

A sliding layer attends only to the last W positions, so its scores are not the attention the model pays to a
video token outside that window: scores are read at the last full-attention layer at or below K-1 (`score_layer`).
Layers >= K run on the kept sequence as if it had been the input: the window counts kept tokens, which is what a
model fed the kept sequence directly does, and what transformers' sliding cache keeps when decoding continues.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError


def score_layer(windows: Sequence[int | None], k: int, model: str = "this model") -> int:
    """The last full-attention layer at or below K-1: the one whose attention scores the video tokens.

    Raises `ConfigError` when layers 0..K-1 are all sliding-window layers, naming the smallest K that has one.
    """
    full = [index for index, window in enumerate(windows) if window is None]
    below = [index for index in full if index <= k - 1]
    if below:
        return below[-1]
    legal = f"K >= {full[0] + 1} (full-attention layers: {full})" if full else "none: it has no full-attention layer"
    raise ConfigError(
        f"layer K={k}: decoder layers 0..{k - 1} of {model} all attend in a sliding window, so none sees the "
        f"whole video to score it; pick {legal}, or a method that reads no scores (random, uniform, divprune)."
    )


def _as_mask(allowed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`allowed` in the format of the mask the layer received: bool, or additive float (0 / dtype min)."""
    if like.dtype == torch.bool:
        return allowed
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    return torch.where(allowed, zero, torch.finfo(like.dtype).min)


def kept_window_mask(like: torch.Tensor, n: int, kept_valid: torch.Tensor | None, window: int) -> torch.Tensor:
    """[b, 1, n, n] mask of a sliding layer >= K over the n kept tokens of a prefill.

    Query i sees key j <= i with i - j < `window` (counted in kept tokens) that is not padding; every row also
    sees itself, so that a padding row has a finite output (a NaN there would reach others through 0 * NaN).

    Args:
        like: the 4-D mask the layer received (its dtype and device are kept).
        n: the kept tokens.
        kept_valid: [b, n] bool, False for padding among the kept tokens; None without padding.
        window: the layer's sliding window.
    """
    index = torch.arange(n, device=like.device)
    distance = index[:, None] - index[None, :]
    allowed = ((distance >= 0) & (distance < window))[None, None]
    if kept_valid is not None:
        allowed = allowed & kept_valid[:, None, None, :].to(like.device)
    allowed = allowed | torch.eye(n, dtype=torch.bool, device=like.device)
    return _as_mask(allowed, like)


def decode_window_mask(
    like: torch.Tensor, kept_valid: torch.Tensor | None, cached: int, new: int, window: int
) -> torch.Tensor:
    """[b, 1, new, kv] mask of a sliding layer >= K for a step that continues a pruned prefill.

    The layer's cache has seen `cached` tokens (the kept ones, then those decoded since) and holds the last
    `window - 1` of them; the keys are those plus the `new` ones. Decoded tokens are never padding.

    Args:
        like: the mask transformers built for the step (dtype and device are kept; its shape is not: it counts the
            unpruned sequence).
        kept_valid: [b, n] bool, False for padding among the n kept tokens of the prefill; None without padding.
        cached: tokens the layer's cache has seen before this step; new: tokens of this step.
    """
    held = min(cached, window - 1)
    columns = torch.arange(cached - held, cached + new, device=like.device)  # compacted positions of the keys
    rows = torch.arange(cached, cached + new, device=like.device)
    distance = rows[:, None] - columns[None, :]
    allowed = ((distance >= 0) & (distance < window))[None, None]
    if kept_valid is not None:
        n = kept_valid.shape[1]
        from_prefill = kept_valid.to(like.device)[:, columns.clamp(max=n - 1)]
        valid = torch.where(columns < n, from_prefill, True)
        allowed = allowed & valid[:, None, None, :]
    return _as_mask(allowed, like)
