"""What every family's tiny random configuration shares: token ids, the text config, padding a batch.

Real classes and real code paths at toy sizes: for tests, for checking an integration without a GPU, and
for timing shapes. Random weights give no meaningful attention. Each family's own part (vision config,
video inputs) is in its entry (`sharp_prune.models.<family>`); `sharp_prune.testing` puts them together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

VIDEO_TOKEN_ID = 251
IMAGE_TOKEN_ID = 250
VISION_START_ID = 252
VISION_END_ID = 253
PAD_ID = 0
VOCAB = 256


def text_config(num_layers: int, rope: bool) -> dict:
    """A small GQA text config (64 wide, 4 heads, 2 KV heads); `rope` adds M-RoPE sections (Qwen-VL)."""
    config = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=32768,
        bos_token_id=1,
        eos_token_id=None,
        pad_token_id=PAD_ID,
    )
    if rope:
        config["rope_parameters"] = dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0)
    return config


@dataclass(frozen=True)
class TinyVideo:
    """Size of the synthetic video of each sample: frames, and tokens per frame side (Qwen-VL only:
    LLaVA-OV's grid follows from its vision config)."""

    frames: int = 4
    grid: int = 4  # tokens per frame = grid * grid (after pooling / merging)


def finish(model: nn.Module, attn_implementation: str, dtype: torch.dtype) -> nn.Module:
    """Eval mode, dtype, attention implementation, and a generation config that never stops early."""
    model = model.to(dtype).eval()
    model.set_attn_implementation(attn_implementation)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD_ID
    return model


def padded_batch(
    prefix_lens: list[int],
    suffix_lens: list[int],
    num_video_tokens: int,
    padding_side: str,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` of `prefix + video + suffix` samples, padded on one side."""
    rows = []
    for p, s in zip(prefix_lens, suffix_lens, strict=True):
        prefix = torch.randint(3, 200, (p,), generator=generator)
        suffix = torch.randint(3, 200, (s,), generator=generator)
        rows.append(torch.cat([prefix, torch.full((num_video_tokens,), VIDEO_TOKEN_ID), suffix]))
    return pad_rows(rows, padding_side)


def pad_rows(rows: list[torch.Tensor], padding_side: str) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` of token rows of different lengths, padded on one side with `PAD_ID`."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), PAD_ID)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
        input_ids[i, sl] = r
        attention_mask[i, sl] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


# Ids that belong to the text model of a composite (vision + text) configuration.
TEXT_IDS = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")


def take_text_ids(overrides: dict[str, Any], text: dict[str, Any]) -> None:
    """Move the text model's ids (vocabulary size, bos / eos / pad) from a composite config's `overrides` to `text`."""
    for name in TEXT_IDS:
        if name in overrides:
            text[name] = overrides.pop(name)


def with_text_ids(config: Any, text: dict[str, Any]) -> Any:
    """`config` with its text config's bos / eos as `text` has them (composite configs do not always pass them on)."""
    config.text_config.bos_token_id = text["bos_token_id"]
    config.text_config.eos_token_id = text["eos_token_id"]
    return config


def builder(model_class: str, make_config: Callable[[int], Any]) -> Callable[[int, str, torch.dtype, int], nn.Module]:
    """`TinyModel.build` for transformers' `model_class` on `make_config(num_layers)`: seeded random weights, then
    `finish`."""

    def build(num_layers: int, attn_implementation: str, dtype: torch.dtype, seed: int) -> nn.Module:
        import transformers

        torch.manual_seed(seed)
        return finish(getattr(transformers, model_class)(make_config(num_layers)), attn_implementation, dtype)

    return build
