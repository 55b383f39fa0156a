"""`PruneRecord`: what one prefill kept, in original sequence coordinates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class PruneRecord:
    """Outcome of the latest prefill of a pruned model (`handle.last`).

    Attributes:
        method: the selector that ran.
        layer: K, the first layer that saw only the kept tokens.
        seq_len: L, the prefill length (padded).
        kept_len: L', the sequence length of layers >= K.
        num_visual: visual tokens found, per sample.
        budget: visual slots kept, per sample.
        keep_positions: per sample, sorted original positions of the visual tokens that continued.
        visual_positions: per sample, sorted original positions of all visual tokens.
        frame_ids: per sample, the frame index of each visual token (aligned with `visual_positions`).
        scores: per sample, the score each visual token was selected on (ShaRP: calibrated), when
            `record_scores=True` and the method scores tokens; else None.
        raw_scores: per sample, the attention scores before calibration (`record_scores=True`).
        prior: per sample, PosC's content-free prior (`record_scores=True`, ShaRP with PosC).
        segment_ids: per sample, the segment of each visual token (ShaRP), else None.
        frame_similarity: per sample, [F - 1] cosine between the SegM descriptors of frames f and f + 1
            (`record_scores=True`, ShaRP with SegM); SegM cuts where it is below `segm_tau`.
        is_register: per sample, aligned with `keep_positions`: True where the slot is a register
            (a merged summary placed at that position) rather than the token itself; None if no method
            produced registers.
        pre_kept: per sample, video tokens left by the pre-LLM stage (None without one); the in-LLM
            budget applies to these.
        pre_keep_positions: per sample, original positions of the tokens the pre-LLM stage kept.
        num_query_rows: per sample, the query rows that scored the visual tokens at layer K-1 (|Q|: the
            non-padding text tokens after the last visual token, or 1 for the last token); None when the
            method scores nothing.
        grid: (h, w) when each frame's visual tokens are an h x w raster in row-major order (VLM
            adapters), else None (generic adapter).
        attention_mask: per sample, [L] bool in original coordinates, False at padding; None when the
            call had no 2-D attention mask (no padding).
        output_positions: per sample, [L'] the original position of each row of the pruned forward's outputs
            (logits, last hidden states, the attentions and hidden states of layers >= K): every text token,
            the kept video tokens, and the prompt's last token, which is never pruned. None when nothing was
            pruned (the outputs have every position).
        config: the `PruneConfig` as a dict.

    Tensors stay on the model's device (moving them to the host would make every prefill wait for the device);
    `to_dict()` and `.tolist()` read them.

    A pruned forward returns outputs for the kept positions only: `logits[:, i]` belongs to original position
    `output_positions[sample][i]`; the last row is always the prompt's last token.
    """

    method: str
    layer: int
    seq_len: int
    kept_len: int
    num_visual: list[int]
    budget: list[int]
    keep_positions: list[torch.Tensor]
    visual_positions: list[torch.Tensor] = field(default_factory=list)
    frame_ids: list[torch.Tensor] = field(default_factory=list)
    scores: list[torch.Tensor] | None = None
    raw_scores: list[torch.Tensor] | None = None
    prior: list[torch.Tensor] | None = None
    segment_ids: list[torch.Tensor] | None = None
    frame_similarity: list[torch.Tensor] | None = None
    is_register: list[torch.Tensor] | None = None
    pre_kept: list[int] | None = None
    pre_keep_positions: list[torch.Tensor] | None = None
    num_query_rows: list[int] | None = None
    attention_mask: list[torch.Tensor] | None = None
    grid: tuple[int, int] | None = None
    output_positions: list[torch.Tensor] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def retained_fraction(self) -> list[float]:
        """Kept / found visual tokens per sample (1.0 where a sample had none)."""
        return [b / n if n else 1.0 for b, n in zip(self.budget, self.num_visual, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (positions as lists of ints)."""
        return {
            "method": self.method,
            "layer": self.layer,
            "seq_len": self.seq_len,
            "kept_len": self.kept_len,
            "num_visual": self.num_visual,
            "budget": self.budget,
            "pre_kept": self.pre_kept,
            "num_query_rows": self.num_query_rows,
            "grid": list(self.grid) if self.grid is not None else None,
            "keep_positions": [p.tolist() for p in self.keep_positions],
            "output_positions": None if self.output_positions is None else [p.tolist() for p in self.output_positions],
            "register_positions": None
            if self.is_register is None
            else [p[r].tolist() for p, r in zip(self.keep_positions, self.is_register, strict=True)],
            "config": self.config,
        }
