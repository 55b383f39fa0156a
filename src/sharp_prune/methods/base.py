"""The selector interface: one small class per method, registered by name.

Step 4 of the data path (select): a selector turns scores and hidden states of the N visual tokens
into the sorted local indices of the B tokens that continue past layer K.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..errors import ConfigError
from ..steps.locate import VisualLayout

if TYPE_CHECKING:
    from ..config import PruneConfig


@dataclass
class SelectionInput:
    """What a selector sees for one batch.

    Attributes:
        layout: where the visual tokens are and which frame each belongs to.
        budget: B, visual slots per sample that continue past layer K.
        scores: [b, N] fp32 attention received by each visual token at layer K-1 (None when the
            selector asks for no query rows).
        hidden: [b, N, D] hidden states of the visual tokens entering layer K (None unless asked for).
        config: the full pruning config (method hyper-parameters, seed).
        prior: [b, N] content-free prior scores (PosC), when the selector asks for them.
        segments: [b, N] segment id of each visual token, when the selector asks for them.
    """

    layout: VisualLayout
    budget: int
    scores: torch.Tensor | None
    hidden: torch.Tensor | None
    config: PruneConfig
    prior: torch.Tensor | None = None
    segments: torch.Tensor | None = None


@dataclass
class Selection:
    """A selector's answer.

    Attributes:
        keep: [b, B] sorted local indices (into the N visual tokens) of the slots that continue.
        scores: [b, N] the scores the choice was made on (recorded), if any.
        hidden: [b, B, D] hidden states to place in those slots (merged tokens, registers), aligned with
            `keep`; None keeps the tokens' own states.
        is_register: [b, B] bool, True where a slot is a register rather than a kept token.
    """

    keep: torch.Tensor
    scores: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    is_register: torch.Tensor | None = None


class Selector(ABC):
    """Base class of pruning methods.

    Attributes tell the engine what to compute before `select` is called (a subclass may set them
    per instance, from its config):
        query: which query rows score the visual tokens at layer K-1: "none", "last" (the last
            non-padding token, FastV) or "text" (every text token after the last visual token).
        rope: score with post-RoPE q and k (True) or with RoPE removed from both (False, FEATHER).
        needs_hidden: fill `SelectionInput.hidden`.
        needs_segments: fill `SelectionInput.segments` (scene segmentation of the frames).
        segment_mask: apply SegM's segment-aware mask in layers 0..K-1.
        needs_prior: fill `SelectionInput.prior` (PosC's content-free pass).
    """

    name: ClassVar[str]
    query: str = "none"
    rope: bool = True
    needs_hidden: bool = False
    needs_segments: bool = False
    segment_mask: bool = False
    needs_prior: bool = False

    def __init__(self, config: PruneConfig) -> None:
        self.config = config

    @abstractmethod
    def select(self, inputs: SelectionInput) -> Selection:
        """Choose the kept visual tokens."""


_REGISTRY: dict[str, type[Selector]] = {}


def register_method(cls: type[Selector]) -> type[Selector]:
    """Class decorator: make `cls` available as `PruneConfig(method=cls.name)`."""
    if cls.query not in ("none", "last", "text"):
        raise ConfigError(f"{cls.__name__}.query must be 'none', 'last' or 'text', got {cls.query!r}.")
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> tuple[str, ...]:
    """Names accepted by `PruneConfig.method`."""
    return tuple(_REGISTRY)


def build_selector(config: PruneConfig) -> Selector:
    return _REGISTRY[config.method](config)


def top_k_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[b, k] indices of the k largest scores per row, in ascending index order (deterministic)."""
    return torch.topk(scores, k, dim=1, sorted=True).indices.sort(dim=1).values
