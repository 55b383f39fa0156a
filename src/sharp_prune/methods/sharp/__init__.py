"""`sharp`: ShaRP (arXiv 2512.05385, specified in docs/method.md), one component per module.

- SegM (`segm.py`): scene segments of the frames, and segment-aware attention in layers 0..K-1;
- PosC (`posc.py`): the content-free prior (a black frame in every video position) and the calibration;
- RegD (`regd.py`): dedup-greedy, merge, farthest-point replenishment, per-segment registers.

`ShaRPConfig` holds the fields of all three (each with an on/off switch), says what the engine must compute
for them, what they cost, and the named variants (`sharp-cached`, and one ablation per component).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ...config import PruneConfig, check_choice, check_range, check_type, register_method
from ...errors import ConfigError
from ..diversity import fps_flops
from . import posc, regd, segm
from .select import ShaRPSelector


@register_method
@dataclass(frozen=True)
class ShaRPConfig(PruneConfig):
    """ShaRP's fields; every constant is a default to sweep, not a truth.

    Args:
        sharp_query: "text" (every text token after the video scores) or "last" (the last token).
        segm: segment-aware causal masking in layers 0..K-1. segm_tau: cut between frames whose descriptor
            cosine is below it. segm_max_segments: cap on segments. segm_within: "causal" or "bidirectional"
            attention inside a segment.
        posc: positional bias calibration against a content-free (black-frame) prior. posc_lambda, posc_mode
            ("subtract": s - lambda * b, "divide": s / (b + eps)), posc_prior ("per_input", or "cached": reuse
            the prior of an identical token layout), posc_blank_token_id (generic adapter: the token whose
            embedding stands for a blank frame; default the pad token).
        regd: register token deduplication. regd_delta: cosine above which a token duplicates a kept one.
            regd_rho: share of the selection taken by farthest-point sampling. regd_registers: registers
            (default: one per segment, at most B // 8). regd_merge: kept tokens absorb the mean of their
            duplicates.
    """

    method_name = "sharp"
    selector_class = ShaRPSelector
    variants = {
        "sharp-cached": {"posc_prior": "cached"},
        "sharp-segm": {"segm": False},
        "sharp-posc": {"posc": False},
        "sharp-regd": {"regd": False},
    }
    ablations = ("sharp-segm", "sharp-posc", "sharp-regd")

    method: str = "sharp"
    sharp_query: str = "text"
    segm: bool = True
    segm_tau: float = 0.9
    segm_max_segments: int = 8
    segm_within: str = "causal"
    posc: bool = True
    posc_lambda: float = 1.0
    posc_mode: str = "subtract"
    posc_prior: str = "per_input"
    posc_blank_token_id: int | None = None
    regd: bool = True
    regd_delta: float = 0.9
    regd_rho: float = 0.2
    regd_registers: int | None = None
    regd_merge: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("segm", "posc", "regd", "regd_merge"):
            check_type(name, getattr(self, name), bool, "a bool")
        check_choice("sharp_query", self.sharp_query, ("text", "last"))
        check_choice("segm_within", self.segm_within, ("causal", "bidirectional"))
        check_choice("posc_mode", self.posc_mode, posc.MODES)
        check_choice("posc_prior", self.posc_prior, ("per_input", "cached"))
        for name, low, high in (("segm_tau", -1.0, 1.0), ("regd_delta", -1.0, 1.0), ("regd_rho", 0.0, 1.0)):
            check_range(name, getattr(self, name), low, high)
        check_type("posc_lambda", self.posc_lambda, (int, float), "a number")
        if not math.isfinite(self.posc_lambda) or self.posc_lambda < 0:
            raise ConfigError(f"PruneConfig.posc_lambda={self.posc_lambda!r} must be a finite number >= 0.")
        check_type("segm_max_segments", self.segm_max_segments, int, "an int")
        if self.segm_max_segments < 1:
            raise ConfigError(f"PruneConfig.segm_max_segments={self.segm_max_segments} must be >= 1.")
        for name in ("posc_blank_token_id", "regd_registers"):
            value = getattr(self, name)
            if value is not None:
                check_type(name, value, int, "an int or None")
                if value < 0:
                    raise ConfigError(f"PruneConfig.{name}={value} must be >= 0 (or None for the default).")

    # ------------------------------------------------------------------ what the engine computes for it
    @property
    def query(self) -> str:
        return self.sharp_query

    @property
    def needs_hidden(self) -> bool:
        return self.regd

    @property
    def needs_segments(self) -> bool:
        return self.segm or self.regd

    @property
    def segment_mask(self) -> bool:
        return self.segm

    @property
    def needs_prior(self) -> bool:
        return self.posc

    def check_model(self, model: Any) -> None:
        if self.posc_blank_token_id is not None:
            vocab = model.get_input_embeddings().num_embeddings
            if self.posc_blank_token_id >= vocab:
                raise ConfigError(
                    f"PruneConfig.posc_blank_token_id={self.posc_blank_token_id} is outside this model's vocabulary "
                    f"(0..{vocab - 1}); pass the id of a pad or space token, e.g. tokenizer.pad_token_id."
                )

    # ------------------------------------------------------------------ the steps it owns
    def segment(
        self, visual_embeds: torch.Tensor, frame_ids: torch.Tensor, num_frames: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SegM's scene segments of one sample: ([N] segment id per visual token, [F-1] frame-to-frame cosine)."""
        descriptors = segm.frame_descriptors(visual_embeds, frame_ids, num_frames)
        frame_segments = segm.segment_frames(descriptors, self.segm_tau, self.segm_max_segments)
        return frame_segments[frame_ids], (descriptors[:-1] * descriptors[1:]).sum(dim=-1)

    def plan_segments(self, segment_map: torch.Tensor, key_valid: torch.Tensor | None) -> segm.SegmentPlan:
        """Where the segments sit, on the host (one device sync per prefill; see `segm.plan_segments`)."""
        return segm.plan_segments(segment_map, key_valid, self.segm_max_segments)

    def attend_before_k(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        segment_map: torch.Tensor,
        key_valid: torch.Tensor | None,
        scaling: float,
        plan: segm.SegmentPlan | None = None,
    ) -> torch.Tensor:
        """SegM's attention of one layer < K, block by block ([b, L, H, d]; no L x L mask)."""
        return segm.segment_attention(query, key, value, segment_map, key_valid, scaling, self.segm_within, plan)

    def dense_mask_before_k(self, segment_map: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        """SegM's mask as [b, 1, L, L] bool, for implementations that materialise L x L weights anyway (eager)."""
        return segm.segment_mask(segment_map, key_valid, self.segm_within)

    def blank_embeddings(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        blank_frame: torch.Tensor,
        frame_ids: torch.Tensor,
        kept: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """PosC's content-free copy of the decoder's input (see `posc.blank_embeddings`)."""
        return posc.blank_embeddings(embeds, positions, blank_frame, frame_ids, kept)

    def prior_cache_key(self, **layout: Any) -> tuple | None:
        """The key of a cached prior (`posc_prior="cached"`), or None: compute it on every prefill."""
        return posc.layout_key(**layout) if self.posc_prior == "cached" else None

    def calibrate(self, scores: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """PosC: scores minus (or divided by) the content-free prior."""
        return posc.calibrate(scores, prior, self.posc_mode, self.posc_lambda)

    # ------------------------------------------------------------------ what it costs
    @property
    def expected_segments(self) -> int:
        return self.segm_max_segments if self.needs_segments else 1

    @property
    def blank_pass_each_prefill(self) -> bool:
        return self.posc and self.posc_prior == "per_input"

    def selection_flops(self, num_visual: int, budget: int, hidden_size: int, num_segments: int) -> int:
        if not self.regd or budget >= num_visual:
            return 0
        registers = self.regd_registers if self.regd_registers is not None else num_segments
        selected = budget - min(registers, budget // 8)
        replenish = round(self.regd_rho * selected)
        return regd.dedup_flops(num_visual, selected - replenish, hidden_size) + fps_flops(
            num_visual, replenish, hidden_size
        )

    def attention_pairs_before_k(self, valid: Any, visual: Any, segments: Any, ideal: bool) -> int | None:
        if not self.segm:
            return None
        return segm.attention_pairs(valid, visual, segments, self.segm_within, ideal)


__all__ = ["ShaRPConfig", "ShaRPSelector"]
