"""Pre-LLM stage: temporal duplicate merging between consecutive frames (DyCoke-style).

A video token is dropped before the LLM when its input embedding has cosine above a threshold with
the token at the same spatial index of the previous frame: that earlier token already carries the
content. It composes with every in-LLM method (and with none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
