"""Random-weight decoder LMs of real shapes for `sharp-prune speed` (no hub, weights never read)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only LM shape: the transformers class and its config fields."""

    name: str
    family: str  # "llama" or "qwen2"
    config: dict[str, Any]
    note: str = ""


SHAPES: dict[str, ModelShape] = {
    "tiny": ModelShape(
        "tiny",
        "llama",
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=256,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
            pad_token_id=0,
        ),
        "toy LlamaForCausalLM for tests",
    ),
    "smollm2-135m": ModelShape(
        "smollm2-135m",
        "llama",
        dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            max_position_embeddings=8192,
            tie_word_embeddings=True,
            rms_norm_eps=1e-5,
            rope_parameters=dict(rope_type="default", rope_theta=100000.0),
            pad_token_id=0,
        ),
        "SmolLM2-135M (LlamaForCausalLM)",
    ),
    "qwen2-0.5b": ModelShape(
        "qwen2-0.5b",
        "qwen2",
        dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
            pad_token_id=151643,
        ),
        "Qwen2-0.5B (the LLM of LLaVA-OneVision-0.5B)",
    ),
    "qwen2-7b": ModelShape(
        "qwen2-7b",
        "qwen2",
        dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            max_position_embeddings=32768,
            tie_word_embeddings=False,
            rms_norm_eps=1e-6,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
            pad_token_id=151643,
        ),
        "Qwen2-7B (the LLM of LLaVA-OneVision-7B; for GPUs: 15 GiB of bf16 weights)",
    ),
}


def build_model(
    shape: str,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> PreTrainedModel:
    """A random-weight `*ForCausalLM` of `shape` (a key of `SHAPES`), in eval mode, without gradients.

    Built on the meta device, then materialised on `device` and initialised by transformers' own
    `init_weights` (normal(0, 0.02) matrices, unit norms, RoPE buffers in fp32, tied embeddings tied),
    so no weight is allocated twice and nothing is read from the hub.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = SHAPES[shape]
    config_cls, model_cls = (
        (LlamaConfig, LlamaForCausalLM) if spec.family == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    )
    config = config_cls(**spec.config, bos_token_id=1, eos_token_id=None)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters in `dtype`; RoPE buffers are built in fp32 explicitly
    try:
        with torch.device("meta"):
            model = model_cls(config)
    finally:
        torch.set_default_dtype(previous)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights()
    model.requires_grad_(False)
    model.set_attn_implementation(attn_implementation)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = config.pad_token_id
    return model.eval()
