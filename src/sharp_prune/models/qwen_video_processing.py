"""Qwen2-VL's video processor without torchvision (Qwen2-VL and Qwen2.5-VL checkpoints).

transformers' `Qwen2VLVideoProcessor` module imports torchvision at the top, so where torchvision cannot load
(a CPU torch without its matching torchvision) no Qwen-VL processor can be built. This class follows the
official processor's steps, in its order, with torch ops in place of torchvision's:

1. sampling (only with ``do_sample_frames=True``): ``num_frames`` rounded to a multiple of the temporal patch,
   or ``fps`` frames per second clamped to [min_frames, max_frames]; indices ``arange(0, total, total / n)``;
2. resize: each video to ``smart_resize(H, W, factor=patch_size * merge_size)`` within
   [size.shortest_edge, size.longest_edge] pixels (the per-frame cap of ``cap_pixels_per_frame`` included),
   bicubic, antialiased (`torch.nn.functional.interpolate`, the kernel torchvision's tensor resize calls);
3. rescale by 1/255 and normalise with OpenAI CLIP's mean and std (fused, as the official processor does);
4. patch layout: frames padded to a multiple of ``temporal_patch_size`` by repeating the last one, then
   flattened to [t * h * w, C * temporal_patch_size * patch_size^2] with each merge window's patches
   consecutive; ``video_grid_thw`` = (t, h, w) in patches.

It is used only when torchvision is missing (`sharp_prune.models.loading.load_processor`); where torchvision
loads, transformers' own class is. `tests/test_qwen_video_processing.py` checks it on fixed frames against
values worked out from these steps, and against the official class wherever torchvision imports.

Steps 2 to 4 (resize each video to a size the subclass picks, rescale + normalise, patch layout) are
`QwenVLVideoOps`, which Qwen3-VL's port shares (`sharp_prune.models.qwen3_video_processing`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling, SizeDict
from transformers.processing_utils import VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor

from .processors import TorchVideoOps

MAX_ASPECT_RATIO = 200


def smart_resize(
    height: int,
    width: int,
    factor: int,
    min_pixels: int,
    max_pixels: int,
    rule: Literal["transformers", "qwen-vl-utils"] = "transformers",
) -> tuple[int, int]:
    """The (height, width) Qwen-VL resizes a frame to: both multiples of `factor`, the pixel count within
    [min_pixels, max_pixels], the aspect ratio kept as closely as possible.

    `rule` picks between the two reference versions, which differ only for frames thinner than `factor`:
    transformers floors a too-large size at `factor`; qwen-vl-utils floors the rounded size at `factor` first.
    """
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        ratio = max(height, width) / min(height, width)
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {ratio}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if rule == "qwen-vl-utils":
        h_bar, w_bar = max(factor, h_bar), max(factor, w_bar)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
        if rule == "transformers":
            h_bar, w_bar = max(factor, h_bar), max(factor, w_bar)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patchify(video: torch.Tensor, patch_size: int, merge_size: int, temporal_patch_size: int) -> torch.Tensor:
    """[T, C, H, W] -> [t * h * w, C * temporal_patch_size * patch_size^2] in Qwen-VL's order: temporal patch,
    then merge window (row-major), then the patches inside the window; frames padded with the last one."""
    if pad := -video.shape[0] % temporal_patch_size:
        video = torch.cat((video, video[-1:].expand(pad, -1, -1, -1)), dim=0)
    frames, channels, height, width = video.shape
    t, h, w = frames // temporal_patch_size, height // patch_size, width // patch_size
    patches = video.reshape(
        t,
        temporal_patch_size,
        channels,
        h // merge_size,
        merge_size,
        patch_size,
        w // merge_size,
        merge_size,
        patch_size,
    )
    # (t, h-window, w-window, h-in-window, w-in-window, channel, temporal, patch row, patch col)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(t * h * w, channels * temporal_patch_size * patch_size * patch_size)


class Qwen2VLVideoProcessorKwargs(VideosKwargs, total=False):
    """The Qwen-VL options on top of transformers' video processor options (same names as the official ones)."""

    min_pixels: int
    max_pixels: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    min_frames: int
    max_frames: int
    cap_pixels_per_frame: bool
    max_video_tokens: int


