"""Qwen3.5 and Qwen3.5-MoE: Qwen3-VL's video layout and vision tower (no DeepStack) on a hybrid text stack.

The text decoder mixes Gated DeltaNet linear-attention layers with full-attention ones (`config.layer_types`; the
released checkpoints: three linear, then one full). The engine reads scores at the last full-attention layer below
K, runs layers >= K (linear ones included: their recurrent state is built from the kept tokens) on the kept
sequence, and needs the first full-attention layer below K (see README, "Linear-attention layers"). Videos are laid
out as Qwen3-VL's (one span per frame between timestamp text; the checkpoints use `Qwen3VLProcessor`), so locating,
the black frame and the vision FLOPs are Qwen3-VL's.

The MoE variant has the same engine path and shares this family's tests (tests/test_family_qwen3_5.py builds it).
"""

from __future__ import annotations

from typing import Any

from . import tiny
from .base import LmmsWrapper, ModelAdapter, TinyModel
from .qwen3_vl import blank_frame_qwen3_vl, tiny_inputs_qwen3_vl, torch_video_processors, vision_flops_qwen3_vl
from .qwen_vl import locate_qwen_vl


def tiny_qwen3_5_config(num_layers: int, moe: bool = False, **token_ids: int) -> Any:
    """A tiny Qwen3.5 configuration: Qwen3-VL's tiny ViT (no DeepStack) and a hybrid text stack whose layers
    alternate full and linear attention (full, linear, full, linear: every K >= 1 is legal, as the shared battery
    needs; the released checkpoints start with three linear layers), heads of 32 with RoPE on a quarter of each
    (interleaved M-RoPE), as the released checkpoints have it. `moe`: the MoE class's config."""
    import transformers

    vision = dict(
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
        depth=1,
        num_heads=2,
        hidden_size=32,
        intermediate_size=64,
        out_hidden_size=64,
        num_position_embeddings=16,
    )
    text = tiny.text_config(num_layers, rope=False)
    text.update(
        head_dim=32,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_conv_kernel_dim=4,
        layer_types=["linear_attention" if i % 2 else "full_attention" for i in range(num_layers)],
        rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 1, 1], mrope_interleaved=True),
        partial_rotary_factor=0.25,
    )
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)
    tiny.take_text_ids(token_ids, text)
    ids = dict(
        vision_start_token_id=tiny.VISION_START_ID,
        vision_end_token_id=tiny.VISION_END_ID,
        image_token_id=tiny.IMAGE_TOKEN_ID,
        video_token_id=tiny.VIDEO_TOKEN_ID,
    )
    ids.update(token_ids)
    config_cls = transformers.Qwen3_5MoeConfig if moe else transformers.Qwen3_5Config
    return tiny.with_text_ids(config_cls(text_config=text, vision_config=vision, **ids), text)


def tiny_qwen3_5(moe: bool) -> Any:
    """`TinyModel.build` of the tiny Qwen3.5 (`moe`: Qwen3.5-MoE) model."""
    name = "Qwen3_5MoeForConditionalGeneration" if moe else "Qwen3_5ForConditionalGeneration"
    return tiny.builder(name, lambda num_layers: tiny_qwen3_5_config(num_layers, moe=moe))


_PATHS = ("model.language_model", "language_model")

QWEN3_5 = ModelAdapter(
    name="qwen3_5",
    class_names=("Qwen3_5ForConditionalGeneration", "Qwen3_5Model"),
    decoder_paths=_PATHS,
    locate=locate_qwen_vl,
    blank_frame=blank_frame_qwen3_vl,
    blank_frame_needs_grid=True,
    model_types=("qwen3_5",),
    processor_class="Qwen3VLProcessor",
    video_processors=torch_video_processors,
    vision_flops=vision_flops_qwen3_vl,
    lmms=LmmsWrapper(
        model_id="sharp_qwen3_5",
        simple="lmms_eval.models.simple.qwen3_5:Qwen3_5",
        chat="lmms_eval.models.chat.qwen3_5:Qwen3_5",
        default_pretrained="Qwen/Qwen3.5-9B",
    ),
    tiny=TinyModel(build=tiny_qwen3_5(moe=False), inputs=tiny_inputs_qwen3_vl),
)

# Same engine path as the dense family: no tiny entry of its own (tests/test_family_qwen3_5.py runs it).
QWEN3_5_MOE = ModelAdapter(
    name="qwen3_5_moe",
    class_names=("Qwen3_5MoeForConditionalGeneration", "Qwen3_5MoeModel"),
    decoder_paths=_PATHS,
    locate=locate_qwen_vl,
    blank_frame=blank_frame_qwen3_vl,
    blank_frame_needs_grid=True,
    model_types=("qwen3_5_moe",),
    processor_class="Qwen3VLProcessor",
    video_processors=torch_video_processors,
    vision_flops=vision_flops_qwen3_vl,
)
