"""`random`: B tokens drawn uniformly without replacement, seeded per sample by `seed`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import PruneConfig, register_method
from .base import Selection, SelectionInput, Selector


class RandomSelector(Selector):
    """Every sample uses a generator seeded the same way, so a batch gives the plans of its samples run one at
    a time."""

    def select(self, inputs: SelectionInput) -> Selection:
        b, n = inputs.layout.positions.shape
        rows = []
        for _ in range(b):
            generator = torch.Generator().manual_seed(self.config.seed)
            rows.append(torch.randperm(n, generator=generator)[: inputs.budget].sort().values)
        return Selection(keep=torch.stack(rows).to(inputs.layout.positions.device))


@register_method
@dataclass(frozen=True)
class RandomConfig(PruneConfig):
    """`random`: a content-blind baseline."""

    method_name = "random"
    selector_class = RandomSelector

    method: str = "random"
