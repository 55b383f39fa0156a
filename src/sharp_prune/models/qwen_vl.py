"""Qwen2-VL and Qwen2.5-VL: one "frame" is one temporal patch (2 frames) of h * w / merge^2 tokens.

Frames are found from `video_grid_thw` when the call has it, else from the 3-D M-RoPE `position_ids`
(`generate` encodes the video before the prefill and passes positions, not grids): within a run of
video tokens, a frame starts wherever the (height, width) position returns to the run's top-left.

The two families' whole entries: locating video tokens, the black frame, the vision tower's FLOPs, the tiny
random configurations of the real classes, the checkpoints and processors `run` loads, the lmms-eval wrappers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..hf_protocol import ModelCall
from ..steps.indices import true_first
from ..steps.locate import VisualLayout
from . import tiny
from .base import (
    BlankFrameFn,
    LmmsWrapper,
    ModelAdapter,
    TinyModel,
    black_pixels,
    input_ids_or_raise,
    mixed_frame_sizes,
)


def _frames_from_grids(
    is_video: torch.Tensor, grid_thw: torch.Tensor, merge: int
) -> tuple[torch.Tensor, tuple[int, int] | None]:
    # the grids and each sample's video token count, read from the device at once (the adapter's host sync)
    counts = is_video.sum(dim=1)
    values = torch.cat([grid_thw.to(counts.device).long().flatten(), counts]).tolist()
    grids, counts = values[: grid_thw.numel()], values[grid_thw.numel() :]
    videos = [(t, h // merge, w // merge) for t, h, w in zip(grids[0::3], grids[1::3], grids[2::3], strict=True)]
    frame_map = torch.full(is_video.shape, -1, dtype=torch.long, device=is_video.device)
    order = true_first(is_video, dim=1)  # video positions first, in order
    next_video = 0
    for row in range(is_video.shape[0]):
        pos = order[row, : counts[row]]
        start, frame_offset = 0, 0
        while start < pos.numel():
            if next_video >= len(videos):
                raise InputError("qwen_vl: more video tokens in input_ids than `video_grid_thw` describes.")
            t, h, w = videos[next_video]
            block = pos[start : start + t * h * w]
            if block.numel() != t * h * w:
                raise InputError(
                    f"qwen_vl: video {next_video} needs {t * h * w} tokens, sample {row} has {block.numel()}."
                )
            frame_map[row, block] = torch.arange(t, device=is_video.device).repeat_interleave(h * w) + frame_offset
            start, frame_offset, next_video = start + block.numel(), frame_offset + t, next_video + 1
    grids = {(h, w) for _, h, w in videos}
    return frame_map, (next(iter(grids)) if len(grids) == 1 else None)


def _frames_from_positions(
    is_video: torch.Tensor, position_ids: torch.Tensor
) -> tuple[torch.Tensor, tuple[int, int] | None]:
    spatial = position_ids[-2:]  # [2, b, L]: height and width rows of M-RoPE
    frame_map = torch.full(is_video.shape, -1, dtype=torch.long, device=is_video.device)
    grid = None
    for row in range(is_video.shape[0]):
        pos = is_video[row].nonzero().flatten()
        if pos.numel() == 0:
            continue
        run_start = torch.ones_like(pos, dtype=torch.bool)
        run_start[1:] = pos.diff() != 1
        hw = spatial[:, row, pos]  # [2, n]
        first_of_run = torch.cummax(torch.where(run_start, torch.arange(pos.numel(), device=pos.device), 0), 0).values
        frame_start = (hw == hw[:, first_of_run]).all(dim=0)
        frame_map[row, pos] = frame_start.long().cumsum(0) - 1
        if grid is None:
            first = frame_map[row, pos] == 0
            grid = (int(hw[0, first].unique().numel()), int(hw[1, first].unique().numel()))
    return frame_map, grid


def locate_qwen_vl(model: nn.Module, call: ModelCall, declared: torch.Tensor | None) -> VisualLayout | None:
    input_ids = input_ids_or_raise("qwen_vl", call)
    is_video = input_ids == model.config.video_token_id
    grid_thw = call.video_grid_thw  # None under generate, which encodes the video before the prefill
    position_ids = call.position_ids
    if grid_thw is not None:
        merge = model.config.vision_config.spatial_merge_size
        frame_map, grid = _frames_from_grids(is_video, grid_thw, merge)
    elif isinstance(position_ids, torch.Tensor) and position_ids.ndim == 3 and position_ids.shape[0] in (3, 4):
        frame_map, grid = _frames_from_positions(is_video, position_ids)
    else:
        if not bool(is_video.any()):
            return None
        raise InputError(
            "qwen_vl: video tokens found but neither `video_grid_thw` nor 3-D `position_ids`; pass the "
            "processor's outputs to the model (or to generate)."
        )
    return VisualLayout.from_frame_map(frame_map, grid=grid)


# Qwen2-VL / Qwen2.5-VL processors normalise with OpenAI CLIP's mean and std.
_BLACK = black_pixels((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def black_patch_features(model: nn.Module, layout: VisualLayout, family: str, black: torch.Tensor) -> Any:
    """`get_video_features` of a family whose vision tower takes flattened (channel, temporal, patch, patch) patches
    and `video_grid_thw` (Qwen-VL, Qwen3-VL, GLM-4V) on one black temporal patch of the layout's grid. `black`: the
    processor's normalised value of a black pixel per channel."""
    if layout.grid is None:
        raise InputError(mixed_frame_sizes(family))
    vision = model.config.vision_config
    merge, patch, temporal = vision.spatial_merge_size, vision.patch_size, vision.temporal_patch_size
    h, w = layout.grid[0] * merge, layout.grid[1] * merge
    base = model.model if hasattr(model, "model") else model
    param = next(base.visual.parameters())
    # One patch = channels x temporal x patch x patch values, flattened channel-major.
    patch_vector = black.to(param.device, param.dtype).repeat_interleave(temporal * patch * patch)
    pixels = patch_vector.expand(h * w, -1).contiguous()
    grid = torch.tensor([[1, h, w]], device=param.device)
    with torch.no_grad():
        return base.get_video_features(pixel_values_videos=pixels, video_grid_thw=grid)


