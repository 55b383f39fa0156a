"""VideoLLaMA3's video processor without torchvision (`video_llama_3` checkpoints).

transformers' `VideoLlama3VideoProcessor` module imports torchvision at the top, so where torchvision cannot load
no VideoLLaMA3 processor can be built. This class is the official processor
(`transformers.models.video_llama_3.video_processing_video_llama_3`) step by step, with the torch resize of
`TorchVideoOps` (sharp_prune.models.processors) in place of torchvision's:

1. sampling (off by default, ``do_sample_frames=False``: every frame): ``num_frames`` rounded to the temporal
   patch (1), or ``fps`` frames per second clamped to [min_frames (4), max_frames (180), total]; indices
   ``arange(0, total, total / n)`` truncated, kept in the metadata's ``frames_indices`` (the processor writes
   ``Time {t:.1f}s:`` before each frame from them);
2. resize: each frame to ``smart_resize(H, W, factor=patch_size * merge_size)`` (Qwen2-VL's rule) within
   [size.shortest_edge, size.longest_edge // T] pixels: the upper bound is shared by the video's frames;
   bicubic, antialiased;
3. rescale by 1/255 and normalise with mean = std = 0.5 (fused);
4. patch layout (Qwen2-VL's, temporal patch 1): [T * h * w, C * patch_size^2], each merge window's patches
   consecutive; ``video_grid_thw`` = (T, h, w) in patches and ``video_merge_sizes`` = merge_size per video;
5. Differential Frame Pruning (``use_token_compression``, on by default): ``video_compression_mask``, one bool
   per merged token, keeps every token of a video's first frame and, in later frames, the tokens whose
   normalised pixels' mean absolute change from the previous frame, x 255, exceeds 0.1 (at least one token a
   frame). The model keeps only those tokens, so the processor writes frames of different lengths (see
   `sharp_prune.models.video_llama_3`).

The resize is the one step that is not transformers' code; `tests/test_glm46v_video_llama_3_processors.py` runs
transformers' own module (torch's resize kernel standing in for torchvision's) against this class, and checks the
steps by hand. Used only when torchvision is missing (`sharp_prune.models.loading.load_processor`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, PILImageResampling, SizeDict
from transformers.processing_utils import VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import group_videos_by_shape, reorder_videos

from .processors import TorchVideoOps


class VideoLlama3VideoProcessorInitKwargs(VideosKwargs, total=False):
    """VideoLLaMA3's options on top of transformers' video processor options (the official names)."""

    min_pixels: int
    max_pixels: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    min_frames: int
    max_frames: int
    use_token_compression: bool | None


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 14 * 14 * 4 * 1280
) -> tuple[int, int]:
    """The (height, width) a frame is resized to: multiples of `factor`, the pixel count within
    [min_pixels, max_pixels], the aspect ratio kept as closely as possible (transformers' VideoLLaMA3 rule)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


class VideoLlama3VideoProcessor(TorchVideoOps, BaseVideoProcessor):
    """transformers' VideoLlama3VideoProcessor on torch ops (see the module docstring): same name, options,
    defaults and outputs (``pixel_values_videos``, ``video_grid_thw``, ``video_merge_sizes``,
    ``video_compression_mask`` and the sampled frames' ``video_metadata``)."""

    resample = PILImageResampling.BICUBIC
    size = {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}
    image_mean = IMAGENET_STANDARD_MEAN  # 0.5, 0.5, 0.5
    image_std = IMAGENET_STANDARD_STD
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    patch_size = 14
    temporal_patch_size = 1
    merge_size = 2
    min_frames = 4
    max_frames = 180
    do_sample_frames = False  # transformers' default (for backward compatibility)
    valid_kwargs = VideoLlama3VideoProcessorInitKwargs
    model_input_names = ["pixel_values_videos", "video_grid_thw", "video_merge_sizes", "video_compression_mask"]
    use_token_compression = True
    return_metadata = True

    def __init__(self, **kwargs: Any) -> None:
        # as transformers: min_pixels / max_pixels, when given, set size's shortest / longest edge
        size = kwargs.pop("size", None)
        size = dict(self.size) if size is None else size
        if (min_pixels := kwargs.pop("min_pixels", None)) is not None:
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
            warnings.warn(
                "Passing `min_pixels` and `max_pixels` to a processor call is deprecated and will be removed in v5.23. "
                "Pass in `size={'longest_edge': xxx, 'shortest_edge': xxx} to override the target size.`",
                FutureWarning,
                stacklevel=2,
            )
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
        """Indices of `num_frames` frames (rounded to the temporal patch), or of `fps` frames per second within
        [min_frames, max_frames] and the video, evenly spaced from frame 0; every frame when neither is set."""
        if fps is not None and num_frames is not None:
            raise ValueError("`num_frames` and `fps` are mutually exclusive arguments, please use only one!")
        num_frames = num_frames if num_frames is not None else self.num_frames
        fps = fps if fps is not None else self.fps
        temporal_patch_size = temporal_patch_size if temporal_patch_size is not None else self.temporal_patch_size
        min_frames = min_frames if min_frames is not None else self.min_frames
        max_frames = max_frames if max_frames is not None else self.max_frames
        total_num_frames = metadata.total_num_frames

        if num_frames is not None:
            num_frames = round(num_frames / temporal_patch_size) * temporal_patch_size
        elif fps is not None:
            if metadata is None or metadata.fps is None:
                raise ValueError(
                    "Asked to sample `fps` frames per second but no video metadata was provided which is required "
                    "when sampling with `fps`. Please pass in `VideoMetadata` object or use a fixed `num_frames` per "
                    "input video"
                )
            max_frames = math.floor(min(max_frames, total_num_frames) / temporal_patch_size) * temporal_patch_size
            num_frames = total_num_frames / metadata.fps * fps
            num_frames = min(max(num_frames, min_frames), max_frames, total_num_frames)
            num_frames = math.floor(num_frames / temporal_patch_size) * temporal_patch_size

        if num_frames is not None and num_frames > total_num_frames:
            raise ValueError(
                f"Video can't be sampled. The inferred `num_frames={num_frames}` exceeds "
                f"`total_num_frames={total_num_frames}`. Decrease `num_frames` or `fps` for sampling."
            )
        if num_frames is not None:
            return torch.arange(0, total_num_frames, total_num_frames / num_frames).int()
        return torch.arange(0, total_num_frames).int()

    def resize(  # type: ignore[override]
        self, videos: torch.Tensor, size: SizeDict, resample: Any, factor: int, **kwargs: Any
    ) -> torch.Tensor:
        """Each frame to `smart_resize` within [shortest_edge, longest_edge // frames] pixels."""
        if not size.shortest_edge or not size.longest_edge:
            raise ValueError(f"`size` dict must contain 'shortest_edge' and 'longest_edge' keys but got {size}.")
        height, width = videos.shape[-2:]
        resized_height, resized_width = smart_resize(
            height,
            width,
            factor=factor,
            min_pixels=size.shortest_edge,
            max_pixels=size.longest_edge // videos.shape[1],  # the video's frames share the upper bound
        )
        return TorchVideoOps.resize(self, videos, SizeDict(height=resized_height, width=resized_width), resample)

    def patchify(
        self, videos: torch.Tensor, patch_size: int, merge_size: int, temporal_patch_size: int
    ) -> tuple[torch.Tensor, int, int, int]:
        """[B, T, C, H, W] -> [B, t * h * w, C * temporal_patch_size * patch_size^2]: temporal patch, merge
        window (row-major), the patches inside the window; frames padded to the temporal patch with the last."""
        batch_size, num_frames, channel, resized_height, resized_width = videos.shape
        if pad := -num_frames % temporal_patch_size:
            repeats = videos[:, -1:].expand(-1, pad, -1, -1, -1)
            videos = torch.cat((videos, repeats), dim=1)
            num_frames += pad
        grid_t = num_frames // temporal_patch_size
        grid_h, grid_w = resized_height // patch_size, resized_width // patch_size
        patches = videos.view(
            batch_size,
            grid_t,
            temporal_patch_size,
            channel,
            grid_h // merge_size,
            merge_size,
            patch_size,
            grid_w // merge_size,
            merge_size,
            patch_size,
        )
        patches = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
        flatten_patches = patches.reshape(
            batch_size, grid_t * grid_h * grid_w, channel * temporal_patch_size * patch_size * patch_size
        )
        return flatten_patches, grid_t, grid_h, grid_w

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
        use_token_compression: bool | None = None,
        return_tensors: Any = None,
        **kwargs: Any,
    ) -> BatchFeature:
        grouped_videos, grouped_videos_index = group_videos_by_shape(videos)
        resized_videos_grouped = {}
        for shape, stacked_videos in grouped_videos.items():
            if do_resize:
                stacked_videos = self.resize(
                    videos=stacked_videos, size=size, resample=resample, factor=patch_size * merge_size
                )
            resized_videos_grouped[shape] = stacked_videos
        resized_videos = reorder_videos(resized_videos_grouped, grouped_videos_index)

        # grouped again: the resize may give videos of one input size different sizes
        grouped_videos, grouped_videos_index = group_videos_by_shape(resized_videos)
        processed_videos_grouped = {}
        processed_grids = {}
        for shape, stacked_videos in grouped_videos.items():
            stacked_videos = self.rescale_and_normalize(
                stacked_videos, do_rescale, rescale_factor, do_normalize, image_mean, image_std
            )
            patches, grid_t, grid_h, grid_w = self.patchify(
                stacked_videos, patch_size=patch_size, merge_size=merge_size, temporal_patch_size=temporal_patch_size
            )
            processed_videos_grouped[shape] = patches
            processed_grids[shape] = [[grid_t, grid_h, grid_w]] * len(stacked_videos)

        processed_videos = reorder_videos(processed_videos_grouped, grouped_videos_index)
        processed_grids = reorder_videos(processed_grids, grouped_videos_index)
        pixel_values_videos = torch.cat(processed_videos, dim=0)
        video_grid_thw = torch.tensor(processed_grids)
        video_merge_sizes = torch.full(
            (video_grid_thw.size(0),), merge_size, dtype=video_grid_thw.dtype, device=video_grid_thw.device
        )
        if use_token_compression:
            video_compression_mask = self._get_compression_mask(
                pixel_values_videos=pixel_values_videos,
                video_grid_thw=video_grid_thw,
                video_merge_sizes=video_merge_sizes,
            )
        else:
            num_video_tokens = video_grid_thw.prod(-1).sum() // (merge_size**2)
            video_compression_mask = torch.ones(
                (num_video_tokens,), dtype=torch.bool, device=pixel_values_videos.device
            )
        return BatchFeature(
            data={
                "pixel_values_videos": pixel_values_videos,
                "video_grid_thw": video_grid_thw,
                "video_merge_sizes": video_merge_sizes,
                "video_compression_mask": video_compression_mask,
            },
            tensor_type=return_tensors,
        )

    def get_num_of_video_patches(
        self, num_frames: int, height: int, width: int, videos_kwargs: dict | None = None
    ) -> int:
        """Patches of a video of this size (before Differential Frame Pruning, which depends on the pixels)."""
        videos_kwargs = videos_kwargs if videos_kwargs is not None else {}
        size = videos_kwargs.get("size", None) or self.size
        size = {"shortest_edge": size["shortest_edge"], "longest_edge": size["longest_edge"] // num_frames}
        patch_size = videos_kwargs.get("patch_size") or self.patch_size
        merge_size = videos_kwargs.get("merge_size") or self.merge_size
        temporal_patch_size = videos_kwargs.get("temporal_patch_size") or self.temporal_patch_size
        resized_height, resized_width = smart_resize(
            height,
            width,
            patch_size * merge_size,
            min_pixels=size["shortest_edge"],
            max_pixels=size["longest_edge"],
        )
        grid_h, grid_w = resized_height // patch_size, resized_width // patch_size
        grid_t = (num_frames + -num_frames % temporal_patch_size) // temporal_patch_size
        return grid_t * grid_h * grid_w

    def _get_compression_mask(
        self,
        pixel_values_videos: torch.Tensor,
        video_grid_thw: torch.Tensor,
        video_merge_sizes: torch.Tensor,
        threshold: float | None = 0.1,
        min_tokens: int | None = 1,
    ) -> torch.Tensor:
        """Differential Frame Pruning: per merged token, keep it (True) when it is in a video's first frame or its
        pixels' mean absolute change from the previous frame, x 255, exceeds `threshold`; a frame that would keep
        fewer than `min_tokens` keeps its first `min_tokens`. A one-frame video keeps every token."""
        videos = pixel_values_videos.split(video_grid_thw.prod(dim=1).tolist(), dim=0)
        compression_masks = []
        for images, grid_size, merge_size in zip(videos, video_grid_thw, video_merge_sizes, strict=True):
            t, h, w = grid_size
            if t == 1:
                num_tokens = images.size(0) // (merge_size**2)
                compression_masks.append(torch.ones((num_tokens,), dtype=torch.bool, device=images.device))
            else:
                images = images.view(t, (h // merge_size) * (w // merge_size), -1)
                pixel_diff = images[1:] - images[:-1]
                pixel_diff = torch.abs(pixel_diff).mean(dim=-1) * 255
                pixel_diff = torch.cat([torch.full_like(pixel_diff[0:1], threshold + 1), pixel_diff], dim=0)
                mask = pixel_diff > threshold
                padding_ids = torch.nonzero(mask.sum(dim=1) < min_tokens)[:, 0]
                mask[padding_ids, :min_tokens] = 1
                compression_masks.append(mask.flatten())
        return torch.cat(compression_masks)


__all__ = ["VideoLlama3VideoProcessor", "smart_resize"]
