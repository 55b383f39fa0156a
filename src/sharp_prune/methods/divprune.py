"""`divprune` (Alvar et al., CVPR 2025): max-min diversity of the visual tokens' hidden states."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import PruneConfig, register_method
from .base import Selection, SelectionInput, Selector
from .diversity import farthest_point_sampling, fps_flops


class DivPruneSelector(Selector):
    """Greedy max-min (farthest-point) selection on the hidden states entering layer K; no attention."""

    def select(self, inputs: SelectionInput) -> Selection:
        rows = []
        for hidden in inputs.hidden:
            unit = F.normalize(hidden.float(), dim=-1)
            nothing = torch.zeros(unit.shape[0], dtype=torch.bool, device=unit.device)
            picks = farthest_point_sampling(
                unit, inputs.budget, kept=nothing, candidates=~nothing, num_candidates=unit.shape[0], num_kept=0
            )
            rows.append(picks.sort().values)
        return Selection(keep=torch.stack(rows))


@register_method
@dataclass(frozen=True)
class DivPruneConfig(PruneConfig):
    """`divprune`: diversity only, no attention scores."""

    method_name = "divprune"
    selector_class = DivPruneSelector

    method: str = "divprune"

    @property
    def needs_hidden(self) -> bool:
        return True

    def selection_flops(self, num_visual: int, budget: int, hidden_size: int, num_segments: int) -> int:
        # farthest-point sampling: the first pick against the mean, then blocks of candidates against every token
        return fps_flops(num_visual, budget - 1, hidden_size)
