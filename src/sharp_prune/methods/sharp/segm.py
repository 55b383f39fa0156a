"""SegM, segment-aware causal masking: find scene segments, then attend within them in layers < K.

In layers 0..K-1 a visual token attends to the non-visual tokens before it (the prompt before the video,
interleaved separators) and to visual tokens of its own segment only (causally, or bidirectionally
with `within="bidirectional"`); text tokens keep the normal causal mask. Attention is computed per
block (text rows, then each segment's rows against the keys it may see), never through an L x L mask,
so these layers cost less than plain causal attention. In the usual layout (prompt, then the video,
no text inside a segment) each segment block is a plain causal (or full) attention over
[prompt; segment], which runs on the fast kernels with no mask at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def frame_descriptors(visual_embeds: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
    """L2-normalised mean input embedding of each frame: [N, D] and [N] frame ids -> [F, D].

    A frame with no tokens (the pre-LLM stage dropped them all as duplicates of the frame before) takes the
    descriptor of the nearest earlier frame that has tokens (of the first one, for leading empty frames): it
    continues that frame's scene instead of forcing cuts on both sides with a zero descriptor.
    """
    num_frames = int(frame_ids.max()) + 1
    sums = torch.zeros(num_frames, visual_embeds.shape[-1], dtype=torch.float32, device=visual_embeds.device)
    sums.index_add_(0, frame_ids, visual_embeds.float())
    descriptors = F.normalize(sums, dim=-1)
    present = torch.bincount(frame_ids, minlength=num_frames) > 0
    if bool(present.all()):
        return descriptors
    index = torch.arange(num_frames, device=frame_ids.device)
    source = torch.where(present, index, torch.full_like(index, -1)).cummax(dim=0).values
    source = torch.where(source < 0, index[present][0], source)
    return descriptors[source]


def segment_frames(descriptors: torch.Tensor, tau: float, max_segments: int) -> torch.Tensor:
    """Segment id of each frame: cut after frame f where cos(e_f, e_f+1) < tau.

    When that gives more than `max_segments` segments, only the `max_segments - 1` lowest-similarity
    cuts are kept (ties: earlier cut first).

    Args:
        descriptors: [F, D] L2-normalised frame descriptors.
        tau: similarity threshold.
        max_segments: cap on the number of segments.

    Returns:
        [F] long, non-decreasing segment ids starting at 0.
    """
    if descriptors.shape[0] < 2:
        return torch.zeros(descriptors.shape[0], dtype=torch.long, device=descriptors.device)
    return segments_from_similarity((descriptors[:-1] * descriptors[1:]).sum(dim=-1), tau, max_segments)


def segments_from_similarity(similarity: torch.Tensor, tau: float, max_segments: int) -> torch.Tensor:
    """SegM's cut rule on the [F-1] frame-to-frame cosines: [F] segment ids (see `segment_frames`)."""
    cuts = similarity < tau
    if int(cuts.sum()) > max_segments - 1:
        order = torch.argsort(similarity, stable=True)[: max_segments - 1]
        cuts = torch.zeros_like(cuts)
        cuts[order] = True
    segments = torch.zeros(similarity.shape[0] + 1, dtype=torch.long, device=similarity.device)
    segments[1:] = cuts.long().cumsum(0)
    return segments


def segment_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segment_map: torch.Tensor,
    key_valid: torch.Tensor | None,
    scaling: float,
    within: str = "causal",
) -> torch.Tensor:
    """Attention under the SegM mask, block by block.

    Args:
        query: [b, H, L, d]; key, value: [b, H_kv, L, d] (grouped-query attention allowed).
        segment_map: [b, L] segment id of each visual token, -1 for every other token.
        key_valid: [b, L] bool, False for padding, or None.
        scaling: softmax temperature.
        within: "causal" or "bidirectional" attention among a segment's visual tokens.

    Returns:
        [b, L, H, d], the layout transformers' attention functions return.
    """
    b, num_heads, seq_len, head_dim = query.shape
    group = num_heads // key.shape[1]
    out = query.new_zeros(b, seq_len, num_heads, head_dim)
    positions = torch.arange(seq_len, device=query.device)
    for i in range(b):
        k_i = key[i].repeat_interleave(group, dim=0) if group > 1 else key[i]
        v_i = value[i].repeat_interleave(group, dim=0) if group > 1 else value[i]
        valid = key_valid[i].bool() if key_valid is not None else torch.ones_like(positions, dtype=torch.bool)
        seg = segment_map[i]
        is_text = seg < 0
        # Text rows: plain causal attention over every real key (few rows, so a mask is cheap).
        _attend_masked(out[i], query[i], k_i, v_i, positions[is_text], positions, valid, None, seg, within, scaling)
        for s in torch.unique(seg[~is_text]).tolist():
            rows = positions[seg == s]
            text_keys = positions[is_text & valid & (positions < rows[0])]
            interleaved = bool((is_text & valid & (positions > rows[0]) & (positions < rows[-1])).any())
            if interleaved:
                keys = positions[(is_text & valid & (positions <= rows[-1])) | (seg == s)]
                _attend_masked(out[i], query[i], k_i, v_i, rows, keys, valid, s, seg, within, scaling)
                continue
            # The usual layout: the text before the video, then the segment. Stacking [text; segment] as
            # queries and keys turns the SegM mask into a plain causal (or full) one: no mask tensor,
            # fast kernels. The text rows computed on the way are discarded.
            block = torch.cat([text_keys, rows])
            # 4-D inputs: torch's CPU kernels take a much slower path for 3-D ones.
            result = F.scaled_dot_product_attention(
                query[i][None, :, block],
                k_i[None, :, block],
                v_i[None, :, block],
                is_causal=within == "causal",
                scale=scaling,
            )[0]
            out[i, rows] = result[:, text_keys.numel() :].transpose(0, 1).to(out.dtype)
    return out


