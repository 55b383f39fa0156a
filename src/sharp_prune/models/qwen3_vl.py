"""Qwen3-VL and Qwen3-VL-MoE: Qwen2-VL's video tokens, one span per frame, plus DeepStack.

A video of t temporal patches is t spans, each `<{time} seconds><|vision_start|>` + h * w / merge^2 video tokens +
`<|vision_end|>`: the timestamp text between frames stays text. Frames are found as for Qwen2-VL (from
`video_grid_thw`, else from the 3-D positions under `generate`), see `qwen_vl.locate_qwen_vl`.

DeepStack: the vision tower also hands the text decoder one feature map per DeepStack level, added to the hidden
states at the visual positions after decoder layers 0, 1, ...; with K at or below the last of those layers the
engine adds the later levels to the kept visual tokens only (`sharp_prune.steps.deepstack`). PosC's blank pass adds
the black frame's own DeepStack features at the video positions (`blank_deepstack`), as a black video would get.

The MoE variant has the same engine path (its experts are MLPs of the text layers), and shares the dense family's
test battery; tests/test_family_qwen3_vl.py runs the MoE class too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..steps.locate import VisualLayout
from . import tiny
from .base import LmmsWrapper, ModelAdapter, TinyModel, black_pixels
from .qwen_vl import black_patch_features, locate_qwen_vl, patch_tower_blank_frame

# Qwen3-VL's processors normalise with mean = std = 0.5.
_BLACK = black_pixels((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


blank_frame_qwen3_vl = patch_tower_blank_frame("qwen3_vl", _BLACK)


def blank_deepstack_qwen3_vl(model: nn.Module, layout: VisualLayout, blank_token_id: int | None) -> torch.Tensor:
    """DeepStack's features of the same black temporal patch, one per level: [levels, h * w, D]."""
    features = black_patch_features(model, layout, "qwen3_vl", _BLACK).deepstack_features
    return torch.stack([level[0] for level in features])


