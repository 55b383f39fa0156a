"""SmolLM2-135M-Instruct, the default real pretrained LM (kept for its short names; see `sharp_prune.pretrained`)."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from .pretrained import PRETRAINED, load_pretrained, pretrained_config

DEFAULT_CACHE = PRETRAINED["smollm2"].cache_dir


def smollm2_config() -> PretrainedConfig:
    """SmolLM2's config without its weights."""
    return pretrained_config("smollm2")


def load_smollm2(
    dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct (a `LlamaForCausalLM`, 30 layers) and its tokenizer, in eval mode."""
    return load_pretrained("smollm2", dtype=dtype, attn_implementation=attn_implementation)
