"""The selector interface: what a method sees at layer K and what it answers.

Step "select" of the data path: a selector turns scores (already calibrated, when the method calibrates)
and hidden states of the N visual tokens into the local indices of the B slots that continue past layer K.
What the engine computes before `select` is said by the method's config class (`query`, `rope`,
`needs_hidden`, `needs_segments`, `segment_mask`, `needs_prior`; see `sharp_prune.config.PruneConfig`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..steps.locate import VisualLayout

if TYPE_CHECKING:
    from ..config import PruneConfig


@dataclass(frozen=True)
class SelectionInput:
    """What a selector sees for one batch.

    Attributes:
        layout: where the visual tokens are and which frame each belongs to.
        budget: B, visual slots per sample that continue past layer K.
        scores: [b, N] fp32 scores of the visual tokens at layer K-1, calibrated when the method asks for a
            prior (None when the method scores nothing).
        hidden: [b, N, D] hidden states of the visual tokens entering layer K (None unless asked for).
        config: the method's config (its hyper-parameters, the seed).
        segments: [b, N] segment id of each visual token, when the method asks for them.
        num_segments: per sample, the number of segments (known on the host, so that selectors need not ask
            the device), when `segments` is given.
    """

    layout: VisualLayout
    budget: int
    scores: torch.Tensor | None
    hidden: torch.Tensor | None
    config: PruneConfig
    segments: torch.Tensor | None = None
    num_segments: list[int] | None = None


@dataclass(frozen=True)
class Selection:
    """A selector's answer.

    Attributes:
        keep: [b, B] local indices (into the N visual tokens) of the slots that continue.
        hidden: [b, B, D] hidden states to place in those slots (merged tokens, registers), aligned with
            `keep`; None keeps the tokens' own states.
        is_register: [b, B] bool, True where a slot is a register rather than a kept token.
    """

    keep: torch.Tensor
    hidden: torch.Tensor | None = None
    is_register: torch.Tensor | None = None


class Selector(ABC):
    """Base class of a method's selection step; its config class names it in `selector_class`.

    Legacy form (still accepted by `register_method`): a subclass with a `name` and the class attributes
    `query`, `rope`, `needs_hidden`, `needs_segments`, `segment_mask`, `needs_prior`.
    """

    name: ClassVar[str]

    def __init__(self, config: PruneConfig) -> None:
        self.config = config

    @abstractmethod
    def select(self, inputs: SelectionInput) -> Selection:
        """Choose the kept visual tokens."""


def top_k_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[b, k] indices of the k largest scores per row, in ascending index order (deterministic)."""
    return torch.topk(scores, k, dim=1, sorted=True).indices.sort(dim=1).values
