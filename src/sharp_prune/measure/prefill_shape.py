"""What a prefill looks like to the FLOP count: the text model's shape (`TextDims`) and the token layout
(`PrefillLayout`, rebuilt from a `PruneRecord` or made up for an estimate)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, UnsupportedModelError
from ..record import PruneRecord


# ---------------------------------------------------------------------------------------------- model shape
@dataclass(frozen=True)
class TextDims:
    """Shape of a decoder-only text model (Llama / Qwen2 style: GQA attention, gated MLP).

    Attributes:
        hidden_size: D.
        intermediate_size: I, the MLP width.
        num_heads: H, query heads.
        num_kv_heads: key/value heads.
        head_dim: size of one head.
        num_layers: decoder layers.
        vocab_size: V, rows of the LM head.
    """

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_layers: int
    vocab_size: int

    @classmethod
    def from_config(cls, config: Any) -> TextDims:
        """Read the text config of `config` (a model config, a VLM config or a model instance)."""
        if isinstance(config, nn.Module):
            config = config.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        if "sliding_attention" in (getattr(text, "layer_types", None) or ()):
            # The model counts every layer's attention over the whole prefix and the blank pass as K layers; a
            # sliding layer attends within its window and the blank pass stops at the scoring layer.
            raise UnsupportedModelError(
                f"the FLOPs model does not count sliding-window layers yet ({type(text).__name__} has them); its "
                "figures would be wrong, so none are given. Time the prefill instead (sharp_prune.measure.timing)."
            )
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return cls(
            hidden_size=text.hidden_size,
            intermediate_size=text.intermediate_size,
            num_heads=heads,
            num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            num_layers=text.num_hidden_layers,
            vocab_size=text.vocab_size,
        )

    @property
    def qkvo_per_token(self) -> int:
        """q, k, v and o projections of one token in one layer."""
        d, hd = self.hidden_size, self.head_dim
        return 2 * d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)

    @property
    def mlp_per_token(self) -> int:
        """gate, up and down projections of one token in one layer."""
        return 2 * 3 * self.hidden_size * self.intermediate_size

    @property
    def attention_per_pair(self) -> int:
        """QK^T and AV for one (query row, key) pair in one layer, all heads."""
        return 4 * self.num_heads * self.head_dim

    @property
    def score_per_pair(self) -> int:
        """QK^T only (the scoring rows at layer K-1)."""
        return 2 * self.num_heads * self.head_dim

    @property
    def lm_head_per_token(self) -> int:
        return 2 * self.hidden_size * self.vocab_size


# ---------------------------------------------------------------------------------------------- prefill layout
@dataclass(frozen=True)
class SampleLayout:
    """One sample of a prefill, in the coordinates of the sequence entering the decoder.

    Attributes:
        valid: [L] bool, False at padding.
        visual: [N] long, sorted positions of the prunable visual tokens.
        kept_visual: B, visual slots that continue past layer K.
        query_rows: |Q|, rows that scored the visual tokens at layer K-1 (0: no scoring). They are the
            last |Q| real tokens (the text after the video, or the last token).
        segments: [N] segment id of each visual token (ShaRP), or None.
        pre_dropped: visual tokens the pre-LLM stage removed before layer 0 (all real tokens).
    """

    valid: torch.Tensor
    visual: torch.Tensor
    kept_visual: int
    query_rows: int = 0
    segments: torch.Tensor | None = None
    pre_dropped: int = 0

    @property
    def real(self) -> int:
        return int(self.valid.sum())

    @property
    def real_kept(self) -> int:
        return self.real - self.visual.numel() + self.kept_visual

    @property
    def num_segments(self) -> int:
        return int(self.segments.max()) + 1 if self.segments is not None and self.segments.numel() else 1


@dataclass(frozen=True)
class PrefillLayout:
    """The token layout of one prefill, all that the FLOP count depends on besides the model and config.

    Attributes:
        samples: one `SampleLayout` per sample (same length and visual count in a batch).
        input_len: the prefill length before any pre-LLM stage (the unpruned model's L).
    """

    samples: tuple[SampleLayout, ...]
    input_len: int

    @property
    def batch(self) -> int:
        return len(self.samples)

    @property
    def seq_len(self) -> int:
        """L, the padded length entering the decoder."""
        return self.samples[0].valid.numel()

    @property
    def num_visual(self) -> int:
        return self.samples[0].visual.numel()

    @property
    def kept_len(self) -> int:
        """L', the padded length of layers >= K."""
        return self.seq_len - self.num_visual + self.samples[0].kept_visual

    @classmethod
    def from_record(cls, record: PruneRecord) -> PrefillLayout:
        """Rebuild the decoder-side layout of the prefill a `PruneRecord` describes."""
        batch = len(record.keep_positions)
        samples = []
        for i in range(batch):
            valid = torch.ones(record.seq_len, dtype=torch.bool)
            if record.attention_mask is not None:
                valid = record.attention_mask[i].bool().cpu()
            visual = record.visual_positions[i].cpu() if record.visual_positions else torch.empty(0, dtype=torch.long)
            pre_dropped = 0
            if record.pre_keep_positions is not None:
                # The decoder sees every position but the visual tokens the pre-stage dropped.
                survivors = record.pre_keep_positions[i].cpu()
                keep = torch.ones(record.seq_len, dtype=torch.bool)
                keep[visual] = False
                keep[survivors] = True
                index = keep.nonzero().flatten()
                pre_dropped = visual.numel() - survivors.numel()
                valid, visual = valid[index], torch.searchsorted(index, survivors)
            samples.append(
                SampleLayout(
                    valid=valid,
                    visual=visual,
                    kept_visual=record.budget[i],
                    query_rows=record.num_query_rows[i] if record.num_query_rows is not None else 0,
                    segments=record.segment_ids[i].cpu() if record.segment_ids is not None else None,
                    pre_dropped=pre_dropped,
                )
            )
        return cls(samples=tuple(samples), input_len=record.seq_len)

    @classmethod
    def synthetic(
        cls,
        seq_len: int,
        num_visual: int,
        kept_visual: int,
        prompt_len: int = 0,
        query_rows: int = 0,
        num_segments: int = 1,
        batch: int = 1,
    ) -> PrefillLayout:
        """Unpadded samples: `prompt_len` text tokens, `num_visual` video tokens in `num_segments`
        near-equal segments, then the rest of the text."""
        if not 0 <= prompt_len <= seq_len - num_visual:
            raise ConfigError(f"a video of {num_visual} tokens after {prompt_len} prompt tokens exceeds L={seq_len}.")
        visual = torch.arange(prompt_len, prompt_len + num_visual)
        segments = (torch.arange(num_visual) * max(1, num_segments)) // max(1, num_visual)
        sample = SampleLayout(
            valid=torch.ones(seq_len, dtype=torch.bool),
            visual=visual,
            kept_visual=kept_visual,
            query_rows=query_rows,
            segments=segments,
        )
        return cls(samples=(sample,) * batch, input_len=seq_len)
