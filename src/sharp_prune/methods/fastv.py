"""Attention-based baselines: `fastv`."""

from __future__ import annotations

from .base import Selection, SelectionInput, Selector, register_method, top_k_sorted


@register_method
class FastVSelector(Selector):
    """`fastv` (Chen et al., 2024): keep the B visual tokens the last token attends to most at layer K-1.

    Scores are post-RoPE softmax attention of the last non-padding token, averaged over heads.
    """

    name = "fastv"
    query = "last"

    def select(self, inputs: SelectionInput) -> Selection:
        return Selection(keep=top_k_sorted(inputs.scores, inputs.budget), scores=inputs.scores)
