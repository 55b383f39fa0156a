"""The torch-only video processors of GLM-4.6V (`Glm46VVideoProcessor`) and VideoLLaMA3 (`VideoLlama3VideoProcessor`).

transformers' modules for both import torchvision at the top. The reference here is transformers' own code: each
module's source run with a stand-in `torchvision` whose only use, the resize kernel, is torch's (the one the ports
use too), so sampling, sizes, rescale + normalise, the patch layout and VideoLLaMA3's Differential Frame Pruning are
compared exactly (`torch.equal`). Steps are also checked by hand, and the checkpoint's processor is built through
`load_processor` and run end to end (timestamps, the frames the family's locate finds, a pruned forward).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.video_utils import VideoMetadata

import sharp_prune as sp
from sharp_prune.models import FAMILIES
from sharp_prune.models.glm4v import glm46v_sample_frames, torch_video_processors
from sharp_prune.models.processors import TorchVideoOps, interpolate_frames
from sharp_prune.models.video_llama_3_video_processing import VideoLlama3VideoProcessor, smart_resize


def _torchvision_works() -> bool:
    from sharp_prune.integrations.lmms_eval.mixin import _torchvision_works

    return _torchvision_works()


# ------------------------------------------------------------------------------------- transformers' own code
def _stand_in_torchvision() -> dict[str, types.ModuleType]:
    """`torchvision.transforms.v2.functional` as the two modules use it: `InterpolationMode` in annotations only
    (their resize goes through the base class, which the reference classes point at torch's kernel)."""

    def resize(video, size, interpolation=None, antialias=True):
        return interpolate_frames(video, tuple(size), "bicubic", antialias)

    names = [
        "torchvision",
        "torchvision.transforms",
        "torchvision.transforms.v2",
        "torchvision.transforms.v2.functional",
    ]
    modules = {name: types.ModuleType(name) for name in names}
    modules["torchvision.transforms.v2.functional"].InterpolationMode = object
    modules["torchvision.transforms.v2.functional"].resize = resize
    for parent, child in zip(names, names[1:], strict=False):
        setattr(modules[parent], child.rsplit(".", 1)[1], modules[child])
    return modules


@functools.cache
def _official_module(package: str) -> types.ModuleType:
    """transformers' `video_processing_<package>.py`, run with the stand-in torchvision (sys.modules is restored
    right after, so nothing else sees it)."""
    import transformers.image_processing_utils  # noqa: F401  (imported before the stand-in is in place)
    import transformers.video_processing_utils  # noqa: F401

    folder = Path(importlib.import_module(f"transformers.models.{package}").__file__).parent
    spec = importlib.util.spec_from_file_location(
        f"transformers.models.{package}._reference_video_processing", folder / f"video_processing_{package}.py"
    )
    module = importlib.util.module_from_spec(spec)
    stand_in = _stand_in_torchvision()
    saved = {name: sys.modules.get(name) for name in stand_in}
    sys.modules.update(stand_in)
    try:
        sys.modules[spec.name] = module  # transformers' docstring helper reads the class's source through its module
        spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module


@functools.cache
def _official(package: str, name: str) -> type:
    """transformers' class with torch's resize, RGB conversion and normalise under it: its own `resize` picks the
    size and calls the base class's, which is `TorchVideoOps.resize` here."""
    from transformers.video_processing_utils import BaseVideoProcessor

    torch_kernels = type("TorchKernels", (TorchVideoOps, BaseVideoProcessor), {})
    official = getattr(_official_module(package), name)
    return type(name, (official, torch_kernels), {})


def _video(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def _same_outputs(mine, theirs, keys) -> None:
    for key in keys:
        assert torch.equal(mine[key], theirs[key]), key


# ================================================================================================= GLM-4.6V
GLM_PIXELS = dict(patch_size=4, temporal_patch_size=2, merge_size=2)


def _glm46v() -> type:
    return {cls.__name__: cls for cls in torch_video_processors()}["Glm46VVideoProcessor"]


def test_every_glm_entry_offers_both_glm_processors():
    """GLM-4.6V checkpoints name `Glm46VVideoProcessor`; both classes are offered to every GLM entry (the name
    picks), and GLM-4.6V's is GLM-4.1V's with its own sampling only."""
    glm4v, glm46v = torch_video_processors()
    assert (glm4v.__name__, glm46v.__name__) == ("Glm4vVideoProcessor", "Glm46VVideoProcessor")
    for family in ("glm4v", "glm46v", "glm4v_moe"):
        assert FAMILIES[family].video_processors() == (glm4v, glm46v)
    assert issubclass(glm46v, glm4v) and glm46v.sample_frames is glm46v_sample_frames
    assert glm46v().to_dict() == {**glm4v().to_dict(), "video_processor_type": "Glm46VVideoProcessor"}
    official = _official("glm46v", "Glm46VVideoProcessor")
    assert glm46v(**GLM_PIXELS).to_dict() == official(**GLM_PIXELS).to_dict()
    # the reference is transformers' code but for the kernels, and the stand-in torchvision is gone again
    module = _official_module("glm46v")
    assert official.sample_frames is module.Glm46VVideoProcessor.sample_frames
    assert official.resize is module.Glm46VVideoProcessor.resize
    assert official.__mro__.index(TorchVideoOps) > official.__mro__.index(module.Glm46VVideoProcessor)
    assert _torchvision_works() or "torchvision" not in sys.modules


def test_glm46v_sampling_by_hand():
    processor = _glm46v()(**GLM_PIXELS)
    # 40 s at 10 fps (400 frames): 1 fps (<= 300 s) x 2 = 80 frames, the first at or after every 0.5 s
    indices = processor.sample_frames(VideoMetadata(total_num_frames=400, fps=10.0, duration=40.0))
    assert indices.tolist() == list(range(0, 400, 5))
    # 5 s at 4 fps (20 frames): 3 fps x 2 x 5 s = 30 > 20 frames: linspace over every frame, deduplicated
    assert processor.sample_frames(VideoMetadata(total_num_frames=20, fps=4.0)).tolist() == list(range(20))
    # an odd count is made even with the last index: 7 frames at 1 fps -> 7 s, 42 > 7 -> 0..6, then 6 again
    assert processor.sample_frames(VideoMetadata(total_num_frames=7, fps=1.0)).tolist() == [0, 1, 2, 3, 4, 5, 6, 6]
    # a long video (1000 s at 2 fps): 0.5 fps x 2 = 1 frame a second, 1000 frames capped at 640
    long = processor.sample_frames(VideoMetadata(total_num_frames=2000, fps=2.0))
    assert len(long) == 640 and long[0] == 0 and long[-1] == 1999
    with pytest.raises(ValueError, match="no video metadata"):
        processor.sample_frames(VideoMetadata(total_num_frames=20))
    # 10 s at 10 fps: 3 fps x 2 = 60 frames, where GLM-4.1V's rule (2 fps) takes 20: the override matters
    ten_seconds = VideoMetadata(total_num_frames=100, fps=10.0, duration=10.0)
    assert len(processor.sample_frames(ten_seconds)) == 60
    assert len(torch_video_processors()[0](**GLM_PIXELS).sample_frames(ten_seconds)) == 20


@pytest.mark.parametrize("temporal_patch_size", [1, 2, 3])
def test_glm46v_sampling_equals_transformers(temporal_patch_size):
    options = dict(GLM_PIXELS, temporal_patch_size=temporal_patch_size)
    mine, theirs = _glm46v()(**options), _official("glm46v", "Glm46VVideoProcessor")(**options)
    cases = [
        (total, fps, duration)
        for total in (1, 2, 7, 20, 59, 300, 901, 3000, 20000, 90000)
        for fps in (1.0, 2.0, 10.0, 29.97, 30.0, 60.0)
        for duration in (None, total / fps, 12.5)
    ]
    for total, fps, duration in cases:
        metadata = VideoMetadata(total_num_frames=total, fps=fps, duration=duration)
        expected = theirs.sample_frames(metadata)
        got = mine.sample_frames(VideoMetadata(total_num_frames=total, fps=fps, duration=duration))
        assert got.dtype == expected.dtype and got.tolist() == expected.tolist(), (total, fps, duration)


@pytest.mark.parametrize("size", [(48, 64), (30, 100), (64, 64)])
def test_glm46v_outputs_equal_transformers(size):
    """Sampled by the processor (do_sample_frames, the default), resized, normalised, laid out: the same tensors
    and the same frame indices in the returned metadata."""
    options = dict(GLM_PIXELS, size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32 * 8})
    video = _video(23, *size, seed=sum(size))
    outputs = []
    for cls in (_glm46v(), _official("glm46v", "Glm46VVideoProcessor")):
        metadata = [VideoMetadata(total_num_frames=23, fps=5.0)]
        outputs.append(
            cls(**options)(videos=[video], video_metadata=metadata, return_metadata=True, return_tensors="pt")
        )
    mine, theirs = outputs
    _same_outputs(mine, theirs, ("pixel_values_videos", "video_grid_thw"))
    assert list(mine["video_metadata"][0].frames_indices) == list(theirs["video_metadata"][0].frames_indices)
    assert len(mine["video_metadata"][0].frames_indices) == 2 * int(mine["video_grid_thw"][0, 0])


@pytest.mark.skipif(not _torchvision_works(), reason="transformers' GLM-4.6V video processor needs torchvision")
def test_glm46v_outputs_match_transformers_with_torchvision():
    from transformers import Glm46VVideoProcessor

    options = dict(GLM_PIXELS, size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32 * 8})
    video = _video(23, 48, 64, seed=0)
    mine = _glm46v()(**options)(videos=[video], video_metadata=[VideoMetadata(23, 5.0)], return_tensors="pt")
    theirs = Glm46VVideoProcessor(**options)(
        videos=[video], video_metadata=[VideoMetadata(23, 5.0)], return_tensors="pt"
    )
    assert torch.equal(mine["video_grid_thw"], theirs["video_grid_thw"])
    torch.testing.assert_close(mine["pixel_values_videos"], theirs["pixel_values_videos"], atol=0.05, rtol=0)


