"""LLaVA-NeXT-Video (CLIP + Llama-family text model): 5-D `pixel_values_videos`, pooled frames, no newline.

Each frame goes through CLIP at the vision config's image size (its position embeddings fix the size), drops
CLS (`vision_feature_select_strategy="default"`), is pooled over its patch grid by `LlavaNextVideoPooler`
(average / max / conv, kernel = stride = `spatial_pool_stride`) and projected. The processor expands each
`<video>` into F * s * s `video_token_id` tokens, frame after frame, with nothing between frames and no newline
token (unlike LLaVA-OneVision); images use their own `image_token_id` and stay text to sharp-prune.

The family's whole entry: locating video tokens, the black frame, the vision tower's FLOPs, the tiny random
configuration of the real class, the checkpoints and processor `run` loads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..hf_protocol import ModelCall
from ..steps.locate import VisualLayout
from . import tiny
from .base import ModelAdapter, TinyModel, black_pixels, input_ids_or_raise


def _tokens_per_frame_side(config: Any) -> int:
    vision = config.vision_config
    # LlavaNextVideoPooler: kernel = stride, no padding, so floor; it reshapes the patches to a square grid.
    return (vision.image_size // vision.patch_size) // config.spatial_pool_stride


def locate_llava_next_video(model: nn.Module, call: ModelCall, declared: torch.Tensor | None) -> VisualLayout | None:
    """Video tokens are `video_token_id` runs of F * s * s frame tokens; the k-th video token of a sample is in
    frame k // (s * s) (frames of later videos continue the count)."""
    input_ids = input_ids_or_raise("llava_next_video", call)
    side = _tokens_per_frame_side(model.config)
    per_frame = side * side
    is_video = input_ids == model.config.video_token_id
    # generate encodes the video before the prefill and drops the pixels: then frames follow from the count
    pixels = call.pixel_values_videos
    per_video = pixels.shape[1] * per_frame if pixels is not None and pixels.ndim == 5 else per_frame
    rank = is_video.long().cumsum(dim=1) - 1  # index of each video token among its sample's video tokens
    frame_map = torch.where(is_video, rank.div(per_frame, rounding_mode="floor"), -1)
    layout = VisualLayout.from_frame_map(frame_map, grid=(side, side))
    # from_frame_map read each sample's count (all equal) to the host already: check it there, no sync of our own
    if layout is not None and layout.num_visual % per_video:
        raise InputError(
            f"llava_next_video: each sample has {layout.num_visual} video tokens, not a multiple of "
            f"{per_video // per_frame} frame(s) x {per_frame} tokens ({side} x {side} pooled patches); build "
            "inputs with the model's processor."
        )
    return layout


