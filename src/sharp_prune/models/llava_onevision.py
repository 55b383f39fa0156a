"""LLaVA-OneVision (Qwen2 text model): 5-D `pixel_values_videos`, pooled frames, one trailing newline.

The family's whole entry: locating video tokens, the black frame, the vision tower's FLOPs, the tiny random
configuration of the real class, the checkpoints and processor `run` loads, the lmms-eval wrapper.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..hf_protocol import ModelCall
from ..steps.indices import true_first
from ..steps.locate import VisualLayout
from . import tiny
from .base import LmmsWrapper, ModelAdapter, TinyModel, black_pixels, input_ids_or_raise


def _tokens_per_frame_side(model: nn.Module) -> int:
    vision = model.config.vision_config
    # The video path pools the patch grid 2x2 (bilinear, ceil), see LlavaOnevisionModel.apply_pooling.
    return math.ceil((vision.image_size // vision.patch_size) / 2)


def locate_llava_onevision(model: nn.Module, call: ModelCall, declared: torch.Tensor | None) -> VisualLayout | None:
    """Video tokens are `video_token_id` runs of F * s * s frame tokens plus one newline (kept as text)."""
    input_ids = input_ids_or_raise("llava_onevision", call)
    side = _tokens_per_frame_side(model)
    per_frame = side * side
    video_id = model.config.video_token_id
    # generate encodes the video before the prefill and drops the pixels: then frames follow from the count
    frames = call.pixel_values_videos.shape[1] if call.pixel_values_videos is not None else None
    frame_map = torch.full(input_ids.shape, -1, dtype=torch.long, device=input_ids.device)
    is_video = input_ids == video_id
    counts = is_video.sum(dim=1).tolist()  # the adapter's one host sync: how many video tokens each sample has
    order = true_first(is_video, dim=1)  # video positions first, in order
    for row in range(input_ids.shape[0]):
        pos = order[row, : counts[row]]
        if pos.numel() == 0:
            continue
        f = frames if frames is not None else (pos.numel() - 1) // per_frame
        per_video = f * per_frame + 1
        if f < 1 or pos.numel() % per_video:
            raise InputError(
                f"llava_onevision: sample {row} has {pos.numel()} video tokens, not a multiple of "
                f"{f} frames x {per_frame} tokens + 1 newline; build inputs with the model's processor."
            )
        for v in range(pos.numel() // per_video):
            block = pos[v * per_video : (v + 1) * per_video - 1]  # the last token is the newline
            offset = v * f
            frame_map[row, block] = torch.arange(f, device=input_ids.device).repeat_interleave(per_frame) + offset
    layout = VisualLayout.from_frame_map(frame_map, grid=(side, side))
    if layout is None:
        return None
    # The video span ends at the last newline: text queries are the tokens after it.
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    span_end = torch.where(is_video, positions, -1).max(dim=1).values
    return dataclasses.replace(layout, span_end=span_end)


# LLaVA-OneVision's processor normalises with SigLIP's mean = std = 0.5.
_BLACK = black_pixels((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def blank_frame_llava_onevision(model: nn.Module, layout: VisualLayout, blank_token_id: int | None) -> torch.Tensor:
    """Vision tower + projector + pooling on one black frame: [s * s, D] (the newline dropped)."""
    vision = model.config.vision_config
    size = vision.image_size
    base = model.model if hasattr(model, "model") else model
    param = next(base.vision_tower.parameters())
    pixels = _BLACK.to(param.device, param.dtype).view(1, 1, 3, 1, 1).expand(1, 1, 3, size, size)
    with torch.no_grad():
        features = base.get_video_features(pixel_values_videos=pixels).pooler_output
    return features[0, :-1]


def vision_flops_llava_onevision(config: Any, num_frames: int, video_grid_thw: tuple[int, int, int] | None) -> int:
    """SigLIP on every frame at the vision config's image size, plus the projector (matmuls only)."""
    if num_frames < 1:
        raise ConfigError("LLaVA-OneVision: pass num_frames >= 1.")
    vision = config.vision_config
    text_hidden = config.get_text_config().hidden_size
    e, i = vision.hidden_size, vision.intermediate_size
    patches = (vision.image_size // vision.patch_size) ** 2
    per_frame = 2 * patches * vision.num_channels * vision.patch_size**2 * e  # patch embedding
    per_frame += vision.num_hidden_layers * (patches * (2 * 4 * e * e + 2 * 2 * e * i) + 4 * e * patches**2)
    # SigLIP runs its head unless the config turns it off (configs before 5.23 lack the field)
    if getattr(vision, "vision_use_head", True):
        # SigLIP's attention-pooling head runs (its output is unused): k/v of every patch, one query
        per_frame += 2 * patches * 2 * e * e + 2 * 2 * e * e + 4 * patches * e + 2 * 2 * e * i
    per_frame += 2 * patches * (e * text_hidden + text_hidden * text_hidden)  # projector, before pooling
    return num_frames * per_frame


# ------------------------------------------------------------------------------------------------ tiny model
def tiny_siglip(image_size: int, patch_size: int) -> dict:
    """A one-layer SigLIP vision config for tiny LLaVA-OneVision models."""
    return dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )


def tiny_llava_onevision(num_layers: int, attn_implementation: str, dtype: torch.dtype, seed: int) -> nn.Module:
    """Qwen2 text model and a one-layer SigLIP on 32 x 32 frames, patch 4: 16 video tokens a frame."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    torch.manual_seed(seed)
    config = LlavaOnevisionConfig(
        text_config=dict(model_type="qwen2", **tiny.text_config(num_layers, rope=False)),
        vision_config=tiny_siglip(image_size=32, patch_size=4),
        image_token_index=tiny.IMAGE_TOKEN_ID,
        video_token_index=tiny.VIDEO_TOKEN_ID,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    config.text_config.bos_token_id = 1
    config.text_config.eos_token_id = None
    return tiny.finish(LlavaOnevisionForConditionalGeneration(config), attn_implementation, dtype)


def tiny_inputs_llava_onevision(
    model: nn.Module,
    prefix_lens: list[int],
    suffix_lens: list[int],
    video: tiny.TinyVideo,
    padding_side: str,
    seed: int,
) -> dict[str, torch.Tensor]:
    """F x s x s frame tokens and one newline per video; 5-D pixels [b, F, 3, H, W]."""
    generator = torch.Generator().manual_seed(seed)
    side = _tokens_per_frame_side(model)
    inputs = tiny.padded_batch(prefix_lens, suffix_lens, video.frames * side * side + 1, padding_side, generator)
    size = model.config.vision_config.image_size
    b = len(prefix_lens)
    inputs["pixel_values_videos"] = torch.randn(b, video.frames, 3, size, size, generator=generator)
    return inputs


LLAVA_ONEVISION = ModelAdapter(
    name="llava_onevision",
    class_names=("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionModel"),
    decoder_paths=("model.language_model", "language_model"),
    locate=locate_llava_onevision,
    blank_frame=blank_frame_llava_onevision,
    model_types=("llava_onevision",),
    processor_class="LlavaOnevisionProcessor",
    vision_flops=vision_flops_llava_onevision,
    lmms=LmmsWrapper(
        model_id="sharp_llava_onevision",
        simple="lmms_eval.models.simple.llava_hf:LlavaHf",
        chat="lmms_eval.models.chat.llava_hf:LlavaHf",
        default_pretrained="llava-hf/llava-onevision-qwen2-7b-ov-hf",
    ),
    tiny=TinyModel(build=tiny_llava_onevision, inputs=tiny_inputs_llava_onevision),
)
