"""Qwen3-VL's video path without torchvision: the torch-only `Qwen3VLVideoProcessor`, checked on fixed frames
against values worked out from the official steps (sampling by fps, the whole-video smart_resize, mean = std =
0.5, the patch layout, the timestamps the processor writes from the video metadata), against the official
module's torch-free parts (they import without torchvision), and against transformers' whole processor wherever
torchvision imports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# The module itself (the package's lazy attribute is a torchvision-requiring placeholder where torchvision is missing)
import transformers.models.qwen3_vl.video_processing_qwen3_vl as official
from transformers.video_utils import VideoMetadata

import sharp_prune as sp
from sharp_prune.models import FAMILIES
from sharp_prune.models.qwen3_video_processing import Qwen3VLVideoProcessor, smart_resize
from sharp_prune.models.qwen_video_processing import patchify

TINY = dict(patch_size=4, temporal_patch_size=2, merge_size=2)


def _torchvision_works() -> bool:
    from sharp_prune.integrations.lmms_eval.mixin import _torchvision_works

    return _torchvision_works()


def _pattern(frames: int, height: int, width: int) -> np.ndarray:
    """uint8 [T, H, W, 3]: value = 100 t + 30 c + (y * W + x) mod 10, so every pixel is traceable."""
    t, y, x, c = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    return (100 * t + 30 * c + (y * width + x) % 10).astype(np.uint8)


def _normalised(value: float) -> float:
    return (value / 255 - 0.5) / 0.5  # Qwen3-VL: mean = std = 0.5 on every channel


def _processor(shortest: int, longest: int, **options) -> Qwen3VLVideoProcessor:
    return Qwen3VLVideoProcessor(**TINY, size={"shortest_edge": shortest, "longest_edge": longest}, **options)


# ----------------------------------------------------------------------------------------------- smart_resize
@pytest.mark.parametrize(
    "frames, size, bounds, expected",
    [
        (4, (48, 64), (512, 65536), (48, 64)),  # 4 x 48 x 64 = 12288 pixels: within bounds, multiples of 8
        (4, (48, 64), (512, 4096), (24, 32)),  # 12288 > 4096: beta = sqrt(3); floor(48 / beta / 8) = 3, 64: 4
        (8, (48, 64), (512, 4096), (16, 24)),  # twice the frames: beta = sqrt(6), so smaller frames
        (2, (8, 8), (512, 65536), (16, 16)),  # 2 x 8 x 8 = 128 < 512: beta = 2, ceil to 16 x 16
        (4, (4, 16), (64, 65536), (8, 32)),  # thinner than the factor: first scaled by 8 / 4 = 2
        (3, (48, 64), (512, 65536), (48, 64)),  # 3 frames count as 4 (rounded to the temporal patch)
    ],
)
def test_smart_resize_by_hand(frames, size, bounds, expected):
    assert smart_resize(frames, *size, 2, 8, *bounds) == expected


def test_smart_resize_refuses_one_frame_and_extreme_aspect_ratios():
    with pytest.raises(ValueError, match="temporal_factor"):
        smart_resize(1, 48, 64, 2, 8, 512, 65536)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(4, 8, 2000, 2, 8, 512, 10**8)


# ------------------------------------------------------------------------------------------- frame sampling
def test_frame_sampling_by_fps_with_its_bounds():
    processor = Qwen3VLVideoProcessor(**TINY)
    # 36 frames at 10 fps, 2 per second: int(3.6 * 2) = 7; linspace(0, 35, 7) rounded (half to even)
    assert processor.sample_frames(VideoMetadata(total_num_frames=36, fps=10)).tolist() == [0, 6, 12, 18, 23, 29, 35]
    # 12 frames: 2.4 -> at least min_frames = 4
    assert processor.sample_frames(VideoMetadata(total_num_frames=12, fps=10)).tolist() == [0, 4, 7, 11]
    # 3 frames: min_frames is capped by the video
    assert processor.sample_frames(VideoMetadata(total_num_frames=3, fps=10)).tolist() == [0, 1, 2]
    # num_frames as given (no rounding to the temporal patch)
    metadata = VideoMetadata(total_num_frames=36, fps=10)
    assert processor.sample_frames(metadata, num_frames=5, fps=None).tolist() == [0, 9, 18, 26, 35]
    # max_frames caps a long video
    capped = Qwen3VLVideoProcessor(**TINY, max_frames=6)
    assert len(capped.sample_frames(VideoMetadata(total_num_frames=600, fps=10))) == 6
    with pytest.raises(ValueError, match="mutually exclusive"):
        processor.sample_frames(metadata, num_frames=4, fps=2)


def test_sampling_without_fps_in_the_metadata_takes_24():
    processor = Qwen3VLVideoProcessor(**TINY)
    metadata = VideoMetadata(total_num_frames=48)
    # int(48 / 24 * 2) = 4 frames: linspace(0, 47, 4) rounded; the metadata now says 24 fps (for the timestamps)
    assert processor.sample_frames(metadata).tolist() == [0, 16, 31, 47]
    assert metadata.fps == 24


# ------------------------------------------------------------------------------------------- the processor
def test_patch_layout_and_normalisation_on_fixed_frames():
    """Two 8 x 8 frames (2 x 8 x 8 = 128 pixels, within [128, 128]: no resize): one temporal patch of 2 x 2
    patches; rows in merge-window order, each row (channel, frame, patch row, patch column)."""
    processor = _processor(128, 128, do_sample_frames=False)
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
                        value = _normalised(float(video[t, ph * 4 + py, pw * 4 + px, c]))
                        got = float(pixels[row, c * 32 + t * 16 + py * 4 + px])
                        assert got == pytest.approx(value, abs=1e-5), (row, c, t, py, px)


def test_an_odd_frame_count_is_padded_with_the_last_frame():
    processor = _processor(64, 4096, do_sample_frames=False)
    video = _pattern(3, 8, 8)
    out = processor(videos=[video], return_tensors="pt")
    assert out["video_grid_thw"].tolist() == [[2, 2, 2]]
    second = out["pixel_values_videos"][4:].reshape(4, 3, 2, 16)  # temporal patch 2: frames 2 and 2 (padded)
    assert torch.equal(second[:, :, 0], second[:, :, 1])
    assert float(second[0, 0, 0, 0]) == pytest.approx(_normalised(float(video[2, 0, 0, 0])), abs=1e-5)


def test_resize_counts_the_whole_video_and_the_token_count_matches():
    processor = _processor(512, 4096, do_sample_frames=False)
    out = processor(videos=[_pattern(4, 48, 64), _pattern(8, 48, 64)], return_tensors="pt")
    # 24 x 32 and 16 x 24 pixels (see test_smart_resize_by_hand): patches of 4
    assert out["video_grid_thw"].tolist() == [[2, 6, 8], [4, 4, 6]]
    assert out["pixel_values_videos"].shape[0] == 2 * 6 * 8 + 4 * 4 * 6
    assert processor.get_num_of_video_patches(4, 48, 64) == 2 * 6 * 8
    assert processor.get_num_of_video_patches(8, 48, 64) == 4 * 4 * 6
    first = processor(videos=[_pattern(4, 48, 64)], return_tensors="pt")["pixel_values_videos"]
    assert torch.equal(first, out["pixel_values_videos"][: 2 * 6 * 8])  # each video alone, as the official groups


def test_the_per_frame_cap_bounds_each_frame():
    """cap_pixels_per_frame: per frame max(min(max_video_tokens x 8^2, longest // T), 1.05 x shortest)."""
    processor = _processor(512, 65536, do_sample_frames=False, max_video_tokens=16)
    # 4 frames of 48 x 64: per frame min(16 * 64, 65536 // 4) = 1024, so 4096 for the video: beta = sqrt(3)
    out = processor(videos=[_pattern(4, 48, 64)], cap_pixels_per_frame=True, return_tensors="pt")
    assert out["video_grid_thw"].tolist() == [[2, 6, 8]]
    uncapped = processor(videos=[_pattern(4, 48, 64)], cap_pixels_per_frame=False, return_tensors="pt")
    assert uncapped["video_grid_thw"].tolist() == [[2, 12, 16]]


def test_sampling_in_the_processor_keeps_the_indices_in_the_metadata():
    processor = _processor(512, 65536)  # do_sample_frames=True, fps=2: the Qwen3-VL defaults
    video = _pattern(36, 8, 8)
    out = processor(
        videos=[video],
        video_metadata=[{"total_num_frames": 36, "fps": 10.0}],
        return_metadata=True,
        return_tensors="pt",
    )
    metadata = out["video_metadata"][0]
    assert metadata.frames_indices.tolist() == [0, 6, 12, 18, 23, 29, 35]
    # 7 frames count as 8 (8 x 8 x 8 = 512 pixels, within bounds: no resize), padded to 8 in the patch layout
    assert out["video_grid_thw"].tolist() == [[4, 2, 2]]
    last = out["pixel_values_videos"][-4:].reshape(4, 3, 2, 16)  # frame 35 twice
    assert torch.equal(last[:, :, 0], last[:, :, 1])
    assert float(last[0, 0, 0, 0]) == pytest.approx(_normalised(float(video[35, 0, 0, 0])), abs=1e-5)


# ------------------------------------------------------------------------- the official module's torch-free parts
def test_same_sizes_sampling_and_layout_as_the_official_module():
    """`smart_resize`, `sample_frames`, `get_num_of_video_patches`, `patchify` and the saved options are torch or
    numpy code in transformers' module (only its resize and normalise need torchvision): they must agree."""
    for frames in (2, 3, 4, 9, 32):
        for height, width in [(48, 64), (4, 16), (100, 30), (720, 1280), (8, 8)]:
            for bounds in [(512, 4096), (64, 65536), (128 * 32 * 32, 32 * 32 * 768)]:
                for factor in (8, 32):
                    expected = official.smart_resize(frames, height, width, 2, factor, *bounds)
                    assert smart_resize(frames, height, width, 2, factor, *bounds) == expected
    options = dict(**TINY, size={"shortest_edge": 512, "longest_edge": 4096})
    ours, theirs = Qwen3VLVideoProcessor(**options), official.Qwen3VLVideoProcessor(**options)
    assert ours.to_dict() == theirs.to_dict()
    for total, fps in [(36, 10), (12, 10), (3, 10), (1000, 29.97), (48, None)]:
        assert (
            ours.sample_frames(VideoMetadata(total, fps)).tolist()
            == theirs.sample_frames(VideoMetadata(total, fps)).tolist()
        )
    for frames, height, width in [(4, 48, 64), (7, 100, 30), (32, 720, 1280)]:
        for cap in (False, True):
            kwargs = {"cap_pixels_per_frame": cap}
            assert ours.get_num_of_video_patches(frames, height, width, kwargs) == theirs.get_num_of_video_patches(
                frames, height, width, kwargs
            )
    video = torch.randn(5, 3, 16, 24)
    expected, *grid = theirs.patchify(video[None], patch_size=4, merge_size=2, temporal_patch_size=2)
    assert grid == [3, 4, 6]
    assert torch.equal(patchify(video, 4, 2, 2), expected[0])


@pytest.mark.skipif(not _torchvision_works(), reason="transformers' Qwen3-VL video processor needs torchvision")
@pytest.mark.parametrize("size, bounds, atol", [((8, 8), (128, 128), 1e-5), ((48, 64), (512, 4096), 0.05)])
def test_same_outputs_as_the_official_processor(size, bounds, atol):
    """Exact where no resize happens; within a uint8 rounding step where frames are resized."""
    video = np.random.default_rng(0).integers(0, 256, (4, *size, 3), dtype=np.uint8)
    options = dict(**TINY, size={"shortest_edge": bounds[0], "longest_edge": bounds[1]}, do_sample_frames=False)
    ours = Qwen3VLVideoProcessor(**options)(videos=[video], return_tensors="pt")
    theirs = official.Qwen3VLVideoProcessor(**options)(videos=[video], return_tensors="pt", cap_pixels_per_frame=False)
    assert torch.equal(ours["video_grid_thw"], theirs["video_grid_thw"])
    torch.testing.assert_close(ours["pixel_values_videos"], theirs["pixel_values_videos"], atol=atol, rtol=0)


# ------------------------------------------------------------------------------- the checkpoint, end to end
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from sharp_prune.testing import tiny_qwen_vl_checkpoint

    return tiny_qwen_vl_checkpoint(tmp_path_factory.mktemp("qwen3") / "q", "qwen3_vl")


def test_the_processor_writes_a_timestamp_before_each_temporal_patch(checkpoint):
    """`<t seconds>` = the mean time of each temporal patch's two frames: frames_indices / fps."""
    from sharp_prune.models.loading import load_processor

    processor = load_processor(checkpoint)
    if not _torchvision_works():
        assert type(processor.video_processor) is Qwen3VLVideoProcessor
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert "system" not in prompt  # Qwen3-VL's template has no default system turn
    metadata = [{"total_num_frames": 36, "fps": 10.0}]
    # Sampled by the processor: frames [0, 6, 12, 18, 23, 29, 35] + 35 (padding) -> 0.3, 1.5, 2.6, 3.5 s
    inputs = processor(text=prompt, videos=[_pattern(36, 48, 64)], video_metadata=metadata, return_tensors="pt")
    text = processor.decode(inputs["input_ids"][0])
    stamps = [part.split(" seconds>")[0] for part in text.split("<")[1:] if " seconds>" in part]
    assert stamps == ["0.3", "1.5", "2.6", "3.5"]
    assert inputs["video_grid_thw"].tolist() == [[4, 12, 16]]  # 7 frames count as 8: 8 x 48 x 64 <= 65536
    per_frame = 12 * 16 // 4
    assert int((inputs["input_ids"] == processor.video_token_id).sum()) == 4 * per_frame
    # Frames the caller sampled (do_sample_frames=False): the metadata's indices give the times
    metadata = [{"total_num_frames": 40, "fps": 10.0, "frames_indices": [0, 10, 20, 30]}]
    inputs = processor(
        text=prompt, videos=[_pattern(4, 48, 64)], video_metadata=metadata, do_sample_frames=False, return_tensors="pt"
    )
    text = processor.decode(inputs["input_ids"][0])
    assert "<0.5 seconds>" in text and "<2.5 seconds>" in text and inputs["video_grid_thw"].tolist() == [[2, 12, 16]]


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe"])
def test_the_tiny_qwen3_checkpoints_load_this_processor_and_run_pruned(tmp_path, checkpoint, family):
    from sharp_prune.models.loading import load_model
    from sharp_prune.testing import tiny_qwen_vl_checkpoint

    path = checkpoint if family == "qwen3_vl" else tiny_qwen_vl_checkpoint(tmp_path / "q", family)
    model, processor = load_model(path, device="cpu")
    assert type(model).__name__ == FAMILIES[family].class_names[0]
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    metadata = [{"fps": 10.0, "total_num_frames": 4, "frames_indices": [0, 1, 2, 3]}]
    inputs = processor(
        text=prompt, videos=[_pattern(4, 48, 64)], video_metadata=metadata, do_sample_frames=False, return_tensors="pt"
    )
    handle = sp.apply(model, sp.PruneConfig(method="sharp", retention=0.25, layer=2))
    model.generate(**inputs, max_new_tokens=2, do_sample=False)
    visual = int((inputs["input_ids"] == processor.video_token_id).sum())
    assert visual == int(inputs["video_grid_thw"].prod()) // 4 == 2 * 48
    assert handle.last.num_visual == [visual] and handle.last.budget == [visual // 4]