def patch_tower_blank_frame(family: str, black: torch.Tensor) -> BlankFrameFn:
    """The blank frame of a patch-tower family (`black_patch_features`): the tower + merger on one black temporal
    patch of the layout's grid, [h * w, D]."""

    def blank_frame(model: nn.Module, layout: VisualLayout, blank_token_id: int | None) -> torch.Tensor:
        return black_patch_features(model, layout, family, black).pooler_output[0]

    return blank_frame


blank_frame_qwen_vl = patch_tower_blank_frame("qwen_vl", _BLACK)


def vision_flops_qwen_vl(config: Any, num_frames: int, video_grid_thw: tuple[int, int, int] | None) -> int:
    """The ViT on (t, h, w) patches, attention per temporal patch (Qwen2.5-VL: per window in its windowed
    layers), and the patch merger (matmuls only)."""
    if video_grid_thw is None:
        raise ConfigError("Qwen-VL: pass video_grid_thw=(t, h, w) in patches.")
    kind = config.model_type
    vision = config.vision_config
    text_hidden = config.get_text_config().hidden_size
    t, h, w = (int(x) for x in video_grid_thw)
    patches, merge = t * h * w, vision.spatial_merge_size
    e = vision.embed_dim if kind == "qwen2_vl" else vision.hidden_size
    total = 2 * patches * vision.in_channels * vision.temporal_patch_size * vision.patch_size**2 * e
    # Qwen2-VL: fc1/fc2 of width mlp_ratio * e; Qwen2.5-VL: gated gate/up/down
    mlp = 2 * 2 * e * int(e * vision.mlp_ratio) if kind == "qwen2_vl" else 2 * 3 * e * vision.intermediate_size
    frame_pairs = t * (h * w) ** 2
    window_pairs = t * _qwen25_window_pairs(h, w, merge, vision) if kind == "qwen2_5_vl" else frame_pairs
    for depth in range(vision.depth):
        full = kind == "qwen2_vl" or depth in vision.fullatt_block_indexes
        total += patches * (2 * 4 * e * e + mlp) + 4 * e * (frame_pairs if full else window_pairs)
    merged_in = e * merge * merge
    out = getattr(vision, "out_hidden_size", None) if kind == "qwen2_5_vl" else vision.hidden_size
    total += 2 * (patches // merge**2) * (merged_in * merged_in + merged_in * (out or text_hidden))
    return total


def _qwen25_window_pairs(h: int, w: int, merge: int, vision: Any) -> int:
    """Attention pairs of one temporal patch in Qwen2.5-VL's windowed layers (edge windows are smaller)."""
    side = vision.window_size // merge // vision.patch_size  # window side, in merged tokens
    rows, cols = h // merge, w // merge
    heights = [min(side, rows - r) for r in range(0, rows, side)]
    widths = [min(side, cols - c) for c in range(0, cols, side)]
    return sum((a * b * merge * merge) ** 2 for a in heights for b in widths)


# ------------------------------------------------------------------------------------------------ tiny models
def tiny_qwen_vl_config(family: str, num_layers: int, **token_ids: int) -> Any:
    """The tiny configuration of `family` ("qwen2_vl" or "qwen2_5_vl"): a one-block ViT (patch 4, merge 2,
    temporal patch 2) and a GQA text model with M-RoPE. `token_ids` overrides the tiny vocabulary's ids
    (vision_start_token_id, vision_end_token_id, image_token_id, video_token_id, vocab_size, ...)."""
    import transformers

    vision = dict(patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, depth=1, num_heads=2)
    if family == "qwen2_vl":
        vision.update(embed_dim=32, hidden_size=64, mlp_ratio=2)
        config_cls = transformers.Qwen2VLConfig
    else:
        vision.update(
            hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=16, fullatt_block_indexes=[0]
        )
        config_cls = transformers.Qwen2_5_VLConfig
    ids = dict(
        vision_start_token_id=tiny.VISION_START_ID,
        vision_end_token_id=tiny.VISION_END_ID,
        image_token_id=tiny.IMAGE_TOKEN_ID,
        video_token_id=tiny.VIDEO_TOKEN_ID,
    )
    text = tiny.text_config(num_layers, rope=True)
    tiny.take_text_ids(token_ids, text)
    ids.update(token_ids)
    return tiny.with_text_ids(config_cls(text_config=text, vision_config=vision, **ids), text)


def tiny_inputs_qwen_vl(
    model: nn.Module,
    prefix_lens: list[int],
    suffix_lens: list[int],
    video: tiny.TinyVideo,
    padding_side: str,
    seed: int,
) -> dict[str, torch.Tensor]:
    """t temporal patches of (grid x grid) merged tokens per video; flattened patches and `video_grid_thw`."""
    generator = torch.Generator().manual_seed(seed)
    inputs = tiny.padded_batch(prefix_lens, suffix_lens, video.frames * video.grid**2, padding_side, generator)
    vision = model.config.vision_config
    b = len(prefix_lens)
    h = w = video.grid * vision.spatial_merge_size
    patches = video.frames * h * w
    patch_values = 3 * vision.temporal_patch_size * vision.patch_size**2
    inputs["pixel_values_videos"] = torch.randn(b * patches, patch_values, generator=generator)
    inputs["video_grid_thw"] = torch.tensor([[video.frames, h, w]] * b)
    inputs["mm_token_type_ids"] = (inputs["input_ids"] == tiny.VIDEO_TOKEN_ID).int() * 2
    return inputs


def torch_video_processors() -> tuple[type, ...]:
    """Qwen2-VL's video processor on torch ops (Qwen2.5-VL checkpoints use it too), for machines without
    torchvision; imported on first use."""
    from .qwen_video_processing import Qwen2VLVideoProcessor

    return (Qwen2VLVideoProcessor,)


_QWEN_PATHS = ("model.language_model", "language_model")

QWEN2_VL = ModelAdapter(
    name="qwen2_vl",
    class_names=("Qwen2VLForConditionalGeneration", "Qwen2VLModel"),
    decoder_paths=_QWEN_PATHS,
    locate=locate_qwen_vl,
    blank_frame=blank_frame_qwen_vl,
    blank_frame_needs_grid=True,
    model_types=("qwen2_vl",),
    processor_class="Qwen2VLProcessor",
    video_processors=torch_video_processors,
    vision_flops=vision_flops_qwen_vl,
    lmms=LmmsWrapper(
        model_id="sharp_qwen2_vl",
        simple="lmms_eval.models.simple.qwen2_vl:Qwen2_VL",
        chat=None,
        default_pretrained="Qwen/Qwen2-VL-7B-Instruct",
    ),
    tiny=TinyModel(
        build=tiny.builder("Qwen2VLForConditionalGeneration", lambda n: tiny_qwen_vl_config("qwen2_vl", n)),
        inputs=tiny_inputs_qwen_vl,
    ),
)

QWEN2_5_VL = ModelAdapter(
    name="qwen2_5_vl",
    class_names=("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel"),
    decoder_paths=_QWEN_PATHS,
    locate=locate_qwen_vl,
    blank_frame=blank_frame_qwen_vl,
    blank_frame_needs_grid=True,
    model_types=("qwen2_5_vl",),
    processor_class="Qwen2_5_VLProcessor",
    video_processors=torch_video_processors,
    vision_flops=vision_flops_qwen_vl,
    lmms=LmmsWrapper(
        model_id="sharp_qwen2_5_vl",
        simple="lmms_eval.models.simple.qwen2_5_vl:Qwen2_5_VL",
        chat="lmms_eval.models.chat.qwen2_5_vl:Qwen2_5_VL",
        default_pretrained="Qwen/Qwen2.5-VL-7B-Instruct",
    ),
    tiny=TinyModel(
        build=tiny.builder("Qwen2_5_VLForConditionalGeneration", lambda n: tiny_qwen_vl_config("qwen2_5_vl", n)),
        inputs=tiny_inputs_qwen_vl,
    ),
)
