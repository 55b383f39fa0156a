"""`fastv` (Chen et al., 2024): keep the B visual tokens the last token attends to most at layer K-1."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import PruneConfig, register_method
from .base import Selection, SelectionInput, Selector, top_k_sorted


class FastVSelector(Selector):
    def select(self, inputs: SelectionInput) -> Selection:
        return Selection(keep=top_k_sorted(inputs.scores, inputs.budget))


@register_method
@dataclass(frozen=True)
class FastVConfig(PruneConfig):
    """`fastv`: scores are the post-RoPE softmax attention of the last non-padding token, averaged over heads."""

    method_name = "fastv"
    selector_class = FastVSelector

    method: str = "fastv"

    @property
    def query(self) -> str:
        return "last"
