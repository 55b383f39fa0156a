"""`uniform`: an even spatial-temporal stride, blind to content."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import PruneConfig, register_method
from .base import Selection, SelectionInput, Selector


def frame_sizes(frame_ids: torch.Tensor) -> list[list[int]]:
    """Per sample, the token count of each frame present, in order: [b, N] frame ids, read in one host sync."""
    sizes = []
    for row in frame_ids.tolist():
        counts: list[int] = []
        for i, frame in enumerate(row):
            if i and frame == row[i - 1]:
                counts[-1] += 1
            else:
                counts.append(1)
        sizes.append(counts)
    return sizes


def uniform_indices(frame_ids: torch.Tensor, budget: int, sizes: list[int] | None = None) -> torch.Tensor:
    """Even stride across frames and within each frame.

    Frames get quotas proportional to their size (largest remainder, ties to earlier frames); when the
    budget is smaller than the number of frames, evenly spaced frames get one token each. Within a
    frame, tokens are taken at the centres of `quota` equal parts of its raster order.

    Args:
        frame_ids: [N] non-decreasing frame index of each visual token.
        budget: B, 1 <= B <= N.
        sizes: the frames' token counts when the caller has read them (`frame_sizes`), else read here.

    Returns:
        [B] sorted local indices.
    """
    counts_list = sizes if sizes is not None else frame_sizes(frame_ids[None])[0]
    num_frames, total = len(counts_list), sum(counts_list)
    if budget < num_frames:
        chosen = [int((i + 0.5) * num_frames / budget) for i in range(budget)]
        quotas = [0] * num_frames
        for f in chosen:
            quotas[f] = 1
    else:
        exact = [budget * c / total for c in counts_list]
        quotas = [int(e) for e in exact]
        order = sorted(range(num_frames), key=lambda f: (-(exact[f] - quotas[f]), f))
        for f in order[: budget - sum(quotas)]:
            quotas[f] += 1
    starts = [0]
    for c in counts_list[:-1]:
        starts.append(starts[-1] + c)
    picked = [
        start + int((k + 0.5) * count / quota)
        for start, count, quota in zip(starts, counts_list, quotas, strict=True)
        for k in range(quota)
    ]
    return torch.tensor(picked, dtype=torch.long, device=frame_ids.device)


class UniformSelector(Selector):
    def select(self, inputs: SelectionInput) -> Selection:
        frame_ids = inputs.layout.frame_ids
        rows = [
            uniform_indices(ids, inputs.budget, sizes)
            for ids, sizes in zip(frame_ids, frame_sizes(frame_ids), strict=True)
        ]
        return Selection(keep=torch.stack(rows))


@register_method
@dataclass(frozen=True)
class UniformConfig(PruneConfig):
    """`uniform`: a content-blind baseline."""

    method_name = "uniform"
    selector_class = UniformSelector

    method: str = "uniform"
