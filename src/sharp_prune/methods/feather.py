"""`feather` (Endo et al., ICCV 2025): attention without RoPE, ensembled with a uniform stride."""

from __future__ import annotations

import torch

from .base import Selection, SelectionInput, Selector, register_method
from .simple import uniform_indices


@register_method
class FeatherSelector(Selector):
    """Keep a uniform stride (share `feather_uniform` of the budget) plus the top-scoring rest.

    Scores are the last token's attention at layer K-1 with RoPE removed from q and k, which removes
    FastV's bias towards the tokens nearest the question. Single-stage, matched budget.
    """

    name = "feather"
    query = "last"
    rope = False

    def select(self, inputs: SelectionInput) -> Selection:
        uniform_count = min(inputs.budget, round(self.config.feather_uniform * inputs.budget))
        rows = []
        for frame_ids, scores in zip(inputs.layout.frame_ids, inputs.scores, strict=True):
            chosen = torch.zeros_like(scores, dtype=torch.bool)
            if uniform_count:
                chosen[uniform_indices(frame_ids, uniform_count)] = True
            rest = inputs.budget - int(chosen.sum())
            if rest:
                chosen[torch.topk(scores.masked_fill(chosen, -torch.inf), rest).indices] = True
            rows.append(chosen.nonzero().flatten())
        return Selection(keep=torch.stack(rows), scores=inputs.scores)
