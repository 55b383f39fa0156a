"""Step "pre-stage": temporal duplicate merging between consecutive frames (DyCoke-style), before layer 0.

A video token is dropped before the LLM when its input embedding has cosine above a threshold with
the token at the same spatial index of the previous frame: that earlier token already carries the
content. It composes with every in-LLM method (and with none).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError
from .keep_plan import KeepPlan, build_keep_plan, decode_columns, gather_along, slice_position_ids
from .locate import Located, VisualLayout, located_for


def temporal_merge_keep(visual_embeds: torch.Tensor, frame_ids: torch.Tensor, threshold: float) -> torch.Tensor:
    """Which visual tokens survive temporal merging.

    Args:
        visual_embeds: [N, D] input embeddings of one sample's visual tokens (frame-major, raster order).
        frame_ids: [N] non-decreasing frame index of each token.
        threshold: cosine above which a token duplicates the same spatial token of the previous frame.

    Returns:
        [N] bool keep mask. Frames whose token count differs from the previous frame's are kept whole
        (there is no "same spatial token" to compare with).
    """
    keep = torch.ones(frame_ids.shape[0], dtype=torch.bool, device=frame_ids.device)
    _, counts = torch.unique_consecutive(frame_ids, return_counts=True)
    unit = F.normalize(visual_embeds.float(), dim=-1)
    start = 0
    previous = None
    for count in counts.tolist():
        current = slice(start, start + count)
        if previous is not None and previous.stop - previous.start == count:
            similarity = (unit[current] * unit[previous]).sum(dim=-1)
            keep[current] = similarity <= threshold
        previous, start = current, start + count
    return keep


@dataclass(frozen=True)
class PreStage:
    """What the pre-LLM stage left: a shorter sequence, and the video tokens in its coordinates.

    Attributes:
        plan: the positions that entered layer 0, in original coordinates (`KeepPlan`).
        original: the `Located` of the full sequence.
        located: the `Located` of the shorter sequence (budget and query rows recomputed for it).
        embeds, position_ids, attention_mask: the decoder's inputs for the shorter sequence.
    """

    plan: KeepPlan
    original: Located
    located: Located
    embeds: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None


def temporal_merge(
    located: Located,
    embeds: torch.Tensor,
    position_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    threshold: float,
    budget_of: Callable[[int], int],
    query: str,
) -> PreStage | None:
    """Drop temporal duplicates before layer 0 (None: nothing dropped); later steps work on the shorter sequence."""
    layout = located.layout
    visual = gather_along(embeds, layout.positions, dim=1)
    keep = torch.stack(
        [temporal_merge_keep(visual[row], layout.frame_ids[row], threshold) for row in range(layout.batch_size)]
    )
    counts = keep.sum(dim=1).tolist()
    if len(set(counts)) != 1:
        raise InputError(
            f"pre='temporal_merge' kept {counts} video tokens in the samples of this batch; samples must "
            "keep the same number to be batched. Run them one at a time, or drop the pre-LLM stage."
        )
    if counts[0] == layout.num_visual:
        return None
    if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim != 2:
        raise InputError("pre='temporal_merge' needs a 2-D attention_mask (or none), not a prepared 4-D mask.")
    local = keep.nonzero()[:, 1].view(layout.batch_size, -1)
    plan = build_keep_plan(layout, local, located.seq_len)
    index = plan.index
    if position_ids is None:
        position_ids = torch.arange(located.seq_len, device=embeds.device)[None]
    # Re-express the prefill in the shorter sequence's coordinates.
    short = VisualLayout(
        positions=torch.searchsorted(index, plan.kept_visual),
        frame_ids=layout.frame_ids.gather(1, local),
        grid=layout.grid,
        span_end=None if layout.span_end is None else torch.searchsorted(index, layout.span_end[:, None])[:, 0],
    )
    key_valid = gather_along(located.key_valid, index, dim=1) if located.key_valid is not None else None
    return PreStage(
        plan=plan,
        original=located,
        located=located_for(short, key_valid, index.shape[1], budget_of, query),
        embeds=gather_along(embeds, index, dim=1),
        position_ids=slice_position_ids(position_ids, index),
        attention_mask=gather_along(attention_mask, index, dim=1) if attention_mask is not None else None,
    )


def decode_inputs(
    plan: KeepPlan, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, cached: int, new: int
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """A decoding step after the pre-LLM stage (every layer's cache lacks the merged tokens): the 2-D padding mask
    cut to the cached columns, and RoPE positions that still count the merged tokens.

    Args:
        plan: the stage's plan.
        attention_mask: the step's mask (None, a 2-D padding mask, or a prepared mask left as it is).
        position_ids: the step's positions (kept when given).
        cached: tokens the cache holds; new: tokens this step adds.
    """
    mask = attention_mask
    if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2:
        mask = gather_along(attention_mask, decode_columns(plan, attention_mask.shape[1]), dim=1)
    if position_ids is None:
        start = cached + plan.seq_len - plan.kept_len
        position_ids = torch.arange(start, start + new, device=plan.index.device)[None]
    return mask, position_ids