def vision_flops_qwen3_vl(config: Any, num_frames: int, video_grid_thw: tuple[int, int, int] | None) -> int:
    """The ViT on (t, h, w) patches (attention within each temporal patch), the patch merger and one merger per
    DeepStack level (matmuls only; the learned position grid is an interpolated lookup)."""
    if video_grid_thw is None:
        raise ConfigError("Qwen3-VL: pass video_grid_thw=(t, h, w) in patches.")
    vision = config.vision_config
    t, h, w = (int(x) for x in video_grid_thw)
    patches, merge, e = t * h * w, vision.spatial_merge_size, vision.hidden_size
    total = 2 * patches * vision.in_channels * vision.temporal_patch_size * vision.patch_size**2 * e
    frame_pairs = t * (h * w) ** 2
    block = patches * (2 * 4 * e * e + 2 * 2 * e * vision.intermediate_size) + 4 * e * frame_pairs
    total += vision.depth * block
    merged_in = e * merge * merge
    mergers = 1 + len(getattr(vision, "deepstack_visual_indexes", ()))  # Qwen3.5: no DeepStack
    total += mergers * 2 * (patches // merge**2) * (merged_in * merged_in + merged_in * vision.out_hidden_size)
    return total


# ------------------------------------------------------------------------------------------------ tiny models
def tiny_qwen3_vl_config(num_layers: int, moe: bool = False, **token_ids: int) -> Any:
    """A tiny Qwen3-VL configuration: a 3-block ViT (patch 4, merge 2, temporal patch 2) whose three DeepStack
    levels feed decoder layers 0, 1 and 2, and a GQA text model with interleaved M-RoPE. `moe`: the MoE class's
    configuration (4 experts, 2 per token). `token_ids` overrides the tiny vocabulary's ids."""
    import transformers

    vision = dict(
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
        depth=3,
        num_heads=2,
        hidden_size=32,
        intermediate_size=64,
        out_hidden_size=64,
        num_position_embeddings=16,
        deepstack_visual_indexes=[0, 1, 2],
    )
    text = tiny.text_config(num_layers, rope=True)
    text["head_dim"] = 16
    text["rope_parameters"]["mrope_interleaved"] = True
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    tiny.take_text_ids(token_ids, text)
    ids = dict(
        vision_start_token_id=tiny.VISION_START_ID,
        vision_end_token_id=tiny.VISION_END_ID,
        image_token_id=tiny.IMAGE_TOKEN_ID,
        video_token_id=tiny.VIDEO_TOKEN_ID,
    )
    ids.update(token_ids)
    config_cls = transformers.Qwen3VLMoeConfig if moe else transformers.Qwen3VLConfig
    return tiny.with_text_ids(config_cls(text_config=text, vision_config=vision, **ids), text)


def tiny_qwen3_vl(moe: bool) -> Any:
    """`TinyModel.build` of the tiny Qwen3-VL (`moe`: Qwen3-VL-MoE) model."""
    name = "Qwen3VLMoeForConditionalGeneration" if moe else "Qwen3VLForConditionalGeneration"
    return tiny.builder(name, lambda num_layers: tiny_qwen3_vl_config(num_layers, moe=moe))


TIMESTAMP_TOKENS = 2  # "<1.5 seconds>" is a few text tokens before each frame's <|vision_start|>


def tiny_inputs_qwen3_vl(
    model: nn.Module,
    prefix_lens: list[int],
    suffix_lens: list[int],
    video: tiny.TinyVideo,
    padding_side: str,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Each sample: prefix, then per frame (temporal patch) timestamp text + <|vision_start|> + grid x grid video
    tokens + <|vision_end|>, then suffix, padded on one side; flattened patches and `video_grid_thw`."""
    generator = torch.Generator().manual_seed(seed)
    per_frame = video.grid**2
    rows = []
    for p, s in zip(prefix_lens, suffix_lens, strict=True):
        parts = [torch.randint(3, 200, (p,), generator=generator)]
        for _ in range(video.frames):
            parts.append(torch.randint(3, 200, (TIMESTAMP_TOKENS,), generator=generator))
            parts.append(torch.tensor([tiny.VISION_START_ID]))
            parts.append(torch.full((per_frame,), tiny.VIDEO_TOKEN_ID))
            parts.append(torch.tensor([tiny.VISION_END_ID]))
        parts.append(torch.randint(3, 200, (s,), generator=generator))
        rows.append(torch.cat(parts))
    inputs = tiny.pad_rows(rows, padding_side)
    vision = model.config.vision_config
    b = len(prefix_lens)
    h = w = video.grid * vision.spatial_merge_size
    patch_values = 3 * vision.temporal_patch_size * vision.patch_size**2
    inputs["pixel_values_videos"] = torch.randn(b * video.frames * h * w, patch_values, generator=generator)
    inputs["video_grid_thw"] = torch.tensor([[video.frames, h, w]] * b)
    inputs["mm_token_type_ids"] = (inputs["input_ids"] == tiny.VIDEO_TOKEN_ID).int() * 2
    return inputs


_PATHS = ("model.language_model", "language_model")


def torch_video_processors() -> tuple[type, ...]:
    """Qwen3-VL's video processor on torch ops (Qwen3-VL-MoE checkpoints use it too), for machines without
    torchvision; imported on first use."""
    from .qwen3_video_processing import Qwen3VLVideoProcessor

    return (Qwen3VLVideoProcessor,)


QWEN3_VL = ModelAdapter(
    name="qwen3_vl",
    class_names=("Qwen3VLForConditionalGeneration", "Qwen3VLModel"),
    decoder_paths=_PATHS,
    locate=locate_qwen_vl,
    blank_frame=blank_frame_qwen3_vl,
    blank_frame_needs_grid=True,
    blank_deepstack=blank_deepstack_qwen3_vl,
    model_types=("qwen3_vl",),
    processor_class="Qwen3VLProcessor",
    video_processors=torch_video_processors,
    vision_flops=vision_flops_qwen3_vl,
    lmms=LmmsWrapper(
        model_id="sharp_qwen3_vl",
        simple="lmms_eval.models.simple.qwen3_vl:Qwen3_VL",
        chat="lmms_eval.models.chat.qwen3_vl:Qwen3_VL",
        default_pretrained="Qwen/Qwen3-VL-8B-Instruct",
    ),
    tiny=TinyModel(build=tiny_qwen3_vl(moe=False), inputs=tiny_inputs_qwen3_vl),
)

# Same engine path as the dense family: no tiny entry of its own (tests/test_family_qwen3_vl.py runs it).
QWEN3_VL_MOE = ModelAdapter(
    name="qwen3_vl_moe",
    class_names=("Qwen3VLMoeForConditionalGeneration", "Qwen3VLMoeModel"),
    decoder_paths=_PATHS,
    locate=locate_qwen_vl,
    blank_frame=blank_frame_qwen3_vl,
    blank_frame_needs_grid=True,
    blank_deepstack=blank_deepstack_qwen3_vl,
    model_types=("qwen3_vl_moe",),
    processor_class="Qwen3VLProcessor",
    video_processors=torch_video_processors,
    vision_flops=vision_flops_qwen3_vl,
)