# LLaVA-NeXT-Video's video processor normalises with OpenAI CLIP's mean and std.
_BLACK = black_pixels((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def blank_frame_llava_next_video(model: nn.Module, layout: VisualLayout, blank_token_id: int | None) -> torch.Tensor:
    """CLIP + pooling + projector on one black frame at the vision config's image size: [s * s, D]."""
    size = model.config.vision_config.image_size
    base = model.model if hasattr(model, "model") else model
    param = next(base.vision_tower.parameters())
    pixels = _BLACK.to(param.device, param.dtype).view(1, 1, 3, 1, 1).expand(1, 1, 3, size, size)
    with torch.no_grad():
        features = base.get_video_features(pixel_values_videos=pixels).pooler_output
    # transformers < 5.24 returns one [frames, s * s, D] tensor per video, later releases [frames * s * s, D]
    return features[0].reshape(-1, features[0].shape[-1])


def vision_flops_llava_next_video(config: Any, num_frames: int, video_grid_thw: tuple[int, int, int] | None) -> int:
    """CLIP on every frame at the vision config's image size (all its layers run, whichever one is read), the
    pooler (conv mode only), and the projector on the pooled tokens (matmuls only)."""
    if num_frames < 1:
        raise ConfigError("LLaVA-NeXT-Video: pass num_frames >= 1.")
    vision = config.vision_config
    text_hidden = config.get_text_config().hidden_size
    e, i = vision.hidden_size, vision.intermediate_size
    grid = vision.image_size // vision.patch_size
    patches = grid * grid
    seq = patches + 1  # CLIP prepends its CLS token
    per_frame = 2 * patches * vision.num_channels * vision.patch_size**2 * e  # patch embedding
    per_frame += vision.num_hidden_layers * (seq * (2 * 4 * e * e + 2 * 2 * e * i) + 4 * e * seq**2)
    layers = config.vision_feature_layer
    features = e * (1 if isinstance(layers, int) else len(layers))  # selected layers are concatenated
    stride = config.spatial_pool_stride
    pooled = (grid // stride) ** 2
    if config.spatial_pool_mode == "conv":
        out = getattr(config, "spatial_pool_out_channels", e)
        per_frame += 2 * pooled * out * features * stride * stride
    per_frame += 2 * pooled * (features * text_hidden + text_hidden * text_hidden)  # projector, after pooling
    return num_frames * per_frame


# ------------------------------------------------------------------------------------------------ tiny model
def tiny_clip(image_size: int, patch_size: int) -> dict:
    """A two-layer CLIP vision config (the model reads the second-to-last layer, as the checkpoints do)."""
    return dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )


def tiny_llava_next_video_config(num_layers: int, **overrides: Any) -> Any:
    """Llama text model and a two-layer CLIP on 32 x 32 frames, patch 4, pooled 2 x 2: 16 video tokens a frame.
    `overrides` replaces config fields (spatial_pool_mode, vision_feature_layer, token ids, ...)."""
    from transformers import LlavaNextVideoConfig

    fields: dict[str, Any] = dict(
        image_token_index=tiny.IMAGE_TOKEN_ID,
        video_token_index=tiny.VIDEO_TOKEN_ID,
        vision_feature_select_strategy="default",  # the checkpoints': CLS dropped (the pooler needs a square grid)
        vision_feature_layer=-2,
        image_grid_pinpoints=[[32, 32]],
        spatial_pool_mode="average",
        spatial_pool_stride=2,
    )
    text = tiny.text_config(num_layers, rope=False)
    tiny.take_text_ids(overrides, text)
    fields.update(overrides)
    config = LlavaNextVideoConfig(
        text_config=dict(model_type="llama", **text), vision_config=tiny_clip(image_size=32, patch_size=4), **fields
    )
    return tiny.with_text_ids(config, text)


tiny_llava_next_video = tiny.builder(
    "LlavaNextVideoForConditionalGeneration", tiny_llava_next_video_config
)  # the tiny configuration's model, with random weights


def tiny_inputs_llava_next_video(
    model: nn.Module,
    prefix_lens: list[int],
    suffix_lens: list[int],
    video: tiny.TinyVideo,
    padding_side: str,
    seed: int,
) -> dict[str, torch.Tensor]:
    """F x s x s video tokens per video, nothing between frames; 5-D pixels [b, F, 3, H, W]."""
    generator = torch.Generator().manual_seed(seed)
    side = _tokens_per_frame_side(model.config)
    inputs = tiny.padded_batch(prefix_lens, suffix_lens, video.frames * side * side, padding_side, generator)
    size = model.config.vision_config.image_size
    b = len(prefix_lens)
    inputs["pixel_values_videos"] = torch.randn(b, video.frames, 3, size, size, generator=generator)
    return inputs


LLAVA_NEXT_VIDEO = ModelAdapter(
    name="llava_next_video",
    class_names=("LlavaNextVideoForConditionalGeneration", "LlavaNextVideoModel"),
    decoder_paths=("model.language_model", "language_model"),
    locate=locate_llava_next_video,
    blank_frame=blank_frame_llava_next_video,
    model_types=("llava_next_video",),
    processor_class="LlavaNextVideoProcessor",
    vision_flops=vision_flops_llava_next_video,
    # lmms-eval's llava_hf wrapper maps only llava / llava_next / llava_onevision checkpoints to a class
    lmms=None,
    tiny=TinyModel(build=tiny_llava_next_video, inputs=tiny_inputs_llava_next_video),
)
