"""The model families sharp-prune prunes: one entry each (`ModelAdapter`), and the questions others ask them.

Adding a family is one module here that defines its `ModelAdapter` entry (found when this package is imported):
the engine, the FLOPs, `run`, the lmms-eval plugin and the tests find it through the functions below.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from torch import nn

from ..errors import ConfigError, UnsupportedModelError
from .base import LmmsWrapper, ModelAdapter, TinyModel
from .generic import GENERIC
from .refused import REFUSED, refusal_for

# helper modules of this package
_NOT_FAMILIES = {"base", "generic", "loading", "processors", "refused", "tiny", "video_llama_3_video_processing"}


def _discover() -> dict[str, ModelAdapter]:
    families: dict[str, ModelAdapter] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name in _NOT_FAMILIES:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, ModelAdapter):
                families[value.name] = value
    return families


#: The video LLM families, by name (the generic adapter is `GENERIC`).
FAMILIES: dict[str, ModelAdapter] = _discover()

SUPPORTED_MODELS = (
    ", ".join(entry.class_names[0] for entry in FAMILIES.values())
    + " (and their *Model bases), or any decoder-only *ForCausalLM through the generic adapter"
)


def resolve_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for `model`, or `UnsupportedModelError` naming the supported models."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"sharp_prune.apply needs a transformers model instance, got {type(model).__name__}; "
            f"supported: {SUPPORTED_MODELS}."
        )
    name = type(model).__name__
    for adapter in FAMILIES.values():
        if name in adapter.class_names:
            return adapter
    refusal = refusal_for(name)
    if refusal is not None:
        raise UnsupportedModelError(refusal.message(name))
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


def family_of_checkpoint(model_type: str | None) -> ModelAdapter:
    """The family whose checkpoints have this `config.model_type`, or `UnsupportedModelError`."""
    for adapter in FAMILIES.values():
        if model_type in adapter.model_types:
            return adapter
    known = ", ".join(t for adapter in FAMILIES.values() for t in adapter.model_types)
    raise UnsupportedModelError(
        f"checkpoints of model_type {model_type!r} are not supported; supported video LLMs: {known}. For another "
        "decoder-only LM use the Python API with a frame map (the generic adapter)."
    )


def vision_flops(config: Any, num_frames: int = 0, video_grid_thw: tuple[int, int, int] | None = None) -> int:
    """Estimated FLOPs of a family's vision tower (+ projector / merger) on one video; matmuls only.

    Args:
        config: a video LLM config (or model).
        num_frames: LLaVA-OneVision: frames (each encoded at the vision config's image size).
        video_grid_thw: Qwen-VL: (temporal patches, height patches, width patches) of the video.

    In-LLM pruning does not change this number.
    """
    if isinstance(config, nn.Module):
        config = config.config
    try:
        family = family_of_checkpoint(getattr(config, "model_type", None))
    except UnsupportedModelError as err:
        raise ConfigError(str(err)) from err
    if family.vision_flops is None:
        raise ConfigError(f"no vision FLOP estimate for {family.name}.")
    return family.vision_flops(config, num_frames, video_grid_thw)


def lmms_wrappers() -> dict[str, tuple[ModelAdapter, LmmsWrapper]]:
    """lmms-eval model id -> (family, the upstream wrapper it extends)."""
    return {entry.lmms.model_id: (entry, entry.lmms) for entry in FAMILIES.values() if entry.lmms is not None}


__all__ = [
    "FAMILIES",
    "GENERIC",
    "REFUSED",
    "SUPPORTED_MODELS",
    "LmmsWrapper",
    "ModelAdapter",
    "TinyModel",
    "family_of_checkpoint",
    "lmms_wrappers",
    "resolve_adapter",
    "vision_flops",
]
