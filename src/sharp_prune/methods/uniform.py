"""`uniform`: an even spatial-temporal stride, blind to content."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import PruneConfig, register_method
from .base import Selection, SelectionInput, Selector


def uniform_indices(frame_ids: torch.Tensor, budget: int) -> torch.Tensor:
    """Even stride across frames and within each frame.

    Frames get quotas proportional to their size (largest remainder, ties to earlier frames); when the
    budget is smaller than the number of frames, evenly spaced frames get one token each. Within a
    frame, tokens are taken at the centres of `quota` equal parts of its raster order.

    Args:
        frame_ids: [N] non-decreasing frame index of each visual token.
        budget: B, 1 <= B <= N.

    Returns:
        [B] sorted local indices.
    """
    _, counts = torch.unique_consecutive(frame_ids, return_counts=True)
    counts_list = counts.tolist()
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
        rows = [uniform_indices(frame_ids, inputs.budget) for frame_ids in inputs.layout.frame_ids]
        return Selection(keep=torch.stack(rows))


@register_method
@dataclass(frozen=True)
class UniformConfig(PruneConfig):
    """`uniform`: a content-blind baseline."""

    method_name = "uniform"
    selector_class = UniformSelector

    method: str = "uniform"
