"""Step "score": the attention the query rows pay to every video token at layer K-1, without an N x N matrix.

Only the requested query rows are scored against all keys, in fp32, a few heads at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .locate import Located

# Upper bound on the fp32 elements of one [b, heads, rows, keys] logits chunk (~64 MB).
_CHUNK_ELEMENTS = 16 * 1024 * 1024


def attention_received(
    query: torch.Tensor,
    key: torch.Tensor,
    query_index: torch.Tensor,
    query_valid: torch.Tensor,
    key_valid: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """Mean softmax attention each key receives from the chosen query rows.

    a[h, i, j] = softmax_j(q[h, i] . k[h, j] * scaling) over the causal row of query i (keys j <= i that
    are not padding); the result is a[h, i, j] averaged over heads h and valid rows i.

    Args:
        query: [b, H, L, d] post-RoPE queries of the whole prefill sequence.
        key: [b, H_kv, L, d] post-RoPE keys (H must be a multiple of H_kv: grouped-query attention).
        query_index: [b, R] sequence positions of the query rows to score.
        query_valid: [b, R] bool, False for padding entries of `query_index`.
        key_valid: [b, L] bool, False for padding keys, or None when there is no padding.
        scaling: the softmax temperature of the layer (usually head_dim ** -0.5).

    Returns:
        [b, L] fp32 scores; keys no valid row can see get 0.
    """
    b, num_heads, seq_len, head_dim = query.shape
    num_kv = key.shape[1]
    if num_heads % num_kv:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv} key heads.")
    group = num_heads // num_kv
    rows = query_index.shape[1]
    # [b, H, R, d] -> [b, H_kv, group * R, d]: each key head scores all rows of its query group at once.
    gather_index = query_index[:, None, :, None].expand(b, num_heads, rows, head_dim)
    q_rows = query.gather(2, gather_index).float().reshape(b, num_kv, group * rows, head_dim)
    keys = key.float()

    positions = torch.arange(seq_len, device=query.device)
    allowed = positions[None, None, :] <= query_index[:, :, None]  # [b, R, L] causal rows
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, :].bool()
    allowed = allowed & query_valid[:, :, None].bool()
    allowed = allowed[:, None].expand(b, group, rows, seq_len).reshape(b, 1, group * rows, seq_len)

    total = torch.zeros(b, seq_len, dtype=torch.float32, device=query.device)
    heads_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, b * group * rows * seq_len))
    for start in range(0, num_kv, heads_per_chunk):
        stop = min(num_kv, start + heads_per_chunk)
        logits = torch.matmul(q_rows[:, start:stop], keys[:, start:stop].transpose(-1, -2)) * scaling
        logits = logits.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        # Rows with no allowed key (padding rows) give NaN: zero them.
        probs = torch.nan_to_num(probs, nan=0.0)
        total += probs.sum(dim=(1, 2))
    count = query_valid.sum(dim=1, keepdim=True).clamp(min=1).float() * num_heads
    return total / count


def remove_rope(
    query: torch.Tensor,
    key: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    apply_rope: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Undo RoPE: rotating back by the same angles, x = R(-angle) y / (cos^2 + sin^2).

    `apply_rope`: the model's own `apply_rotary_pos_emb(q, k, cos, sin)`, called with -sin, so that its pairing
    of dimensions (rotate-half, or GLM-4V's interleaved pairs) and its partial rotary dimensions (cos narrower than
    the head: the rest is not rotated) hold; None: rotate-half over the rotary dimensions.
    """
    cos, sin = (t.float() for t in rope)
    query, key = query.float(), key.float()
    rotary = cos.shape[-1]
    # cos^2 + sin^2 is the attention scaling squared (1 for plain RoPE) on the rotary dimensions, 1 past them
    norm = torch.nn.functional.pad((cos * cos + sin * sin).unsqueeze(1), (0, query.shape[-1] - rotary), value=1.0)
    if apply_rope is not None:
        query, key = apply_rope(query, key, cos, -sin)
        return query / norm, key / norm
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)

    def unrotate(y: torch.Tensor) -> torch.Tensor:
        y_rot, y_pass = y[..., :rotary], y[..., rotary:]
        half = rotary // 2
        rotated = torch.cat((-y_rot[..., half:], y_rot[..., :half]), dim=-1)
        return torch.cat((y_rot * cos - rotated * sin, y_pass), dim=-1) / norm

    return unrotate(query), unrotate(key)


def score_video(
    query: torch.Tensor,
    key: torch.Tensor,
    located: Located,
    scaling: float,
    rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    apply_rope: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """[b, N] fp32 attention each video token receives from the query rows (RoPE removed first when `rope` given).

    Args:
        query: [b, H, L, d] post-RoPE queries of layer K-1; key: [b, H_kv, L, d] post-RoPE keys.
        located: the prefill's video tokens and query rows.
        scaling: the layer's softmax temperature.
        rope: the layer's (cos, sin), to score without RoPE (FEATHER); None: post-RoPE (FastV, ShaRP).
        apply_rope: the model's own RoPE function (see `remove_rope`), or None.
    """
    if rope is not None:
        query, key = remove_rope(query, key, rope, apply_rope)
    scores = attention_received(query, key, located.query_index, located.query_valid, located.key_valid, scaling)
    return scores.gather(1, located.layout.positions.to(scores.device))
