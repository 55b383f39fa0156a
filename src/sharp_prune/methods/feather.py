"""`feather` (Endo et al., ICCV 2025): attention without RoPE, ensembled with a uniform stride."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import PruneConfig, check_range, register_method
from ..steps.indices import true_first
from .base import Selection, SelectionInput, Selector
from .uniform import frame_sizes, uniform_indices


class FeatherSelector(Selector):
    """Keep a uniform stride (share `feather_uniform` of the budget) plus the top-scoring rest."""

    def select(self, inputs: SelectionInput) -> Selection:
        uniform_count = min(inputs.budget, round(self.config.feather_uniform * inputs.budget))
        rows = []
        frame_ids = inputs.layout.frame_ids
        sizes = frame_sizes(frame_ids) if uniform_count else [None] * len(frame_ids)
        for ids, scores, frames in zip(frame_ids, inputs.scores, sizes, strict=True):
            chosen = torch.zeros_like(scores, dtype=torch.bool)
            if uniform_count:  # uniform_count distinct tokens
                chosen[uniform_indices(ids, uniform_count, frames)] = True
            rest = inputs.budget - uniform_count
            if rest:
                chosen[torch.topk(scores.masked_fill(chosen, -torch.inf), rest).indices] = True
            # the B chosen in index order, without nonzero() (their number is known)
            rows.append(true_first(chosen)[: inputs.budget])
        return Selection(keep=torch.stack(rows))


@register_method
@dataclass(frozen=True)
class FeatherConfig(PruneConfig):
    """`feather`: the last token's attention at layer K-1 with RoPE removed from q and k (which removes FastV's
    bias towards the tokens nearest the question), plus a uniform stride. Single-stage, matched budget.

    Args:
        feather_uniform: share of the budget taken by the uniform stride, in [0, 1].
    """

    method_name = "feather"
    selector_class = FeatherSelector

    method: str = "feather"
    feather_uniform: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("feather_uniform", self.feather_uniform, 0.0, 1.0)

    @property
    def query(self) -> str:
        return "last"

    @property
    def rope(self) -> bool:
        return False
