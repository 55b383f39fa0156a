"""What `sharp-prune speed` runs on: random-weight decoder LMs of real shapes (no hub, weights never read), and
the prompt it times (text, F x T "video" tokens declared to the generic adapter, a question)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from ..steps.locate import frame_map_for_span


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only LM shape: the transformers class and its config fields."""

    name: str
    family: str  # "llama", "qwen2", "qwen3" or "qwen3_5" (Qwen3_5ForCausalLM: Gated DeltaNet and full layers)
    config: dict[str, Any]
    note: str = ""

    @property
    def layer_types(self) -> tuple[str, ...]:
        """Each decoder layer's kind (`config.layer_types`; full attention when the shape does not say)."""
        return tuple(self.config.get("layer_types") or ("full_attention",) * self.config["num_hidden_layers"])


def _every_fourth_full(num_layers: int) -> list[str]:
    """Qwen3.5's layer mix (`full_attention_interval=4`): three linear-attention layers, then a full-attention one."""
    return ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(num_layers)]


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
    # Qwen3-VL-8B's LLM: Qwen3-8B's text config (36 layers, GQA 32 / 8 heads of 128, q/k norms); 1-D RoPE here
    # costs what its M-RoPE does (the same rotation, other angles).
    "qwen3-vl-8b": ModelShape(
        "qwen3-vl-8b",
        "qwen3",
        dict(
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            max_position_embeddings=262144,
            tie_word_embeddings=False,
            rms_norm_eps=1e-6,
            rope_parameters=dict(rope_type="default", rope_theta=5000000.0),
            pad_token_id=0,  # a stand-in (random weights): the generic adapter's blank token for PosC
        ),
        "the LLM of Qwen3-VL-8B (Qwen3ForCausalLM of its text config; for GPUs: 16 GiB of bf16 weights)",
    ),
    "tiny-hybrid": ModelShape(
        "tiny-hybrid",
        "qwen3_5",
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=8,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            linear_conv_kernel_dim=4,
            layer_types=_every_fourth_full(8),
            vocab_size=256,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            pad_token_id=0,
        ),
        "toy Qwen3_5ForCausalLM (linear x3, full) x2 for tests; --layer >= 4",
    ),
    # transformers' Qwen3_5TextConfig defaults, documented there as "the Qwen3.5-9B style configuration"
    # (configuration_qwen3_5.py, 5.24): 32 layers, every fourth full attention (16 query heads of 256, 4 KV heads,
    # output gate, RoPE on a quarter of each head), the rest Gated DeltaNet (16 key / 32 value heads of 128, conv 4).
    "qwen3.5-9b": ModelShape(
        "qwen3.5-9b",
        "qwen3_5",
        dict(
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=32,
            num_attention_heads=16,
            num_key_value_heads=4,
            head_dim=256,
            linear_num_key_heads=16,
            linear_num_value_heads=32,
            linear_key_head_dim=128,
            linear_value_head_dim=128,
            linear_conv_kernel_dim=4,
            layer_types=_every_fourth_full(32),
            vocab_size=248320,
            max_position_embeddings=32768,
            tie_word_embeddings=False,
            rms_norm_eps=1e-6,
            pad_token_id=0,  # a stand-in (random weights): the generic adapter's blank token for PosC
        ),
        "Qwen3.5-9B's LLM (Qwen3_5ForCausalLM, transformers' config defaults; 18 GiB of bf16 weights); --layer >= 4",
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
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3_5ForCausalLM,
        Qwen3_5TextConfig,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    spec = SHAPES[shape]
    config_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
        "qwen3_5": (Qwen3_5TextConfig, Qwen3_5ForCausalLM),
    }[spec.family]
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


# --------------------------------------------------------------------------------------------- the prompt
@dataclass
class SpeedPrompt:
    """One prompt: `input_ids` [1, L] and the generic adapter's `frame_map` [1, L] (-1 for text)."""

    input_ids: torch.Tensor
    frame_map: torch.Tensor
    start: int
    num_visual: int


def build_prompt(
    vocab_size: int,
    frames: int,
    tokens_per_frame: int,
    prefix_tokens: int = 14,
    suffix_tokens: int = 20,
    scenes: int | None = None,
    seed: int = 0,
    pad_token_id: int | None = None,
) -> SpeedPrompt:
    """Text prefix + frames x tokens_per_frame visual tokens + question, all random token ids.

    With `scenes=S`, frames are split into S contiguous, near-equal scenes and every frame of a scene
    repeats the scene's tokens; otherwise each frame draws its own. The pad token is never drawn (it is
    the generic adapter's blank frame for PosC).
    """
    generator = torch.Generator().manual_seed(seed)
    low = 3

    def draw(n: int) -> torch.Tensor:
        ids = torch.randint(low, vocab_size, (n,), generator=generator)
        if pad_token_id is not None:
            ids = torch.where(ids == pad_token_id, torch.full_like(ids, low), ids)
        return ids

    if scenes is None:
        video = draw(frames * tokens_per_frame)
    else:
        scene_tokens = [draw(tokens_per_frame) for _ in range(scenes)]
        video = torch.cat([scene_tokens[f * scenes // frames] for f in range(frames)])
    input_ids = torch.cat([draw(prefix_tokens), video, draw(suffix_tokens)])[None]
    frame_map = frame_map_for_span(input_ids.shape[1], prefix_tokens, frames, tokens_per_frame)
    return SpeedPrompt(input_ids, frame_map, prefix_tokens, frames * tokens_per_frame)
