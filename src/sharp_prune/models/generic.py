"""Any Hugging Face decoder-only causal LM: the caller declares which positions are visual.

Use `handle.visual_frames(frame_map)` around the call, where `frame_map` is a [batch, seq_len] long
tensor holding each visual token's frame index and -1 for text (see `frame_map_for_span`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..hf_protocol import ModelCall
from ..steps.locate import VisualLayout
from . import tiny
from .base import ModelAdapter, TinyModel


def locate_declared(model: nn.Module, call: ModelCall, declared: torch.Tensor | None) -> VisualLayout | None:
    if declared is None:
        return None
    reference = call.reference
    batch, seq_len = reference.shape[:2]
    if declared.shape[1] == seq_len and declared.shape[0] == 1 and batch > 1:
        declared = declared.expand(batch, -1)  # one map for every row (e.g. generate's beams of one prompt)
    if tuple(declared.shape) != (batch, seq_len):
        widened = ""
        if declared.shape[1] == seq_len and batch % declared.shape[0] == 0:
            widened = (
                f" The input has {batch // declared.shape[0]}x the declared rows: generate(num_beams=...) or "
                "num_return_sequences repeat each prompt, so declare the map per repeated row "
                "(frame_map.repeat_interleave(n, dim=0)), or one row for all."
            )
        raise InputError(
            f"generic adapter: the declared frame map has shape {tuple(declared.shape)} but the input is "
            f"{(batch, seq_len)}; declare one entry per input token (-1 for text).{widened}"
        )
    return VisualLayout.from_frame_map(declared.to(reference.device))


def blank_frame_generic(model: nn.Module, layout: VisualLayout, blank_token_id: int | None) -> torch.Tensor:
    """The embedding of `blank_token_id` (default: the model's pad token) stands for a blank frame: [1, D]."""
    token = blank_token_id if blank_token_id is not None else getattr(model.config, "pad_token_id", None)
    if token is None:
        raise InputError(
            "generic adapter: PosC needs a blank token; the model has no pad_token_id, so pass "
            "PruneConfig(posc_blank_token_id=...) (e.g. the id of a space or pad token)."
        )
    embedding = model.get_input_embeddings()
    return embedding(torch.tensor([token], device=embedding.weight.device))


def tiny_causal_lm(num_layers: int, attn_implementation: str, dtype: torch.dtype, seed: int) -> nn.Module:
    """A randomly initialised `LlamaForCausalLM` (GQA, RoPE) for the generic adapter."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return tiny.finish(
        LlamaForCausalLM(LlamaConfig(**tiny.text_config(num_layers, rope=False))), attn_implementation, dtype
    )


def tiny_sliding_lm(
    num_layers: int = 6,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    window: int = 8,
) -> nn.Module:
    """A randomly initialised `Gemma3ForCausalLM` whose layers alternate as Gemma 3's do, at toy size: two
    sliding-window layers (window `window`) then one full-attention layer, repeated."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    text = tiny.text_config(num_layers, rope=False)
    kinds = ["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(num_layers)]
    config = Gemma3TextConfig(**text, head_dim=16, query_pre_attn_scalar=16, sliding_window=window, layer_types=kinds)
    return tiny.finish(Gemma3ForCausalLM(config), attn_implementation, dtype)


def tiny_hybrid_lm(
    num_layers: int = 6,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> nn.Module:
    """A randomly initialised `Qwen3_5ForCausalLM` whose layers mix as Qwen3.5's do, at toy size: two Gated DeltaNet
    (linear-attention) layers then one full-attention layer, repeated (Qwen3.5 itself has three then one)."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    torch.manual_seed(seed)
    text = tiny.text_config(num_layers, rope=False)
    kinds = ["full_attention" if (i + 1) % 3 == 0 else "linear_attention" for i in range(num_layers)]
    config = Qwen3_5TextConfig(
        **text,
        head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,  # two value heads per key head, as in Qwen3.5
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_conv_kernel_dim=4,
        layer_types=kinds,
    )
    return tiny.finish(Qwen3_5ForCausalLM(config), attn_implementation, dtype)


GENERIC = ModelAdapter(
    name="generic",
    class_names=(),
    decoder_paths=("model", ""),
    locate=locate_declared,
    blank_frame=blank_frame_generic,
    tiny=TinyModel(build=tiny_causal_lm),
)
