"""Qwen-VL's video path without torchvision: the torch-only `Qwen2VLVideoProcessor` and qwen-vl-utils' video
rules (`process_vision_info`), checked on fixed frames against values worked out from the official steps, and
against transformers' own processor wherever torchvision imports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sharp_prune as sp
from sharp_prune.models.qwen_video_processing import Qwen2VLVideoProcessor, smart_resize

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY = dict(patch_size=4, temporal_patch_size=2, merge_size=2)


def _torchvision_works() -> bool:
    from sharp_prune.integrations.lmms_eval.mixin import _torchvision_works

    return _torchvision_works()


def _pattern(frames: int, height: int, width: int) -> np.ndarray:
    """uint8 [T, H, W, 3]: value = 100 t + 30 c + (y * W + x) mod 10, so every pixel is traceable."""
    t, y, x, c = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    return (100 * t + 30 * c + (y * width + x) % 10).astype(np.uint8)


def _normalised(value: float, channel: int) -> float:
    return (value / 255 - CLIP_MEAN[channel]) / CLIP_STD[channel]


# ----------------------------------------------------------------------------------------------- smart_resize
@pytest.mark.parametrize(
    "size, factor, bounds, expected",
    [
        ((48, 64), 8, (3136, 3136), (56, 72)),  # 48 x 64 = 3072 < 3136: scaled up by sqrt(3136 / 3072), ceil to 8
        ((48, 64), 28, (3136, 3136), (56, 56)),  # nearest multiples of 28: 56 x 56 = 3136, within bounds
        ((1080, 1920), 28, (3136, 602112), (560, 1008)),  # scaled down by sqrt(1080 * 1920 / 602112), floor to 28
        ((56, 56), 8, (64, 4096), (56, 56)),  # already multiples of 8, within bounds
    ],
)
def test_smart_resize_by_hand(size, factor, bounds, expected):
    for rule in ("transformers", "qwen-vl-utils"):
        assert smart_resize(*size, factor, *bounds, rule=rule) == expected


def test_smart_resize_refuses_extreme_aspect_ratios():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(4, 1000, 28, 3136, 602112)


# ------------------------------------------------------------------------------------------- the processor
def test_patch_layout_and_normalisation_on_fixed_frames():
    """Two 8 x 8 frames (no resize: 8 is a multiple of patch 4 x merge 2): one temporal patch of 2 x 2 patches;
    rows in merge-window order, each row (channel, frame, patch row, patch column)."""
    processor = Qwen2VLVideoProcessor(**TINY, min_pixels=64, max_pixels=64)
    video = _pattern(2, 8, 8)
    out = processor(videos=[video], return_tensors="pt")
    assert out["video_grid_thw"].tolist() == [[1, 2, 2]]
    pixels = out["pixel_values_videos"]
    assert pixels.shape == (4, 3 * 2 * 4 * 4)
    for row, (ph, pw) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        for c in range(3):
            for t in range(2):
                for py in range(4):
                    for px in range(4):
                        value = _normalised(float(video[t, ph * 4 + py, pw * 4 + px, c]), c)
                        got = float(pixels[row, c * 32 + t * 16 + py * 4 + px])
                        assert got == pytest.approx(value, abs=1e-5), (row, c, t, py, px)


def test_an_odd_frame_count_is_padded_with_the_last_frame():
    processor = Qwen2VLVideoProcessor(**TINY, min_pixels=64, max_pixels=64)
    video = _pattern(3, 8, 8)
    out = processor(videos=[video], return_tensors="pt")
    assert out["video_grid_thw"].tolist() == [[2, 2, 2]]
    second = out["pixel_values_videos"][4:].reshape(4, 3, 2, 16)  # temporal patch 2: frames 2 and 2 (padded)
    assert torch.equal(second[:, :, 0], second[:, :, 1])
    expected = _normalised(float(video[2, 0, 0, 0]), 0)
    assert float(second[0, 0, 0, 0]) == pytest.approx(expected, abs=1e-5)


def test_resize_follows_smart_resize_and_the_token_count_matches():
    processor = Qwen2VLVideoProcessor(**TINY, min_pixels=3136, max_pixels=3136)
    out = processor(videos=[_pattern(4, 48, 64)], return_tensors="pt")
    assert out["video_grid_thw"].tolist() == [[2, 14, 18]]  # 56 x 72 pixels (see test_smart_resize_by_hand)
    assert out["pixel_values_videos"].shape[0] == 2 * 14 * 18
    assert processor.get_num_of_video_patches(4, 48, 64) == 2 * 14 * 18
    assert processor.get_num_of_video_patches(5, 48, 64) == 3 * 14 * 18


def test_min_and_max_pixels_at_call_time_and_frame_sampling():
    processor = Qwen2VLVideoProcessor(**TINY)
    out = processor(videos=[_pattern(2, 48, 64)], min_pixels=3136, max_pixels=3136, return_tensors="pt")
    assert out["video_grid_thw"].tolist() == [[1, 14, 18]]
    from transformers.video_utils import VideoMetadata

    metadata = VideoMetadata(total_num_frames=20, fps=10)
    # num_frames rounds to the temporal patch half to even, as Python's round (the official code's) does
    assert processor.sample_frames(metadata, num_frames=5).tolist() == [0, 5, 10, 15]  # 2.5 -> 2 patches
    assert processor.sample_frames(metadata, num_frames=7).tolist() == [0, 2, 5, 7, 10, 12, 15, 17]  # 3.5 -> 4
    assert processor.sample_frames(metadata, fps=2).tolist() == [0, 5, 10, 15]  # 2 s at 2 fps = 4 frames


def test_the_tiny_qwen_checkpoint_loads_this_processor_and_runs_pruned(tmp_path):
    from sharp_prune.models.loading import load_model
    from sharp_prune.testing import tiny_qwen_vl_checkpoint

    model, processor = load_model(tiny_qwen_vl_checkpoint(tmp_path / "q", "qwen2_5_vl"), device="cpu")
    if not _torchvision_works():
        assert type(processor.video_processor) is Qwen2VLVideoProcessor
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    video_metadata = [{"fps": 10.0, "total_num_frames": 4}]
    inputs = processor(text=prompt, videos=[_pattern(4, 48, 64)], video_metadata=video_metadata, return_tensors="pt")
    assert inputs["second_per_grid_ts"].tolist() == [pytest.approx(0.2)]  # temporal patch 2 / 10 fps
    handle = sp.apply(model, sp.PruneConfig(method="sharp", retention=0.25, layer=2))
    model.generate(**inputs, max_new_tokens=2, do_sample=False)
    visual = int(inputs["video_grid_thw"].prod()) // 4
    assert handle.last.num_visual == [visual] and handle.last.budget == [visual // 4]


@pytest.mark.skipif(not _torchvision_works(), reason="transformers' Qwen2-VL video processor needs torchvision")
@pytest.mark.parametrize("size, bounds, atol", [((8, 8), (64, 64), 1e-5), ((48, 64), (3136, 3136), 0.05)])
def test_same_outputs_as_the_official_processor(size, bounds, atol):
    """Exact where no resize happens; within a uint8 rounding step where frames are resized (torchvision's
    and torch's bicubic kernels may round a few pixels differently)."""
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor as Official

    video = np.random.default_rng(0).integers(0, 256, (5, *size, 3), dtype=np.uint8)
    options = dict(**TINY, min_pixels=bounds[0], max_pixels=bounds[1])
    ours = Qwen2VLVideoProcessor(**options)(videos=[video], return_tensors="pt")
    official = Official(**options)(videos=[video], return_tensors="pt", cap_pixels_per_frame=False)
    assert torch.equal(ours["video_grid_thw"], official["video_grid_thw"])
    torch.testing.assert_close(ours["pixel_values_videos"], official["pixel_values_videos"], atol=atol, rtol=0)


# ------------------------------------------------------------------------------- qwen-vl-utils' video rules
def test_frame_count_follows_qwen_vl_utils():
    from sharp_prune.integrations.lmms_eval.qwen_vision_info import frame_count

    assert frame_count({}, total_frames=12, video_fps=10) == 4  # 2.4 at 2 fps -> at least 4
    assert frame_count({}, total_frames=36, video_fps=10) == 6  # 7.2 -> floored to even
    assert frame_count({"nframes": 7}, total_frames=36, video_fps=10) == 8  # rounded to even
    assert frame_count({"fps": 10}, total_frames=9, video_fps=10) == 8  # capped by the video, even
    with pytest.raises(sp.VideoError, match="at least 2"):
        frame_count({"nframes": 8}, total_frames=1, video_fps=10)


def test_process_vision_info_reads_resizes_and_describes_the_video(tmp_path):
    from sharp_prune.integrations.lmms_eval.qwen_vision_info import process_vision_info
    from sharp_prune.testing import synthetic_video
    from sharp_prune.video import read_video_at

    path = synthetic_video(tmp_path / "v.mp4", num_frames=12)
    element = {"type": "video", "video": str(path), "min_pixels": 3136, "max_pixels": 3136}
    messages = [[{"role": "user", "content": [element, {"type": "text", "text": "hi"}]}]]
    images, videos, kwargs = process_vision_info(messages, return_video_kwargs=True, return_video_metadata=True)
    assert images is None and kwargs == {"do_sample_frames": False}
    video, metadata = videos[0]
    assert metadata["frames_indices"] == [0, 4, 7, 11]  # linspace(0, 11, 4).round()
    assert metadata["fps"] == pytest.approx(10.0) and metadata["total_num_frames"] == 12
    assert video.dtype == torch.float32 and video.shape == (4, 3, 56, 56)
    first = torch.from_numpy(read_video_at(path, [0]).frames).permute(0, 3, 1, 2).float()
    assert abs(float(video[0].mean()) - float(first.mean())) < 2.0  # the same frame, resized

    _, plain, fps = process_vision_info(messages, return_video_kwargs=True)
    assert torch.equal(plain[0], video) and fps["fps"] == [pytest.approx(4 / 12 * 10)]


def test_process_vision_info_says_what_it_cannot_read(tmp_path):
    from sharp_prune.integrations.lmms_eval.qwen_vision_info import process_vision_info

    missing = [{"role": "user", "content": [{"type": "video", "video": str(tmp_path / "none.mp4")}]}]
    with pytest.raises(sp.VideoError, match="not found"):
        process_vision_info(missing)
    image = [{"role": "user", "content": [{"type": "image", "image": "x.png"}]}]
    with pytest.raises(sp.VideoError, match="images .* need qwen-vl-utils"):
        process_vision_info(image)
    assert process_vision_info([{"role": "user", "content": "text only"}]) == (None, None)
