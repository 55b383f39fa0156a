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

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...steps.indices import true_first


def frame_descriptors(
    visual_embeds: torch.Tensor, frame_ids: torch.Tensor, num_frames: int | None = None
) -> torch.Tensor:
    """L2-normalised mean input embedding of each frame: [N, D] and [N] frame ids -> [F, D].

    A frame with no tokens (the pre-LLM stage dropped them all as duplicates of the frame before) takes the
    descriptor of the nearest earlier frame that has tokens (of the first one, for leading empty frames): it
    continues that frame's scene instead of forcing cuts on both sides with a zero descriptor.
    `num_frames`: F when the caller knows it (saves a host sync).
    """
    if num_frames is None:
        num_frames = int(frame_ids.max()) + 1
    sums = torch.zeros(num_frames, visual_embeds.shape[-1], dtype=torch.float32, device=visual_embeds.device)
    sums.index_add_(0, frame_ids, visual_embeds.float())
    descriptors = F.normalize(sums, dim=-1)
    tokens = torch.zeros(num_frames, dtype=torch.long, device=frame_ids.device)
    present = tokens.index_add_(0, frame_ids, torch.ones_like(frame_ids)) > 0
    # every frame reads its own descriptor when present (the usual case), else the nearest earlier present one
    index = torch.arange(num_frames, device=frame_ids.device)
    source = torch.where(present, index, torch.full_like(index, -1)).cummax(dim=0).values
    source = torch.where(source < 0, present.long().argmax(), source)
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
    # too many cuts: only the max_segments - 1 lowest similarities (chosen on the device, whichever applies)
    lowest = torch.argsort(similarity, stable=True)[: max_segments - 1]
    capped = torch.zeros_like(cuts).index_fill_(0, lowest, True)
    cuts = torch.where(cuts.sum() > max_segments - 1, capped, cuts)
    segments = torch.zeros(similarity.shape[0] + 1, dtype=torch.long, device=similarity.device)
    segments[1:] = cuts.long().cumsum(0)
    return segments


@dataclass(frozen=True)
class _Block:
    """One segment's attention block: its rows, the keys they may see, how many of those keys are text."""

    rows: torch.Tensor
    keys: torch.Tensor
    num_text: int
    interleaved: bool


@dataclass(frozen=True)
class SegmentPlan:
    """Where each sample's segments and text sit, as index tensors and host counts: built once per prefill
    (`plan_segments`, one host sync), used by every layer < K without asking the device again.

    Attributes:
        text_rows: per sample, [L - N] positions of the non-visual rows (text and padding).
        blocks: per sample, one `_Block` per segment, in order.
        num_segments: per sample, the number of segments.
    """

    text_rows: list[torch.Tensor]
    blocks: list[list[_Block]]
    num_segments: list[int]


def plan_segments(segment_map: torch.Tensor, key_valid: torch.Tensor | None, max_segments: int) -> SegmentPlan:
    """The `SegmentPlan` of a [b, L] segment map (segment id of each visual token, -1 elsewhere).

    Segment ids are below `max_segments` and each segment's tokens are contiguous among the visual tokens.
    """
    b, length = segment_map.shape
    device = segment_map.device
    positions = torch.arange(length, device=device).expand(b, -1)
    valid = key_valid.bool() if key_valid is not None else torch.ones(b, length, dtype=torch.bool, device=device)
    is_text = segment_map < 0
    text_valid = is_text & valid
    text_upto = text_valid.long().cumsum(1)  # valid text tokens at positions <= p
    seg = segment_map.clamp(min=0)
    sizes = torch.zeros(b, max_segments, dtype=torch.long, device=device).scatter_add_(1, seg, (~is_text).long())
    big = torch.full_like(sizes, length)
    first = big.scatter_reduce(1, seg, torch.where(is_text, length, positions), reduce="amin")
    last = torch.zeros_like(sizes).scatter_reduce(1, seg, torch.where(is_text, -1, positions), reduce="amax")
    before = text_upto.gather(1, first.clamp(max=length - 1)) - text_valid.long().gather(1, first.clamp(max=length - 1))
    inside = text_upto.gather(1, last.clamp(min=0)) - text_upto.gather(1, first.clamp(max=length - 1))
    summary = torch.stack([sizes, before, inside], dim=-1).tolist()  # the one host sync of SegM
    # segment s occupies order[offset_s : offset_s + size_s] of the positions sorted by segment (text last)
    by_segment = torch.argsort(torch.where(is_text, max_segments, segment_map), dim=1, stable=True)
    text_first = true_first(text_valid, dim=1)
    text_rows = true_first(is_text, dim=1)
    plans, counts, rows_of_text = [], [], []
    for i in range(b):
        blocks, offset = [], 0
        for size, num_before, num_inside in summary[i]:
            if size == 0:
                continue
            rows = by_segment[i, offset : offset + size]
            offset += size
            if num_inside:
                # text inside the segment's span: its rows see the text up to its end and the segment, masked
                keys = torch.cat([text_first[i, : num_before + num_inside], rows]).sort().values
                blocks.append(_Block(rows=rows, keys=keys, num_text=num_before + num_inside, interleaved=True))
            else:
                keys = torch.cat([text_first[i, :num_before], rows])
                blocks.append(_Block(rows=rows, keys=keys, num_text=num_before, interleaved=False))
        plans.append(blocks)
        counts.append(len(blocks))
        rows_of_text.append(text_rows[i, : length - offset])
    return SegmentPlan(text_rows=rows_of_text, blocks=plans, num_segments=counts)


