"""Sliding-window layers (Gemma 3, Gemma 4, ...) and linear-attention layers (Qwen3.5): where scores can be read,
and the masks of sliding layers after pruning.

A sliding layer attends only to the last W positions, so its scores are not the attention the model pays to a
video token outside that window: scores are read at the last full-attention layer at or below K-1 (`score_layer`).

Layers >= K keep each sliding window in *original* positions: a kept token sees the kept tokens of the W positions
before it, as in the unpruned model. The kept tokens keep their original RoPE positions, and a sliding layer was
never trained on relative distances beyond W; counting the window in kept tokens instead (as if the kept
sequence were the input) let those layers see up to N tokens back, and on Gemma 3 270M it cost most of the
accuracy (docs/benchmarks.md). In the prefill this is the model's own mask cut to the kept rows and columns; when
decoding, `decode_window_mask` rebuilds it over what transformers' sliding cache holds.

Gemma 4's KV-sharing layers attend to the keys and values of an earlier layer of their kind (`hf.kv_sources`), so
K must be at or below every such source (`check_shared_kv_k`): the sources then cache the kept tokens only.

A linear-attention layer (Gated DeltaNet) has no attention scores either: it folds the sequence into a recurrent
state. Layers >= K build that state from the kept tokens only (the kept sequence, run directly); their 2-D padding
mask is cut to the kept positions in the prefill and is already local when decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError


def score_layer(
    windows: Sequence[int | None],
    k: int,
    model: str = "this model",
    kinds: Sequence[str] = (),
) -> int:
    """The last full-attention layer at or below K-1: the one whose attention scores the video tokens.

    `windows` from `hf.layer_windows`; `kinds` (`hf.layer_kinds`) marks linear-attention layers, which have no
    window yet no attention scores either. Raises `ConfigError` when layers 0..K-1 have no full-attention layer,
    naming the smallest K that has one.
    """
    full = [
        index
        for index, window in enumerate(windows)
        if window is None and (index >= len(kinds) or kinds[index] != "linear_attention")
    ]
    below = [index for index in full if index <= k - 1]
    if below:
        return below[-1]
    legal = f"K >= {full[0] + 1} (full-attention layers: {full})" if full else "none: it has no full-attention layer"
    how = "attend in a sliding window" if "linear_attention" not in kinds else "attend in a sliding window or linearly"
    raise ConfigError(
        f"layer K={k}: decoder layers 0..{k - 1} of {model} all {how}, so none sees the whole video to score it; "
        f"pick {legal}, or a method that reads no scores (random, uniform, divprune)."
    )


def check_linear_layer_k(kinds: Sequence[str], k: int, model: str = "this model") -> None:
    """On a stack with linear-attention layers, every method needs a full-attention layer below K.

    transformers reads the cache's length (positions, the causal mask's width when decoding) from the first
    full-attention layer; at or after K that layer holds only the kept tokens, and decoding would continue at the
    wrong position. Raises `ConfigError` naming the smallest legal K.
    """
    if "linear_attention" not in kinds:
        return
    full = [index for index, kind in enumerate(kinds) if kind == "full_attention"]
    if full and full[0] < k:
        return
    legal = f"K >= {full[0] + 1} (full-attention layers: {full})" if full else "none: it has no full-attention layer"
    raise ConfigError(
        f"layer K={k}: decoder layers 0..{k - 1} of {model} are all linear-attention (or sliding) layers; the cache's "
        f"length is read from the first full-attention layer, which must see the whole prefill: pick {legal}."
    )


def check_shared_kv_k(kv_sources: Sequence[int], k: int, model: str = "this model") -> None:
    """Gemma 4's KV-sharing layers attend to keys and values another layer computed (`hf.kv_sources`). Pruned
    queries need pruned keys: a sharing layer at or after K needs its source at or after K too. Raises
    `ConfigError` naming the largest legal K."""
    late = [(index, source) for index, source in enumerate(kv_sources) if index >= k and source < k]
    if not late:
        return
    sources = sorted({source for index, source in enumerate(kv_sources) if source != index})
    index, source = late[0]
    raise ConfigError(
        f"layer K={k}: decoder layer {index} of {model} reuses the keys and values of layer {source}, which runs "
        f"before K on the unpruned sequence; pick K <= {sources[0]} (layers that store shared keys and values: "
        f"{sources})."
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
