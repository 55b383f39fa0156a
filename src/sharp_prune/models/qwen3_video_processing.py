"""Qwen3-VL's video processor without torchvision (Qwen3-VL and Qwen3-VL-MoE checkpoints).

transformers' `Qwen3VLVideoProcessor` resizes with torchvision (its `resize` calls the torchvision backend's),
so where torchvision cannot load no Qwen3-VL processor can be built. This class follows the official
processor (`transformers.models.qwen3_vl.video_processing_qwen3_vl`) step by step, with torch ops in place of
torchvision's; what it shares with Qwen2-VL's port (resize kernel, fused rescale + normalise, patch layout) is
`sharp_prune.models.qwen_video_processing.QwenVLVideoOps`:

1. sampling (on by default, ``do_sample_frames=True``): ``num_frames`` as given, or ``int(total / video fps *
   fps)`` (fps default 2) clamped to [min_frames (4), max_frames (768), total], or every frame (at least
   min_frames) when neither is set; indices ``linspace(0, total - 1, n).round()``, kept in the returned
   metadata's ``frames_indices`` (the processor's ``<t seconds>`` timestamps are the mean time of each temporal
   patch's frames: ``frames_indices`` / the video's fps, `Qwen3VLProcessor._calculate_timestamps`);
2. resize: each video to ``smart_resize(T, H, W, temporal_factor, factor=patch_size * merge_size)``, whose
   pixel bounds [size.shortest_edge, size.longest_edge] count the whole video (frames rounded to the temporal
   patch x height x width), with the per-frame cap of ``cap_pixels_per_frame``; bicubic, antialiased;
3. rescale by 1/255 and normalise with mean = std = 0.5 (fused);
4. patch layout: frames padded to a multiple of ``temporal_patch_size`` with the last one, then flattened to
   [t * h * w, C * temporal_patch_size * patch_size^2], each merge window's patches consecutive (as Qwen2-VL).

It is used only when torchvision is missing (`sharp_prune.models.loading.load_processor`); where torchvision
loads, transformers' own class is. `tests/test_qwen3_video_processing.py` checks it on fixed frames against
values worked out from these steps, and against the official module's torch-free parts (sampling, sizes,
patch layout), which import without torchvision.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, PILImageResampling, SizeDict
from transformers.processing_utils import VideosKwargs

from .qwen_video_processing import MAX_ASPECT_RATIO, QwenVLVideoOps

logger = logging.getLogger(__name__)


def smart_resize(
    num_frames: int,
    height: int,
    width: int,
    temporal_factor: int = 2,
    factor: int = 32,
    min_pixels: int = 128 * 32 * 32,
    max_pixels: int = 32 * 32 * 768,
) -> tuple[int, int]:
    """The (height, width) Qwen3-VL resizes a video's frames to: multiples of `factor`, the aspect ratio kept as
    closely as possible, and the whole video's pixels (frames rounded to `temporal_factor`) within
    [min_pixels, max_pixels].

    Unlike Qwen2-VL's, frames thinner than `factor` are first scaled up to it, and the bounds count all frames.
    """
    if num_frames < temporal_factor:
        raise ValueError(f"t:{num_frames} must be larger than temporal_factor:{temporal_factor}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        ratio = max(height, width) / min(height, width)
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {ratio}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)  # the frame count itself, as the official
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def max_video_pixels(
    size: Any, num_frames: int, factor: int, max_video_tokens: int, cap_pixels_per_frame: bool | None
) -> int:
    """The whole video's pixel cap: `size["longest_edge"]`, or with `cap_pixels_per_frame` (qwen-vl-utils' rule)
    per frame min(max_video_tokens patches of factor^2, an even share of longest_edge), floored at 1.05 x
    shortest_edge, times the frames."""
    longest, shortest = size["longest_edge"], size["shortest_edge"]
    if not cap_pixels_per_frame:
        return longest
    per_frame = max(min(max_video_tokens * factor * factor, longest // num_frames), int(shortest * 1.05))
    return per_frame * num_frames


class Qwen3VLVideoProcessorKwargs(VideosKwargs, total=False):
    """The Qwen3-VL options on top of transformers' video processor options (same names as the official ones;
    no ``min_pixels`` / ``max_pixels``: Qwen3-VL's bounds are ``size``)."""

    patch_size: int
    temporal_patch_size: int
    merge_size: int
    min_frames: int
    max_frames: int
    cap_pixels_per_frame: bool
    max_video_tokens: int


