"""`none`: the engine runs (hooks, records) but every visual token continues; the unpruned reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import PruneConfig, register_method
from .base import Selection, SelectionInput, Selector


class KeepAll(Selector):
    def select(self, inputs: SelectionInput) -> Selection:
        b, n = inputs.layout.positions.shape
        return Selection(keep=torch.arange(n, device=inputs.layout.positions.device).expand(b, n).clone())


@register_method
@dataclass(frozen=True)
class NoneConfig(PruneConfig):
    """`none`: keep every visual token (retention is ignored: the budget is N)."""

    method_name = "none"
    selector_class = KeepAll

    method: str = "none"

    def budget(self, num_visual: int) -> int:
        return max(0, num_visual)
