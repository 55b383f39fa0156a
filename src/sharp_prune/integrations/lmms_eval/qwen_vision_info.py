"""`process_vision_info` for lmms-eval's Qwen-VL wrappers where qwen-vl-utils cannot load (it imports torchvision).

The upstream Qwen wrappers read their videos through qwen-vl-utils' `process_vision_info`. Where torchvision is
missing, the sharp-prune wrappers put this function in its place; it follows qwen-vl-utils' video rules:

- frames: ``nframes`` rounded to an even number, or ``fps`` (default 2) frames per second, clamped to
  [min_frames (4), max_frames (768), total] and floored to an even number;
- indices ``linspace(start, end, n).round()`` over the whole video (or ``video_start``..``video_end`` seconds);
- size: ``smart_resize`` to multiples of ``2 * image_patch_size`` within [min_pixels, max_pixels], max_pixels
  capped by an even share of ``MODEL_SEQ_LEN`` tokens (env, default 128000); bicubic, antialiased, float output;
- metadata (fps, frame indices, total frames) and the sampled fps, as qwen-vl-utils returns them.

Frames are decoded with PyAV. A video that cannot be read raises `VideoError` (the document fails alone).
Images and lists of frames are not handled here (they need qwen-vl-utils): a clear error says so.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch

from ...errors import VideoError
from ...models.processors import interpolate_frames
from ...models.qwen_video_processing import smart_resize
from ...video import probe_video, read_video_at

logger = logging.getLogger(__name__)

FPS = 2.0
FRAME_FACTOR = 2
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
SPATIAL_MERGE_SIZE = 2
IMAGE_MIN_TOKENS = 4
IMAGE_MAX_TOKENS = 16384
VIDEO_MIN_TOKENS = 128
VIDEO_MAX_TOKENS = 768


def frame_count(element: dict[str, Any], total_frames: int, video_fps: float) -> int:
    """How many frames qwen-vl-utils samples for a video element (its `smart_nframes`)."""
    if "fps" in element and "nframes" in element:
        raise VideoError("a video element takes either `fps` or `nframes`, not both.")
    if "nframes" in element:
        count = round(element["nframes"] / FRAME_FACTOR) * FRAME_FACTOR
    else:
        fps = element.get("fps", FPS)
        min_frames = math.ceil(element.get("min_frames", FPS_MIN_FRAMES) / FRAME_FACTOR) * FRAME_FACTOR
        max_frames = element.get("max_frames", min(FPS_MAX_FRAMES, total_frames))
        max_frames = math.floor(max_frames / FRAME_FACTOR) * FRAME_FACTOR
        wanted = min(max(total_frames / video_fps * fps, min_frames), max_frames, total_frames)
        count = math.floor(wanted / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= count <= total_frames:
        raise VideoError(
            f"the video has {total_frames} frames and {count} were asked (Qwen-VL samples an even number, at least "
            f"{FRAME_FACTOR}); use a video with at least {FRAME_FACTOR} frames, or fewer frames (max_num_frames)."
        )
    return count


def frame_range(element: dict[str, Any], total_frames: int, video_fps: float) -> tuple[int, int]:
    """First and last frame index of ``video_start``..``video_end`` (seconds), or of the whole video."""
    start_s, end_s = element.get("video_start"), element.get("video_end")
    if start_s is None and end_s is None:
        return 0, total_frames - 1
    duration = total_frames / video_fps
    start = math.ceil(max(0.0, min(start_s, duration)) * video_fps) if start_s is not None else 0
    end = total_frames - 1
    if end_s is not None:
        end = min(math.floor(max(0.0, min(end_s, duration)) * video_fps), total_frames - 1)
    if start >= end:
        raise VideoError(f"video_start={start_s}s .. video_end={end_s}s selects no frames of a {duration:.2f}s video.")
    return start, end


def fetch_video(element: dict[str, Any], image_patch_size: int = 14) -> tuple[torch.Tensor, dict[str, Any], float]:
    """(frames [T, 3, H, W] float32 in 0..255, metadata, sampled fps) of one video element."""
    path = element["video"]
    if not isinstance(path, (str, os.PathLike)):
        raise VideoError(
            "lists of frames as a video need qwen-vl-utils, which needs torchvision; pass a video file, or install "
            "the torchvision build that matches your torch."
        )
    path = str(path).removeprefix("file://")
    info = probe_video(path)
    video_fps = info.fps or FPS  # a stream without a rate: qwen-vl-utils would fail; take the default rate
    start, end = frame_range(element, info.total_frames, video_fps)
    count = frame_count(element, end - start + 1, video_fps)
    indices = torch.linspace(start, end, count).round().long().tolist()
    frames = torch.from_numpy(read_video_at(path, indices).frames).permute(0, 3, 1, 2)
    sample_fps = count / max(end - start + 1, 1e-6) * video_fps

    factor = image_patch_size * SPATIAL_MERGE_SIZE
    min_pixels = element.get("min_pixels", VIDEO_MIN_TOKENS * factor * factor)
    total_pixels = element.get("total_pixels", int(float(os.environ.get("MODEL_SEQ_LEN", 128000))) * factor**2 * 0.9)
    max_pixels = max(
        min(VIDEO_MAX_TOKENS * factor * factor, total_pixels / count * FRAME_FACTOR), int(min_pixels * 1.05)
    )
    if element.get("max_pixels", max_pixels) > max_pixels:
        logger.warning("The given max_pixels[%s] exceeds limit[%s].", element["max_pixels"], max_pixels)
    max_pixels = min(element.get("max_pixels", max_pixels), max_pixels)
    if "resized_height" in element and "resized_width" in element:
        height, width = smart_resize(
            element["resized_height"],
            element["resized_width"],
            factor,
            IMAGE_MIN_TOKENS * factor * factor,  # qwen-vl-utils' image bounds: it calls smart_resize without any
            IMAGE_MAX_TOKENS * factor * factor,
            rule="qwen-vl-utils",
        )
    else:
        height, width = smart_resize(*frames.shape[-2:], factor, min_pixels, max_pixels, rule="qwen-vl-utils")
    video = interpolate_frames(frames, (height, width), "bicubic", antialias=True).float()
    metadata = {
        "fps": video_fps,
        "frames_indices": indices,
        "total_num_frames": end - start + 1,
        "video_backend": "pyav",
    }
    return video, metadata, sample_fps


def _vision_elements(conversations: list[Any]) -> list[dict[str, Any]]:
    batch = [conversations] if conversations and isinstance(conversations[0], dict) else conversations
    elements = []
    for conversation in batch:
        for message in conversation:
            if not isinstance(message.get("content"), list):
                continue
            for element in message["content"]:
                kinds = ("image", "image_url", "video")
                if any(k in element for k in kinds) or element.get("type", "text") in kinds:
                    elements.append(element)
    return elements


def process_vision_info(
    conversations: list[Any],
    return_video_kwargs: bool = False,
    return_video_metadata: bool = False,
    image_patch_size: int = 14,
) -> tuple[Any, ...]:
    """qwen-vl-utils' `process_vision_info` for videos: (images, videos[, video kwargs]), as it returns them."""
    videos, sample_fps = [], []
    for element in _vision_elements(conversations):
        if "video" not in element:
            raise VideoError(
                "images in a Qwen-VL prompt need qwen-vl-utils, which needs torchvision; install the torchvision "
                "build that matches your torch, or evaluate video tasks only."
            )
        video, metadata, fps = fetch_video(element, image_patch_size)
        videos.append((video, metadata) if return_video_metadata else video)
        sample_fps.append(fps)
    video_kwargs: dict[str, Any] = {"do_sample_frames": False}
    if not return_video_metadata:
        video_kwargs["fps"] = sample_fps
    result = (None, videos or None)
    return (*result, video_kwargs) if return_video_kwargs else result


__all__ = ["fetch_video", "frame_count", "frame_range", "process_vision_info"]