class QwenVLVideoOps(TorchVideoOps, BaseVideoProcessor):
    """What the Qwen-VL video processors share on torch ops: each video resized to `resized_size`, rescaled and
    normalised (fused), padded to the temporal patch and laid out in patches (`patchify`); outputs
    ``pixel_values_videos`` and ``video_grid_thw``. Subclasses give the defaults, frame sampling and sizes."""

    patch_size = 14
    temporal_patch_size = 2
    merge_size = 2
    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def resized_size(
        self, video: torch.Tensor, size: SizeDict, factor: int, temporal_patch_size: int, cap_pixels_per_frame: Any
    ) -> tuple[int, int]:
        """The (height, width) a [T, C, H, W] video is resized to: multiples of `factor` (patch x merge)."""
        raise NotImplementedError

    def _preprocess(
        self,
        videos: list[torch.Tensor],
        do_resize: bool,
        size: SizeDict,
        resample: Any,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: Any,
        image_std: Any,
        patch_size: int | None = None,
        temporal_patch_size: int | None = None,
        merge_size: int | None = None,
        cap_pixels_per_frame: bool | None = None,
        return_tensors: Any = None,
        **kwargs: Any,
    ) -> BatchFeature:
        patch_size = patch_size or self.patch_size
        merge_size = merge_size or self.merge_size
        temporal_patch_size = temporal_patch_size or self.temporal_patch_size
        factor = patch_size * merge_size
        if do_resize and (not size.shortest_edge or not size.longest_edge):
            raise ValueError(f"`size` must have 'shortest_edge' and 'longest_edge' (pixel bounds), got {size}.")
        all_patches, grids = [], []
        for video in videos:  # [T, C, H, W]; each video alone (the official batches equal shapes: same values)
            if do_resize:
                height, width = self.resized_size(video, size, factor, temporal_patch_size, cap_pixels_per_frame)
                video = self.resize(video, SizeDict(height=height, width=width), resample)
            video = self.rescale_and_normalize(video, do_rescale, rescale_factor, do_normalize, image_mean, image_std)
            t = -(-video.shape[0] // temporal_patch_size)
            grids.append([t, video.shape[-2] // patch_size, video.shape[-1] // patch_size])
            all_patches.append(patchify(video, patch_size, merge_size, temporal_patch_size))
        data = {"pixel_values_videos": torch.cat(all_patches, dim=0), "video_grid_thw": torch.tensor(grids)}
        return BatchFeature(data=data, tensor_type=return_tensors)


class Qwen2VLVideoProcessor(QwenVLVideoOps):
    """Qwen2-VL's video processor on torch ops only (see the module docstring); same name, options, defaults
    and outputs (``pixel_values_videos``, ``video_grid_thw``) as transformers' class."""

    resample = PILImageResampling.BICUBIC
    size = {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    patch_size = 14
    temporal_patch_size = 2
    merge_size = 2
    min_frames = 4
    max_frames = 768
    do_sample_frames = False
    cap_pixels_per_frame = None
    max_video_tokens = 128000
    valid_kwargs = Qwen2VLVideoProcessorKwargs
    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, **kwargs: Any) -> None:
        size = kwargs.pop("size", None)
        size = dict(self.size) if size is None else dict(size)
        if (min_pixels := kwargs.pop("min_pixels", None)) is not None:  # the older checkpoints' spelling
            size["shortest_edge"] = min_pixels
            size.pop("min_pixels", None)
        if (max_pixels := kwargs.pop("max_pixels", None)) is not None:
            size["longest_edge"] = max_pixels
            size.pop("max_pixels", None)
        super().__init__(size=size, **kwargs)

    def _standardize_kwargs(
        self, size: Any = None, min_pixels: int | None = None, max_pixels: int | None = None, **kwargs: Any
    ) -> dict:
        if min_pixels is not None or max_pixels is not None:
            size_dict = dict(size) if isinstance(size, (dict, SizeDict)) else {}
            if min_pixels is not None:
                size_dict["shortest_edge"] = min_pixels
            if max_pixels is not None:
                size_dict["longest_edge"] = max_pixels
            size = SizeDict(**size_dict)
        return super()._standardize_kwargs(size=size, **kwargs)

    def sample_frames(
        self,
        metadata: Any,
        temporal_patch_size: int | None = None,
        min_frames: int | None = None,
        max_frames: int | None = None,
        num_frames: int | None = None,
        fps: float | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Indices of the frames to keep: `num_frames` (rounded to the temporal patch) or `fps` per second."""
        if fps is not None and num_frames is not None:
            raise ValueError("`num_frames` and `fps` are mutually exclusive arguments, please use only one!")
        num_frames = num_frames if num_frames is not None else self.num_frames
        fps = fps if fps is not None else self.fps
        temporal = temporal_patch_size or self.temporal_patch_size
        min_frames = min_frames if min_frames is not None else self.min_frames
        max_frames = max_frames if max_frames is not None else self.max_frames
        total = metadata.total_num_frames
        if num_frames is not None:
            num_frames = round(num_frames / temporal) * temporal
        elif fps is not None:
            if metadata is None or metadata.fps is None:
                raise ValueError("sampling `fps` frames per second needs the video's metadata (its fps).")
            max_frames = math.floor(min(max_frames, total) / temporal) * temporal
            wanted = min(max(total / metadata.fps * fps, min_frames), max_frames, total)
            num_frames = math.floor(wanted / temporal) * temporal
        if num_frames is None:
            return torch.arange(0, total).int()
        if num_frames > total:
            raise ValueError(
                f"Video can't be sampled. The inferred `num_frames={num_frames}` exceeds `total_num_frames={total}`."
            )
        return torch.arange(0, total, total / num_frames).int()

    def _max_pixels(self, size: SizeDict, num_frames: int, factor: int, cap_pixels_per_frame: bool | None) -> int:
        """The per-frame pixel cap: `size.longest_edge`, and with `cap_pixels_per_frame` an even share of
        `max_video_tokens`' pixels (floored at 1.05 x `size.shortest_edge`), as qwen-vl-utils bounds a video."""
        if not cap_pixels_per_frame:
            return size.longest_edge
        total_pixels = int(self.max_video_tokens * factor * factor * 0.9)
        return max(
            min(size.longest_edge, total_pixels * self.temporal_patch_size // num_frames),
            int(size.shortest_edge * 1.05),
        )

    def resized_size(
        self, video: torch.Tensor, size: SizeDict, factor: int, temporal_patch_size: int, cap_pixels_per_frame: Any
    ) -> tuple[int, int]:
        """`smart_resize` of the frame size within [size.shortest_edge, the per-frame cap] pixels per frame."""
        max_pixels = self._max_pixels(size, video.shape[0], factor, cap_pixels_per_frame)
        return smart_resize(*video.shape[-2:], factor, size.shortest_edge, max_pixels)

    def get_num_of_video_patches(
        self, num_frames: int, height: int, width: int, videos_kwargs: dict[str, Any] | None = None
    ) -> int:
        """How many patches a video of this size becomes (the processor's token count before merging)."""
        videos_kwargs = videos_kwargs or {}
        size = videos_kwargs.get("size") or self.size
        patch_size = videos_kwargs.get("patch_size") or self.patch_size
        merge_size = videos_kwargs.get("merge_size") or self.merge_size
        temporal = videos_kwargs.get("temporal_patch_size") or self.temporal_patch_size
        resized_height, resized_width = smart_resize(
            height, width, patch_size * merge_size, size["shortest_edge"], size["longest_edge"]
        )
        return -(-num_frames // temporal) * (resized_height // patch_size) * (resized_width // patch_size)


__all__ = ["Qwen2VLVideoProcessor", "QwenVLVideoOps", "patchify", "smart_resize"]