def segment_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segment_map: torch.Tensor,
    key_valid: torch.Tensor | None,
    scaling: float,
    within: str = "causal",
    plan: SegmentPlan | None = None,
) -> torch.Tensor:
    """Attention under the SegM mask, block by block.

    Args:
        query: [b, H, L, d]; key, value: [b, H_kv, L, d] (grouped-query attention allowed).
        segment_map: [b, L] segment id of each visual token, -1 for every other token.
        key_valid: [b, L] bool, False for padding, or None.
        scaling: softmax temperature.
        within: "causal" or "bidirectional" attention among a segment's visual tokens.
        plan: the map's `SegmentPlan` (built here when None; a prefill builds it once for all layers < K).

    Returns:
        [b, L, H, d], the layout transformers' attention functions return.
    """
    b, num_heads, seq_len, head_dim = query.shape
    if plan is None:
        plan = plan_segments(segment_map, key_valid, max(1, int(segment_map.max()) + 1))
    group = num_heads // key.shape[1]
    out = query.new_zeros(b, seq_len, num_heads, head_dim)
    positions = torch.arange(seq_len, device=query.device)
    for i in range(b):
        k_i = key[i].repeat_interleave(group, dim=0) if group > 1 else key[i]
        v_i = value[i].repeat_interleave(group, dim=0) if group > 1 else value[i]
        valid = key_valid[i].bool() if key_valid is not None else torch.ones_like(positions, dtype=torch.bool)
        seg = segment_map[i]
        # Text rows: plain causal attention over every real key (few rows, so a mask is cheap).
        _attend_masked(out[i], query[i], k_i, v_i, plan.text_rows[i], positions, valid, False, seg, within, scaling)
        for block in plan.blocks[i]:
            if block.interleaved:
                _attend_masked(out[i], query[i], k_i, v_i, block.rows, block.keys, valid, True, seg, within, scaling)
                continue
            # The usual layout: the text before the video, then the segment. Stacking [text; segment] as
            # queries and keys turns the SegM mask into a plain causal (or full) one: no mask tensor,
            # fast kernels. The text rows computed on the way are discarded.
            # 4-D inputs: torch's CPU kernels take a much slower path for 3-D ones.
            result = F.scaled_dot_product_attention(
                query[i][None, :, block.keys],
                k_i[None, :, block.keys],
                v_i[None, :, block.keys],
                is_causal=within == "causal",
                scale=scaling,
            )[0]
            out[i, block.rows] = result[:, block.num_text :].transpose(0, 1).to(out.dtype)
    return out


def _attend_masked(
    out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rows: torch.Tensor,
    keys: torch.Tensor,
    valid: torch.Tensor,
    one_segment: bool,
    seg: torch.Tensor,
    within: str,
    scaling: float,
) -> None:
    """Rows attend to `keys` causally (plus, when the rows are one segment's and `within` is bidirectional, to
    the whole segment), via a boolean mask."""
    if rows.numel() == 0:
        return
    allowed = keys[None, :] <= rows[:, None]
    if one_segment and within == "bidirectional":
        allowed = allowed | (seg[keys][None, :] == seg[rows][:, None])
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