class Qwen3VLVideoProcessor(QwenVLVideoOps):
    """Qwen3-VL's video processor on torch ops only (see the module docstring); same name, options, defaults
    and outputs (``pixel_values_videos``, ``video_grid_thw``, and the sampled frames' ``video_metadata``, which
    `Qwen3VLProcessor` asks for) as transformers' class."""

    resample = PILImageResampling.BICUBIC
    size = {"shortest_edge": 128 * 32 * 32, "longest_edge": 32 * 32 * 768}
    image_mean = IMAGENET_STANDARD_MEAN  # 0.5, 0.5, 0.5
    image_std = IMAGENET_STANDARD_STD
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    patch_size = 16
    temporal_patch_size = 2
    merge_size = 2
    min_frames = 4
    max_frames = 768
    do_sample_frames = True
    cap_pixels_per_frame = None
    max_video_tokens = 768
    valid_kwargs = Qwen3VLVideoProcessorKwargs
    model_input_names = ["pixel_values_videos", "video_grid_thw"]
    max_image_size = {"longest_edge": 28 * 28 * 2 * 30000}
    max_duration = None
    num_frames = None
    fps = 2

    def sample_frames(
        self, metadata: Any, num_frames: int | None = None, fps: float | None = None, **kwargs: Any
    ) -> np.ndarray:
        """Indices of the frames to keep: `num_frames` as given, or `fps` per second within
        [min_frames, max_frames, total], or every frame (see the module docstring); ``linspace(...).round()``.

        The bounds are the processor's own (`self.min_frames`, `self.max_frames`), as in the official class.
        """
        if fps is not None and num_frames is not None:
            raise ValueError("`num_frames` and `fps` are mutually exclusive arguments, please use only one!")
        total = metadata.total_num_frames
        fps = fps if fps is not None else self.fps
        if num_frames is None and fps is not None:
            if metadata.fps is None:  # the official default, with its warning
                metadata.fps = 24
                logger.warning(
                    "Asked to sample `fps` frames per second but the video metadata has no fps; defaulting to "
                    "fps=24. Pass `video_metadata` for accurate sampling and timestamps."
                )
            num_frames = int(total / metadata.fps * fps)
            num_frames = min(max(num_frames, self.min_frames), self.max_frames, total)
        if num_frames is None:
            num_frames = min(max(total, self.min_frames), self.max_frames)
        return np.linspace(0, total - 1, num_frames).round().astype(int)

    def resized_size(
        self, video: torch.Tensor, size: SizeDict, factor: int, temporal_patch_size: int, cap_pixels_per_frame: Any
    ) -> tuple[int, int]:
        """Qwen3-VL's `smart_resize` of the whole video (all its frames count towards the pixel bounds)."""
        frames = video.shape[0]
        max_pixels = max_video_pixels(size, frames, factor, self.max_video_tokens, cap_pixels_per_frame)
        return smart_resize(frames, *video.shape[-2:], temporal_patch_size, factor, size.shortest_edge, max_pixels)

    def get_num_of_video_patches(
        self, num_frames: int, height: int, width: int, videos_kwargs: dict[str, Any] | None = None
    ) -> int:
        """How many patches a video of this size becomes (the processor's token count before merging)."""
        videos_kwargs = videos_kwargs or {}
        size = videos_kwargs.get("size") or self.size
        patch_size = videos_kwargs.get("patch_size") or self.patch_size
        merge_size = videos_kwargs.get("merge_size") or self.merge_size
        temporal = videos_kwargs.get("temporal_patch_size") or self.temporal_patch_size
        cap = videos_kwargs.get("cap_pixels_per_frame") or self.cap_pixels_per_frame
        factor = patch_size * merge_size
        max_pixels = max_video_pixels(size, num_frames, factor, self.max_video_tokens, cap)
        resized = smart_resize(num_frames, height, width, temporal, factor, size["shortest_edge"], max_pixels)
        return -(-num_frames // temporal) * (resized[0] // patch_size) * (resized[1] // patch_size)


__all__ = ["Qwen3VLVideoProcessor", "max_video_pixels", "smart_resize"]
