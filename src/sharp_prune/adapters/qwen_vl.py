"""Qwen2-VL and Qwen2.5-VL: one "frame" is one temporal patch (2 frames) of h * w / merge^2 tokens.

Frames are found from `video_grid_thw` when the call has it, else from the 3-D M-RoPE `position_ids`
(`generate` encodes the video before the prefill and passes positions, not grids): within a run of
video tokens, a frame starts wherever the (height, width) position returns to the run's top-left.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..hf_protocol import ModelCall
from ..layout import VisualLayout
from .base import ModelAdapter, black_pixels, input_ids_or_raise, mixed_frame_sizes


def _frames_from_grids(
    is_video: torch.Tensor, grid_thw: torch.Tensor, merge: int
) -> tuple[torch.Tensor, tuple[int, int] | None]:
    videos = [(int(t), int(h) // merge, int(w) // merge) for t, h, w in grid_thw.tolist()]
    frame_map = torch.full(is_video.shape, -1, dtype=torch.long, device=is_video.device)
    next_video = 0
    for row in range(is_video.shape[0]):
        pos = is_video[row].nonzero().flatten()
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
    if not bool(is_video.any()):
        return None
    grid_thw = call.video_grid_thw  # None under generate, which encodes the video before the prefill
    position_ids = call.position_ids
    if grid_thw is not None:
        merge = model.config.vision_config.spatial_merge_size
        frame_map, grid = _frames_from_grids(is_video, grid_thw, merge)
    elif isinstance(position_ids, torch.Tensor) and position_ids.ndim == 3 and position_ids.shape[0] in (3, 4):
        frame_map, grid = _frames_from_positions(is_video, position_ids)
    else:
        raise InputError(
            "qwen_vl: video tokens found but neither `video_grid_thw` nor 3-D `position_ids`; pass the "
            "processor's outputs to the model (or to generate)."
        )
    return VisualLayout.from_frame_map(frame_map, grid=grid)


# Qwen2-VL / Qwen2.5-VL processors normalise with OpenAI CLIP's mean and std.
_BLACK = black_pixels((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def blank_frame_qwen_vl(model: nn.Module, layout: VisualLayout, blank_token_id: int | None) -> torch.Tensor:
    """Vision tower + merger on one black temporal patch of the layout's grid: [h * w, D]."""
    if layout.grid is None:
        raise InputError(mixed_frame_sizes("qwen_vl"))
    vision = model.config.vision_config
    merge, patch, temporal = vision.spatial_merge_size, vision.patch_size, vision.temporal_patch_size
    h, w = layout.grid[0] * merge, layout.grid[1] * merge
    base = model.model if hasattr(model, "model") else model
    param = next(base.visual.parameters())
    # One patch = channels x temporal x patch x patch values, flattened channel-major.
    patch_vector = _BLACK.to(param.device, param.dtype).repeat_interleave(temporal * patch * patch)
    pixels = patch_vector.expand(h * w, -1).contiguous()
    grid = torch.tensor([[1, h, w]], device=param.device)
    with torch.no_grad():
        features = base.get_video_features(pixel_values_videos=pixels, video_grid_thw=grid).pooler_output
    return features[0]


_QWEN_PATHS = ("model.language_model", "language_model")

QWEN2_VL = ModelAdapter(
    name="qwen2_vl",
    class_names=("Qwen2VLForConditionalGeneration", "Qwen2VLModel"),
    decoder_paths=_QWEN_PATHS,
    locate=locate_qwen_vl,
    position_layout="mrope",
    blank_frame=blank_frame_qwen_vl,
    blank_frame_needs_grid=True,
)

QWEN2_5_VL = ModelAdapter(
    name="qwen2_5_vl",
    class_names=("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel"),
    decoder_paths=_QWEN_PATHS,
    locate=locate_qwen_vl,
    position_layout="mrope",
    blank_frame=blank_frame_qwen_vl,
    blank_frame_needs_grid=True,
)