def _attend_masked(
    out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rows: torch.Tensor,
    keys: torch.Tensor,
    valid: torch.Tensor,
    segment: int | None,
    seg: torch.Tensor,
    within: str,
    scaling: float,
) -> None:
    """Rows attend to `keys` causally (plus their whole segment when bidirectional), via a boolean mask."""
    if rows.numel() == 0:
        return
    allowed = keys[None, :] <= rows[:, None]
    if segment is not None and within == "bidirectional":
        allowed = allowed | (seg[keys] == segment)[None, :]
    allowed = allowed & valid[keys][None, :]
    # A padding row may see nothing; let it see itself so that softmax stays finite.
    allowed = allowed | (keys[None, :] == rows[:, None])
    block = F.scaled_dot_product_attention(
        query[None, :, rows], key[None, :, keys], value[None, :, keys], attn_mask=allowed[None, None], scale=scaling
    )[0]
    out[rows] = block.transpose(0, 1).to(out.dtype)


def segment_mask(segment_map: torch.Tensor, key_valid: torch.Tensor | None, within: str = "causal") -> torch.Tensor:
    """The SegM mask as a dense [b, 1, L, L] bool tensor (True: the row may attend to the key).

    Text rows attend causally to every real key; a visual row attends causally to text and to its own segment
    (to all of its segment with ``within="bidirectional"``). A padding row sees itself, so softmax stays finite.
    Quadratic in L: used only where the attention implementation materialises L x L weights anyway (eager).
    """
    b, length = segment_map.shape
    positions = torch.arange(length, device=segment_map.device)
    causal = positions[None, :] <= positions[:, None]
    seg_q, seg_k = segment_map[:, :, None], segment_map[:, None, :]
    same = (seg_q == seg_k) & (seg_q >= 0)
    allowed = causal & ((seg_q < 0) | (seg_k < 0) | same)
    if within == "bidirectional":
        allowed = allowed | same
    if key_valid is not None:
        allowed = allowed & key_valid.bool()[:, None, :]
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=segment_map.device)
    return allowed[:, None]


def _triangle(n: int) -> int:
    return n * (n + 1) // 2


def attention_pairs(
    valid: torch.Tensor, visual: torch.Tensor, segments: torch.Tensor | None, within: str, ideal: bool
) -> int:
    """(query, key) pairs of one layer < K under SegM, for one sample, as `segment_attention` runs it.

    Args:
        valid: [L] bool, False at padding.
        visual: [N] sorted positions of the visual tokens.
        segments: [N] segment ids (None: one segment).
        within: "causal" or "bidirectional".
        ideal: count only the pairs the mask allows (else what the kernels execute: text rows against every key
            through a small mask, and one stacked [prompt; segment] block per segment).
    """
    length, n = valid.numel(), visual.numel()
    is_text = torch.ones(length, dtype=torch.bool)
    is_text[visual] = False
    text_valid = is_text & valid
    text_upto = text_valid.long().cumsum(0)  # real non-visual tokens at positions <= p
    segments = segments if segments is not None else torch.zeros(n, dtype=torch.long)
    sizes = torch.unique_consecutive(segments, return_counts=True)[1].tolist()
    if ideal:
        # text rows: every real key up to themselves; visual rows: the real text before them plus their
        # segment (up to themselves when causal).
        real_upto = valid.long().cumsum(0)
        pairs = int(real_upto[text_valid].sum())
        pairs += int(text_upto[visual].sum())
        if within == "causal":
            return pairs + sum(_triangle(size) for size in sizes)
        return pairs + sum(size * size for size in sizes)
    pairs = (length - n) * length  # text (and padding) rows against every key, through a small mask
    start = 0
    for size in sizes:
        first, last = int(visual[start]), int(visual[start + size - 1])
        start += size
        if int(text_upto[last] - text_upto[first]) > 0:
            # text inside the segment: its rows against [text up to its end; the segment], masked
            pairs += size * (int(text_upto[last]) + size)
        else:
            # the usual layout: one stacked [prompt; segment] block, square
            pairs += (int(text_upto[first]) + size) ** 2
    return pairs
