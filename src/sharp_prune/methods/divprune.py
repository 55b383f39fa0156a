"""`divprune` (Alvar et al., CVPR 2025): max-min diversity of the visual tokens' hidden states."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Selection, SelectionInput, Selector, register_method
from .sharp.regd import farthest_point_sampling


@register_method
class DivPruneSelector(Selector):
    """Greedy max-min (farthest-point) selection on the hidden states entering layer K; no attention."""

    name = "divprune"
    needs_hidden = True

    def select(self, inputs: SelectionInput) -> Selection:
        rows = []
        for hidden in inputs.hidden:
            unit = F.normalize(hidden.float(), dim=-1)
            nothing = torch.zeros(unit.shape[0], dtype=torch.bool, device=unit.device)
            picks = farthest_point_sampling(unit, inputs.budget, kept=nothing, candidates=~nothing)
            rows.append(picks.sort().values)
        return Selection(keep=torch.stack(rows))
