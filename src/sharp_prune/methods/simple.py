"""Content-blind baselines: `none`, `random`, `uniform`."""

from __future__ import annotations

import torch

from .base import Selection, SelectionInput, Selector, register_method


@register_method
class KeepAll(Selector):
    """`none`: the engine runs (hooks, scoring off) but every visual token continues."""

    name = "none"

    def select(self, inputs: SelectionInput) -> Selection:
        b, n = inputs.layout.positions.shape
        return Selection(keep=torch.arange(n, device=inputs.layout.positions.device).expand(b, n).clone())


@register_method
class RandomSelector(Selector):
    """`random`: B tokens drawn uniformly without replacement, seeded per sample by `config.seed`.

    Every sample uses a generator seeded the same way, so a batch gives the plans of its samples
    run one at a time.
    """

    name = "random"

    def select(self, inputs: SelectionInput) -> Selection:
        b, n = inputs.layout.positions.shape
        rows = []
        for _ in range(b):
            generator = torch.Generator().manual_seed(self.config.seed)
            rows.append(torch.randperm(n, generator=generator)[: inputs.budget].sort().values)
        return Selection(keep=torch.stack(rows).to(inputs.layout.positions.device))


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


@register_method
class UniformSelector(Selector):
    """`uniform`: an even spatial-temporal stride, blind to content."""

    name = "uniform"

    def select(self, inputs: SelectionInput) -> Selection:
        rows = [uniform_indices(frame_ids, inputs.budget) for frame_ids in inputs.layout.frame_ids]
        return Selection(keep=torch.stack(rows))