GLM_SPECIAL = [
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
]


def test_a_glm46v_checkpoint_loads_this_processor_and_writes_its_timestamps(tmp_path):
    """`load_processor` on a GLM-4.6V checkpoint (processor files as `save_pretrained` writes them): the torch-only
    class where torchvision is missing; the processor samples frames and writes one "t.0 seconds" per temporal
    patch; the family's locate finds those frames."""
    import transformers
    from transformers.models.glm46v.image_processing_pil_glm46v import Glm46VImageProcessorPil

    from sharp_prune.hf_protocol import read_model_call
    from sharp_prune.models.glm4v import locate_glm4v, tiny_glm4v_config
    from sharp_prune.models.loading import load_processor
    from sharp_prune.models.processors import accepting_processor_class
    from sharp_prune.testing import _smollm2_tokenizer

    tokenizer = _smollm2_tokenizer(None, GLM_SPECIAL)
    video_processor = _glm46v()(**GLM_PIXELS, size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32 * 8})
    processor = accepting_processor_class(transformers.Glm46VProcessor)(
        image_processor=Glm46VImageProcessorPil(**GLM_PIXELS), tokenizer=tokenizer, video_processor=video_processor
    )
    processor.save_pretrained(tmp_path)
    ids = dict(zip(GLM_SPECIAL, tokenizer.convert_tokens_to_ids(GLM_SPECIAL), strict=True))
    config = tiny_glm4v_config(
        "glm46v",
        2,
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
        vocab_size=len(tokenizer),
    )
    config.save_pretrained(tmp_path)

    loaded = load_processor(tmp_path)
    assert type(loaded).__name__ == "Glm46VProcessor"
    if not _torchvision_works():
        assert type(loaded.video_processor) is _glm46v()
    # 8 s at 5 fps (40 frames): 3 fps x 2 x 8 s = 48 > 40 frames, so every frame: 20 temporal patches
    inputs = loaded(
        text="Watch <|begin_of_video|><|video|><|end_of_video|> what moves?",
        videos=[_video(40, 48, 64, seed=1)],
        video_metadata=[{"total_num_frames": 40, "fps": 5.0}],
        return_tensors="pt",
    )
    grid = inputs["video_grid_thw"].tolist()
    assert grid[0][0] == 20
    text = tokenizer.decode(inputs["input_ids"][0])
    stamps = [part.split("<|begin_of_image|>")[0] for part in text.split("<|end_of_image|>")[1:]]
    # each temporal patch's first frame: frames 0, 2, 4, ... at 5 fps
    assert [s.strip() for s in stamps[:3]] == ["0.0 seconds", "0.4 seconds", "0.8 seconds"]
    model = types.SimpleNamespace(config=config)
    layout = locate_glm4v(model, read_model_call([], (), dict(inputs)), None)
    per_frame = grid[0][1] * grid[0][2] // 4
    assert layout.num_frames == 20 and layout.grid == (grid[0][1] // 2, grid[0][2] // 2)
    assert torch.bincount(layout.frame_ids[0]).tolist() == [per_frame] * 20


# ================================================================================================ VideoLLaMA3
VL3_PIXELS = dict(patch_size=4, merge_size=2)
VL3_OUTPUTS = ("pixel_values_videos", "video_grid_thw", "video_merge_sizes", "video_compression_mask")


def _vl3_official() -> type:
    return _official("video_llama_3", "VideoLlama3VideoProcessor")


def _static_video(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """Mostly still: each frame changes one random 8 x 8 block of the previous one (some frames none), so
    Differential Frame Pruning keeps a few tokens of each frame after the first."""
    rng = np.random.default_rng(seed)
    video = np.repeat(_video(1, height, width, seed), frames, axis=0)
    for f in range(1, frames):
        video[f] = video[f - 1]
        if rng.random() < 0.7:
            y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
            video[f, y : y + 8, x : x + 8] = rng.integers(0, 256, (8, 8, 3))
    return video


def test_the_video_llama_3_entry_offers_this_processor():
    assert FAMILIES["video_llama_3"].video_processors() == (VideoLlama3VideoProcessor,)
    assert VideoLlama3VideoProcessor.__name__ == "VideoLlama3VideoProcessor"
    options = dict(VL3_PIXELS, min_pixels=64, max_pixels=4096)
    mine, theirs = VideoLlama3VideoProcessor(**options), _vl3_official()(**options)
    assert mine.to_dict() == theirs.to_dict()
    assert mine.size == {"shortest_edge": 64, "longest_edge": 4096}  # min_pixels / max_pixels set the size


@pytest.mark.parametrize(
    "size, factor, bounds, expected",
    [
        ((48, 64), 8, (64, 4096), (48, 64)),  # multiples of 8, 3072 pixels within bounds
        ((48, 64), 8, (64, 1024), (24, 32)),  # 3072 > 1024: beta = sqrt(3), floor(48 / beta / 8) * 8 = 24
        ((10, 12), 8, (512, 4096), (24, 32)),  # 8 x 16 = 128 < 512: beta = sqrt(512 / 120), ceil to 8
        ((30, 100), 8, (64, 100000), (32, 96)),  # nearest multiples of 8
    ],
)
def test_video_llama_3_smart_resize_by_hand_and_as_transformers(size, factor, bounds, expected):
    assert smart_resize(*size, factor, *bounds) == expected
    official = _official_module("video_llama_3").smart_resize
    for height in (4, 10, 48, 100, 720):
        for width in (8, 64, 99, 1280):
            for b in [(64, 1024), (512, 4096), (128 * 28 * 28, 28 * 28 * 768 // 16)]:
                if max(height, width) / min(height, width) > 200:
                    continue  # both refuse (checked below)
                assert smart_resize(height, width, factor, *b) == official(height, width, factor, *b)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(4, 1000, 8, 64, 4096)


def test_video_llama_3_sampling_by_hand_and_as_transformers():
    mine, theirs = VideoLlama3VideoProcessor(**VL3_PIXELS), _vl3_official()(**VL3_PIXELS)
    metadata = VideoMetadata(total_num_frames=40, fps=10.0)
    # every frame by default; num_frames: arange(0, 40, 40 / 6) truncated
    assert mine.sample_frames(metadata).tolist() == list(range(40))
    assert mine.sample_frames(metadata, num_frames=6).tolist() == [0, 6, 13, 20, 26, 33]
    # fps 1: 4 s -> 4 frames (min_frames 4); fps 0.5 -> 2, raised to min_frames; fps 30 -> capped by the video
    assert mine.sample_frames(metadata, fps=1).tolist() == [0, 10, 20, 30]
    assert mine.sample_frames(metadata, fps=0.5).tolist() == [0, 10, 20, 30]
    assert mine.sample_frames(metadata, fps=30).tolist() == list(range(40))
    with pytest.raises(ValueError, match="mutually exclusive"):
        mine.sample_frames(metadata, num_frames=4, fps=2)
    with pytest.raises(ValueError, match="exceeds"):
        mine.sample_frames(metadata, num_frames=41)
    for total, fps in [(40, 10.0), (7, 1.0), (1000, 29.97), (3, 30.0), (500, 2.0)]:
        # not {}: transformers' then compares None > total (a TypeError); this class returns every frame
        for kwargs in [{"num_frames": 3}, {"fps": 1}, {"fps": 2.5}, {"fps": 1, "max_frames": 8, "min_frames": 2}]:
            if "num_frames" in kwargs and kwargs["num_frames"] > total:
                continue
            expected = theirs.sample_frames(VideoMetadata(total, fps), **kwargs)
            got = mine.sample_frames(VideoMetadata(total, fps), **kwargs)
            assert got.dtype == expected.dtype and torch.equal(got, expected), (total, fps, kwargs)


def test_video_llama_3_layout_and_compression_by_hand():
    """Three 16 x 24 frames (no resize: multiples of 8 within the bounds), 2 x 3 merged tokens a frame of 2 x 2
    patches of 4 x 4 x 3 = 192 values. A token is kept when its values' mean absolute change, in normalised units
    (2 / 255 a grey level) x 255, exceeds 0.1: frame 1 inverts token (1, 2), raises 10 values of token (0, 0) by
    one grey level (20 / 192 > 0.1: kept) and 9 of token (0, 1) (18 / 192: dropped); frame 2 repeats frame 1, so
    it keeps its first token only. Values are (pixel / 255 - 0.5) / 0.5; rows in merge-window order, each row
    (channel, patch row, patch column)."""
    video = np.repeat(_video(1, 16, 24, seed=3), 3, axis=0)
    video[:, 0, :4] = 100
    video[1, 8:16, 16:24] = 255 - video[1, 8:16, 16:24]
    video[1, 0, 0:3] += 1  # 9 values of token (0, 0) ...
    video[1, 0, 3, 0] += 1  # ... and a 10th
    # 9 values of token (0, 1), one grey level each
    video[1, 0, 8:11] = np.where(video[0, 0, 8:11] < 255, video[0, 0, 8:11] + 1, video[0, 0, 8:11] - 1)
    video[2] = video[1]
    processor = VideoLlama3VideoProcessor(**VL3_PIXELS, size={"shortest_edge": 64, "longest_edge": 3 * 16 * 24})
    out = processor(videos=[video], return_tensors="pt")
    assert out["video_grid_thw"].tolist() == [[3, 4, 6]] and out["video_merge_sizes"].tolist() == [2]
    mask = out["video_compression_mask"].reshape(3, 6)
    assert mask[0].all()
    assert mask[1].tolist() == [True, False, False, False, False, True]
    assert mask[2].tolist() == [True] + [False] * 5
    pixels = out["pixel_values_videos"]
    assert pixels.shape == (3 * 4 * 6, 3 * 4 * 4)
    # frame 1, merge window (1, 2), its patch (1, 0): patch row 3, patch column 4 of the frame
    row = 24 + (1 * 3 + 2) * 4 + 2
    patch = torch.from_numpy(video[1, 12:16, 16:20]).permute(2, 0, 1).float()
    torch.testing.assert_close(pixels[row], ((patch / 255 - 0.5) / 0.5).reshape(-1), atol=1e-5, rtol=0)
    off = processor(videos=[video], use_token_compression=False, return_tensors="pt")
    assert off["video_compression_mask"].tolist() == [True] * 18
    assert torch.equal(off["pixel_values_videos"], pixels)


@pytest.mark.parametrize(
    "videos, options",
    [
        ([(6, 48, 64)], {}),  # 12288 pixels shared by 6 frames: 2048 each, 48 x 64 resized to 32 x 48
        ([(5, 30, 100), (3, 40, 40), (5, 30, 100)], {}),  # 5 frames of 24 x 88 (resized), 3 of 40 x 40 (not)
        ([(1, 48, 64)], {}),  # one frame: not resized, nothing compressed
        ([(6, 48, 64)], {"use_token_compression": False}),
        ([(40, 48, 64)], {"do_sample_frames": True, "fps": 1}),  # sampled by the processor
    ],
)
def test_video_llama_3_outputs_equal_transformers(videos, options):
    arrays = [_static_video(*shape, seed=i) for i, shape in enumerate(videos)]
    init = dict(VL3_PIXELS, size={"shortest_edge": 64, "longest_edge": 2048 * 6})
    outputs = []
    for cls in (VideoLlama3VideoProcessor, _vl3_official()):
        metadata = [VideoMetadata(total_num_frames=len(v), fps=10.0) for v in arrays]
        outputs.append(cls(**init)(videos=arrays, video_metadata=metadata, return_tensors="pt", **options))
    mine, theirs = outputs
    _same_outputs(mine, theirs, VL3_OUTPUTS)
    for a, b in zip(mine["video_metadata"], theirs["video_metadata"], strict=True):
        assert (a.frames_indices is None and b.frames_indices is None) or torch.equal(
            torch.as_tensor(a.frames_indices), torch.as_tensor(b.frames_indices)
        )
    if options.get("do_sample_frames"):
        assert mine["video_metadata"][0].frames_indices.tolist() == [0, 10, 20, 30]  # 4 s at 1 fps
    mask = mine["video_compression_mask"]
    if options.get("use_token_compression", True) and int(mine["video_grid_thw"][0, 0]) > 1:
        assert 0 < int(mask.sum()) < mask.numel()  # frames of different lengths
    ours, official = VideoLlama3VideoProcessor(**init), _vl3_official()(**init)
    for (frames, height, width), grid in zip(videos, mine["video_grid_thw"].tolist(), strict=False):
        patches = ours.get_num_of_video_patches(frames, height, width, {})
        assert patches == official.get_num_of_video_patches(frames, height, width, {})
        assert options.get("do_sample_frames") or patches == grid[0] * grid[1] * grid[2]


def test_video_llama_3_deprecated_min_max_pixels_on_a_call_set_the_size():
    video = _video(4, 48, 64, seed=5)
    mine, theirs = VideoLlama3VideoProcessor(**VL3_PIXELS), _vl3_official()(**VL3_PIXELS)
    with pytest.warns(FutureWarning):
        a = mine(videos=[video], min_pixels=64, max_pixels=4 * 1024, return_tensors="pt")
    with pytest.warns(FutureWarning):
        b = theirs(videos=[video], min_pixels=64, max_pixels=4 * 1024, return_tensors="pt")
    _same_outputs(a, b, VL3_OUTPUTS)
    assert a["video_grid_thw"].tolist() == [[4, 6, 8]]  # 1024 pixels a frame: 24 x 32


@pytest.mark.skipif(not _torchvision_works(), reason="transformers' VideoLLaMA3 video processor needs torchvision")
def test_video_llama_3_outputs_match_transformers_with_torchvision():
    from transformers import VideoLlama3VideoProcessor as Official

    init = dict(VL3_PIXELS, size={"shortest_edge": 64, "longest_edge": 4096 * 6})
    video = _static_video(6, 48, 64, seed=0)
    mine = VideoLlama3VideoProcessor(**init)(videos=[video], return_tensors="pt")
    theirs = Official(**init)(videos=[video], return_tensors="pt")
    assert torch.equal(mine["video_grid_thw"], theirs["video_grid_thw"])
    torch.testing.assert_close(mine["pixel_values_videos"], theirs["pixel_values_videos"], atol=0.05, rtol=0)


def test_a_video_llama_3_checkpoint_loads_this_processor_and_prunes_its_compressed_frames(tmp_path):
    """`load_processor` on a VideoLLaMA3 checkpoint: the torch-only class where torchvision is missing; the
    processor writes "Time t s:" and each frame's kept tokens; the family's locate finds one frame per run, as
    many tokens as the compression mask keeps; the pruned tiny model runs on it."""
    import transformers
    from transformers.models.video_llama_3.image_processing_pil_video_llama_3 import VideoLlama3ImageProcessorPil

    from sharp_prune.hf_protocol import read_model_call
    from sharp_prune.models.loading import load_processor
    from sharp_prune.models.processors import accepting_processor_class
    from sharp_prune.models.tiny import finish
    from sharp_prune.models.video_llama_3 import locate_video_llama_3, tiny_video_llama_3_config
    from sharp_prune.testing import _smollm2_tokenizer

    tokenizer = _smollm2_tokenizer(None, ["<|image_pad|>", "<|video_pad|>"])
    video_processor = VideoLlama3VideoProcessor(**VL3_PIXELS, size={"shortest_edge": 64, "longest_edge": 4096 * 6})
    processor = accepting_processor_class(transformers.VideoLlama3Processor)(
        image_processor=VideoLlama3ImageProcessorPil(patch_size=4, merge_size=1),
        tokenizer=tokenizer,
        video_processor=video_processor,
    )
    processor.save_pretrained(tmp_path)
    video_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    config = tiny_video_llama_3_config(
        4,
        vocab_size=len(tokenizer),
        video_token_id=video_id,
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
    )
    config.save_pretrained(tmp_path)

    loaded = load_processor(tmp_path)
    assert type(loaded).__name__ == "VideoLlama3Processor"
    if not _torchvision_works():
        assert type(loaded.video_processor) is VideoLlama3VideoProcessor
    inputs = loaded(
        text="Watch <|video_pad|> what moves?",
        videos=[_static_video(30, 48, 64, seed=7)],
        video_metadata=[{"total_num_frames": 30, "fps": 10.0}],
        do_sample_frames=True,
        fps=2,
        return_tensors="pt",
    )
    grid = inputs["video_grid_thw"].tolist()[0]
    assert grid[0] == 6  # 3 s at 2 fps: frames 0, 5, ..., 25
    text = tokenizer.decode(inputs["input_ids"][0])
    assert [f"Time {t:.1f}s:" in text for t in (0.0, 0.5, 2.5)] == [True] * 3
    kept = inputs["video_compression_mask"].reshape(grid[0], -1).sum(dim=1).tolist()
    assert kept[0] == grid[1] * grid[2] // 4 and 0 < sum(kept[1:]) < 5 * kept[0]  # later frames compressed

    torch.manual_seed(0)
    model = finish(transformers.VideoLlama3ForConditionalGeneration(config), "sdpa", torch.float32)
    layout = locate_video_llama_3(model, read_model_call([], (), dict(inputs)), None)
    assert torch.bincount(layout.frame_ids[0]).tolist() == kept
    with sp.apply(model, method="fastv", retention=0.3, layer=2) as handle, torch.no_grad():
        logits = model(**inputs).logits
    assert handle.last.num_visual == [sum(kept)] and logits.shape[1] == handle.last.kept_len
