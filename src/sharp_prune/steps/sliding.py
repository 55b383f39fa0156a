"""Sliding-window layers (Gemma 3, Gemma 4, ...): where scores can be read, and their masks after pruning.

A sliding layer attends only to the last W positions, so its scores are not the attention the model pays to a
video token outside that window: scores are read at the last full-attention layer at or below K-1 (`score_layer`).

Layers >= K keep each sliding window in *original* positions: a kept token sees the kept tokens of the W positions
before it, as in the unpruned model. The kept tokens keep their original RoPE positions, and a sliding layer was
never trained on relative distances beyond W; counting the window in kept tokens instead (as if the kept
sequence were the input) let those layers see up to N tokens back, and on Gemma 3 270M it cost most of the
accuracy (docs/benchmarks.md). In the prefill this is the model's own mask cut to the kept rows and columns; when
decoding, `decode_window_mask` rebuilds it over what transformers' sliding cache holds.
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


def decode_window_mask(
    like: torch.Tensor,
    kept_positions: torch.Tensor,
    kept_valid: torch.Tensor | None,
    seq_len: int,
    cached: int,
    new: int,
    window: int,
) -> torch.Tensor:
    """[b, 1, new, kv] mask of a sliding layer >= K for a step that continues a pruned prefill.

    The layer's cache has seen `cached` tokens (the n kept ones of the prefill, then those decoded since) and
    holds the last `window - 1` of them; the keys are those plus the `new` ones. A query sees a key at most
    `window - 1` original positions back, as in the unpruned model. Decoded tokens are never padding.

    Args:
        like: the mask transformers built for the step (dtype and device are kept; its shape is not: it counts the
            unpruned sequence).
        kept_positions: [b, n] original positions of the kept tokens (the keep plan's index).
        kept_valid: [b, n] bool, False for padding among them; None without padding.
        seq_len: the prefill's length before pruning (decoded tokens follow it).
        cached: tokens the layer's cache has seen before this step; new: tokens of this step.
    """
    n = kept_positions.shape[1]
    device = like.device
    held = min(cached, window - 1)
    columns = torch.arange(cached - held, cached + new, device=device)  # indices into kept + decoded
    kept = kept_positions.to(device)[:, columns.clamp(max=n - 1)]
    key_position = torch.where(columns < n, kept, seq_len + columns - n)  # [b, kv] original positions
    query_position = seq_len + torch.arange(cached, cached + new, device=device) - n  # [new]
    distance = query_position[None, :, None] - key_position[:, None, :]  # [b, new, kv]
    allowed = ((distance >= 0) & (distance < window))[:, None]
    if kept_valid is not None:
        valid = torch.where(columns < n, kept_valid.to(device)[:, columns.clamp(max=n - 1)], True)
        allowed = allowed & valid[:, None, None, :]
    if like.dtype == torch.bool:
        return allowed
    zero = torch.zeros((), dtype=like.dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(like.dtype).min)
