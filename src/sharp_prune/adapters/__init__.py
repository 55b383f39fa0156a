"""Adapter registry: which adapter handles a given model instance."""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError
from .base import ModelAdapter
from .generic import GENERIC
from .llava_onevision import LLAVA_ONEVISION
from .qwen_vl import QWEN2_5_VL, QWEN2_VL

VLM_ADAPTERS: tuple[ModelAdapter, ...] = (LLAVA_ONEVISION, QWEN2_VL, QWEN2_5_VL)

SUPPORTED_MODELS = (
    "LlavaOnevisionForConditionalGeneration, Qwen2VLForConditionalGeneration, "
    "Qwen2_5_VLForConditionalGeneration (and their *Model bases), or any decoder-only *ForCausalLM "
    "through the generic adapter"
)


def resolve_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for `model`, or `UnsupportedModelError` naming the supported models."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"sharp_prune.apply needs a transformers model instance, got {type(model).__name__}; "
            f"supported: {SUPPORTED_MODELS}."
        )
    name = type(model).__name__
    for adapter in VLM_ADAPTERS:
        if name in adapter.class_names:
            return adapter
    config = getattr(model, "config", None)
    is_decoder_lm = (
        config is not None
        and not getattr(config, "is_encoder_decoder", False)
        and hasattr(model, "get_input_embeddings")
        and (name.endswith("ForCausalLM") or name.endswith("Model"))
        and not hasattr(config, "vision_config")
    )
    if is_decoder_lm:
        try:
            GENERIC.decoder(model)
            return GENERIC
        except UnsupportedModelError:
            pass
    raise UnsupportedModelError(f"{name} is not supported by sharp-prune; supported: {SUPPORTED_MODELS}.")


__all__ = ["GENERIC", "LLAVA_ONEVISION", "QWEN2_5_VL", "QWEN2_VL", "ModelAdapter", "resolve_adapter"]
