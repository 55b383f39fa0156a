"""LLaVA-OneVision (Qwen2 text model): 5-D `pixel_values_videos`, pooled frames, one trailing newline."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ..errors import InputError
from ..hf_protocol import ModelCall
from ..layout import VisualLayout
from .base import ModelAdapter, black_pixels, input_ids_or_raise


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
    for row in range(input_ids.shape[0]):
        pos = is_video[row].nonzero().flatten()
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


LLAVA_ONEVISION = ModelAdapter(
    name="llava_onevision",
    class_names=("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionModel"),
    decoder_paths=("model.language_model", "language_model"),
    locate=locate_llava_onevision,
    blank_frame=blank_frame_llava_onevision,
)
