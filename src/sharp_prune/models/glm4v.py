"""GLM-4.1V, GLM-4.6V and GLM-4.5V (MoE): one "frame" is one temporal patch (2 frames), each its own image.

The processor writes a video as `<|begin_of_video|>`, then per temporal patch `<|begin_of_image|>`,
h * w / merge^2 image tokens (`config.image_token_id`: GLM puts video frames on the *image* token, and tells
them from images only by the video's begin/end tokens), `<|end_of_image|>` and the frame's timestamp as text
("3" in GLM-4.1V, "3.0 seconds" in GLM-4.6V), and `<|end_of_video|>` after the last frame. So every frame is
its own run of image tokens inside a video's begin/end pair: frames are found from `input_ids` and the config
alone, with or without `video_grid_thw` (`generate` encodes the video before the prefill and passes 3-D M-RoPE
positions, not grids). The grids, when the call has them, check the runs and give the frame size; under
`generate` the frame size comes from the frames' M-RoPE height and width rows. The timestamps, the
image begin/end tokens and `<|end_of_video|>` are text that is never pruned, and not a question: the video span
ends at `<|end_of_video|>`.

The three families differ in the text decoder only (GLM-4.5V: mixture-of-experts layers, whose routing is per
token, so pruning runs them as it runs dense ones); locating, the black frame and the vision tower are shared.

Without torchvision, `run` builds the checkpoint's processor with torch-only video processors
(`torch_video_processors`): `Glm4vVideoProcessor` and `Glm46VVideoProcessor` (GLM-4.1V's with GLM-4.6V's frame
sampling: 3, 1 or 0.5 fps by the video's length), offered to all three entries, the checkpoint's
`video_processor_type` picking one.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..hf_protocol import ModelCall
from ..steps.locate import VisualLayout
from . import tiny
from .base import ModelAdapter, TinyModel, black_pixels, input_ids_or_raise
from .qwen_vl import patch_tower_blank_frame


def _video_frame_tokens(input_ids: torch.Tensor, config: Any) -> torch.Tensor:
    """[b, L] bool: image tokens inside a video's begin/end pair (the processor's own rule, mm_token_type 2)."""
    opened = (input_ids == config.video_start_token_id).long().cumsum(dim=1)
    closed = (input_ids == config.video_end_token_id).long().cumsum(dim=1)
    return (input_ids == config.image_token_id) & (opened > closed)


def _frame_map(is_video: torch.Tensor) -> torch.Tensor:
    """[b, L] frame index of each video token (one frame = one run of consecutive tokens), -1 elsewhere."""
    previous = torch.nn.functional.pad(is_video[:, :-1], (1, 0), value=False)
    starts = is_video & ~previous
    return torch.where(is_video, starts.long().cumsum(dim=1) - 1, -1)


def _grid_from_grids(frame_map: torch.Tensor, grid_thw: torch.Tensor, merge: int) -> tuple[int, int] | None:
    """Check the frames against `video_grid_thw` and return the frame size (h, w) in tokens, or None when the
    videos differ in size.

    Each sample takes the next videos of `video_grid_thw` until its video tokens are used up (the processor's
    order); its frames must be as many, and (videos of one size) each of that size.
    """
    b, seq_len = frame_map.shape
    sizes = torch.zeros(b, seq_len + 1, dtype=torch.long, device=frame_map.device)
    sizes.scatter_add_(1, frame_map + 1, torch.ones_like(frame_map))  # column f + 1: tokens of frame f
    sizes = sizes[:, 1:]
    present = sizes > 0
    facts = torch.stack(
        [
            sizes.sum(dim=1),
            present.sum(dim=1),
            torch.where(present, sizes, seq_len + 1).amin(dim=1),
            sizes.amax(dim=1),
        ]
    )
    # the adapter's one host sync: the grids and each sample's tokens, frames and frame sizes, read at once
    values = torch.cat([grid_thw.to(frame_map.device).long().flatten(), facts.flatten()]).tolist()
    grids, facts_list = values[: grid_thw.numel()], values[grid_thw.numel() :]
    tokens, frames, smallest, largest = (facts_list[i * b : (i + 1) * b] for i in range(4))
    videos = [(t, h // merge, w // merge) for t, h, w in zip(grids[0::3], grids[1::3], grids[2::3], strict=True)]
    next_video = 0
    for row in range(b):
        need_tokens, need_frames, frame_sizes = tokens[row], 0, set()
        while need_tokens > 0 and next_video < len(videos):
            t, h, w = videos[next_video]
            need_tokens, need_frames, next_video = need_tokens - t * h * w, need_frames + t, next_video + 1
            frame_sizes.add(h * w)
        same_size = len(frame_sizes) != 1 or smallest[row] == largest[row] == next(iter(frame_sizes))
        if need_tokens != 0 or (tokens[row] and (need_frames != frames[row] or not same_size)):
            raise InputError(
                f"glm4v: sample {row} has {tokens[row]} video tokens in {frames[row]} frames, which does not match "
                "`video_grid_thw`; build the inputs with the model's processor."
            )
    if next_video != len(videos):
        raise InputError("glm4v: `video_grid_thw` describes more videos than input_ids has.")
    shapes = {(h, w) for _, h, w in videos}
    return next(iter(shapes)) if len(shapes) == 1 else None


def _grid_from_positions(frame_map: torch.Tensor, position_ids: torch.Tensor) -> tuple[int, int] | None:
    """Frame size (h, w) from the M-RoPE height and width rows (each frame spans h heights and w widths), or None
    when the frames differ in size."""
    spatial = position_ids[-2:].to(frame_map.device).long()  # [2, b, L]: height and width rows
    slots = (frame_map + 1).expand(2, -1, -1)  # slot 0 collects the text
    shape = (2, frame_map.shape[0], frame_map.shape[1] + 1)
    big = torch.iinfo(torch.long).max
    top = torch.full(shape, big, device=spatial.device).scatter_reduce(2, slots, spatial, "amin")[:, :, 1:]
    bottom = torch.full(shape, -big, device=spatial.device).scatter_reduce(2, slots, spatial, "amax")[:, :, 1:]
    present = (top != big).all(dim=0)  # [b, L] frames that exist
    extent = torch.where(present, bottom - top + 1, 0)  # [2, b, L]
    first = extent[:, :, 0].amax(dim=1)  # [2]: a frame 0 of some sample (every sample with video has one)
    same = ((extent == first[:, None, None]) | ~present).all()
    h, w, all_same = torch.cat([first, same[None].long()]).tolist()  # the adapter's one host sync under generate
    return (h, w) if all_same else None


def locate_glm4v(model: nn.Module, call: ModelCall, declared: torch.Tensor | None) -> VisualLayout | None:
    """Video frames are the runs of image tokens between `<|begin_of_video|>` and `<|end_of_video|>`."""
    input_ids = input_ids_or_raise("glm4v", call)
    config = model.config
    is_video = _video_frame_tokens(input_ids, config)
    frame_map = _frame_map(is_video)
    grid_thw = call.video_grid_thw  # None under generate, which encodes the video before the prefill
    position_ids = call.position_ids
    if grid_thw is not None:
        grid = _grid_from_grids(frame_map, grid_thw, config.vision_config.spatial_merge_size)
    elif isinstance(position_ids, torch.Tensor) and position_ids.ndim == 3 and position_ids.shape[0] in (3, 4):
        grid = _grid_from_positions(frame_map, position_ids)
    else:
        grid = None  # only PosC needs the frame size; it says so if it is missing
    layout = VisualLayout.from_frame_map(frame_map, grid=grid)
    if layout is None:
        return None
    # The video span ends at the last video's end token: the last frame's end-of-image token and timestamp
    # are part of the video, not a question about it.
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    ends = torch.where(input_ids == config.video_end_token_id, positions, -1).max(dim=1).values
    return dataclasses.replace(layout, span_end=torch.maximum(ends, layout.positions[:, -1]))


# GLM-4.1V / GLM-4.6V processors normalise with OpenAI CLIP's mean and std.
_BLACK = black_pixels((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


blank_frame_glm4v = patch_tower_blank_frame("glm4v", _BLACK)


def vision_flops_glm4v(config: Any, num_frames: int, video_grid_thw: tuple[int, int, int] | None) -> int:
    """The ViT on (t, h, w) patches with attention within each temporal patch, the 2-D downsampling
    convolution and the patch merger (matmuls only)."""
    if video_grid_thw is None:
        raise ConfigError("GLM-4V: pass video_grid_thw=(t, h, w) in patches.")
    vision = config.vision_config
    t, h, w = (int(x) for x in video_grid_thw)
    patches, merge = t * h * w, vision.spatial_merge_size
    e, out, context = vision.hidden_size, vision.out_hidden_size, vision.intermediate_size
    total = 2 * patches * vision.in_channels * vision.temporal_patch_size * vision.patch_size**2 * e
    # qkv + proj, attention within each temporal patch (each is its own image), gated MLP of width out_hidden
    per_block = patches * (2 * 4 * e * e + 2 * 3 * e * out) + 4 * e * t * (h * w) ** 2
    total += vision.depth * per_block
    merged = patches // merge**2
    total += 2 * merged * (e * merge * merge) * out  # downsample: a merge x merge convolution, stride merge
    total += 2 * merged * (out * out + 3 * out * context)  # merger: proj, then gated gate / up / down
    return total


# ------------------------------------------------------------------------------------------------ processors
# GLM-4.6V's frame sampling (transformers' `Glm46VVideoProcessor.sample_frames`): a target fps by duration.
_GLM46V_FPS_BY_DURATION = ((30, 3), (300, 1), (2400, 0.5))  # up to 30 s: 3 fps, up to 300 s: 1 fps, else 0.5
_GLM46V_MAX_FRAMES = 640
_GLM46V_MAX_DURATION = 2400


def glm46v_sample_frames(self: Any, metadata: Any, fps: float | None = None, **kwargs: Any) -> np.ndarray:
    """GLM-4.6V's frame indices, transformers' `Glm46VVideoProcessor.sample_frames` step by step (`fps` is
    ignored, as there): 3, 1 or 0.5 fps for videos up to 30 s, up to 300 s and longer (a duration capped at
    2400 s), times the temporal patch, at most 640 frames; the first frame at or after each 1 / (2 x fps)
    seconds up to int(duration), or `np.linspace` when that gives too few or too many; duplicates dropped and
    the last index repeated to an even count."""
    if metadata is None or getattr(metadata, "fps", None) is None:
        raise ValueError(
            "Asked to sample frames per second but no video metadata was provided which is required when sampling "
            "in Glm46V. Please pass in `VideoMetadata` object or set `do_sample_frames=False`"
        )
    total_frames = metadata.total_num_frames
    max_frame_idx = total_frames - 1
    duration = metadata.duration or round(max_frame_idx / metadata.fps) + 1
    effective_duration = min(duration, _GLM46V_MAX_DURATION)
    target_fps = next((f for limit, f in _GLM46V_FPS_BY_DURATION if effective_duration <= limit), 0.5)
    extract_t = min(int(effective_duration * target_fps * self.temporal_patch_size), _GLM46V_MAX_FRAMES)

    duration_per_frame = 1 / metadata.fps
    timestamps = [i * duration_per_frame for i in range(total_frames)]
    max_second = int(duration)
    if total_frames < extract_t:
        frame_indices = np.linspace(0, total_frames - 1, extract_t, dtype=int).tolist()
    else:
        frame_indices = []
        current_second = 0
        inv_fps = 1 / (self.temporal_patch_size * target_fps)
        for frame_index in range(total_frames):
            if timestamps[frame_index] >= current_second:
                current_second += inv_fps
                frame_indices.append(frame_index)
                if current_second >= max_second:
                    break
    if len(frame_indices) < extract_t:
        start, end = (0, max(total_frames - 1, 0)) if not frame_indices else (frame_indices[0], frame_indices[-1])
        frame_indices = np.linspace(start, end, extract_t, dtype=int).tolist()
    elif len(frame_indices) > extract_t:
        frame_indices = np.linspace(0, total_frames - 1, extract_t, dtype=int).tolist()
    unique = list(dict.fromkeys(frame_indices))  # first occurrences, in order
    if len(unique) & 1:
        unique.append(unique[-1])
    return np.array(unique, dtype=int)


@cache
def torch_video_processors() -> tuple[type, ...]:
    """GLM-4.1V's and GLM-4.6V's video processors on torch ops, for machines without torchvision; built on first
    use. Every GLM entry offers both: the checkpoint's `video_processor_type` picks one by name.

    transformers' `Glm4vVideoProcessor` picks the size (`smart_resize`) and then calls torchvision's resize
    through the base class; here the same size goes to the torch resize of `TorchVideoOps`
    (sharp_prune.models.processors), and sampling, rescaling, normalising and the patch layout are transformers'
    own code. `Glm46VVideoProcessor` is `Glm4vVideoProcessor` with its own frame sampling
    (`glm46v_sample_frames`), and nothing else: transformers' module for it imports torchvision at the top, so
    the sampling is written out here (tests/test_glm46v_video_llama_3_processors.py runs it against that
    module's own code). Same class names, so a checkpoint's `video_processor_type` finds them.
    """
    import importlib

    from transformers.image_utils import SizeDict

    # imported as a module: the package's lazy attribute is a placeholder where torchvision is missing
    video_processing_glm4v = importlib.import_module("transformers.models.glm4v.video_processing_glm4v")

    from .processors import TorchVideoOps

    def resize(
        self: Any, videos: torch.Tensor, size: Any, resample: Any, factor: int, temporal_factor: int, **kwargs: Any
    ) -> torch.Tensor:
        if not size.shortest_edge or not size.longest_edge:
            raise ValueError(f"`size` dict must contain 'shortest_edge' and 'longest_edge' keys but got {size}.")
        height, width = video_processing_glm4v.smart_resize(
            num_frames=videos.shape[1],
            height=videos.shape[-2],
            width=videos.shape[-1],
            temporal_factor=temporal_factor,
            factor=factor,
            min_pixels=size.shortest_edge,
            max_pixels=size.longest_edge,
        )
        return TorchVideoOps.resize(self, videos, SizeDict(height=height, width=width), resample)

    base = video_processing_glm4v.Glm4vVideoProcessor
    namespace = {"__module__": __name__, "__doc__": base.__doc__, "resize": resize}
    glm4v = type(base.__name__, (TorchVideoOps, base), namespace)
    glm46v = type(
        "Glm46VVideoProcessor",
        (glm4v,),
        {
            "__module__": __name__,
            "__doc__": "transformers' Glm46VVideoProcessor (GLM-4.1V's with GLM-4.6V's frame sampling) on torch ops.",
            "sample_frames": glm46v_sample_frames,
        },
    )
    return glm4v, glm46v


# ------------------------------------------------------------------------------------------------ tiny models
# Token ids of the tiny vocabulary: video frames carry the image token, as in the real checkpoints.
IMAGE_START_ID = 254
IMAGE_END_ID = 255
TIMESTAMP_IDS = (17, 18)  # a frame's timestamp text: one digit and the word after it ("3.0 seconds")


def _tiny_vision() -> dict:
    """A one-block ViT: patch 4, merge 2, temporal patch 2, position table of 8 x 8 patches."""
    return dict(
        depth=1,
        hidden_size=32,
        num_heads=2,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
        image_size=32,
        out_hidden_size=tiny.text_config(1, rope=False)["hidden_size"],
        intermediate_size=48,
    )


def _tiny_text(num_layers: int, moe: bool) -> dict:
    """GQA text model with M-RoPE on half of each head (GLM's partial rotary factor 0.5)."""
    text = tiny.text_config(num_layers, rope=True)
    text["rope_parameters"] = dict(
        rope_type="default", mrope_section=[1, 2, 1], rope_theta=10000.0, partial_rotary_factor=0.5
    )
    if moe:
        # GLM-4.5V: a dense first layer, then routed experts (top-2 of 4) and one shared expert
        text.update(
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
        )
    return text


def tiny_glm4v_config(family: str, num_layers: int, **token_ids: int) -> Any:
    """The tiny configuration of `family` ("glm4v", "glm46v" or "glm4v_moe"). `token_ids` overrides the tiny
    vocabulary's ids (image_token_id, video_start_token_id, ..., vocab_size, bos_token_id, ...)."""
    import transformers

    config_cls = {
        "glm4v": transformers.Glm4vConfig,
        "glm46v": transformers.Glm46VConfig,
        "glm4v_moe": transformers.Glm4vMoeConfig,
    }[family]
    text = _tiny_text(num_layers, moe=family == "glm4v_moe")
    tiny.take_text_ids(token_ids, text)
    if family == "glm46v":
        text["model_type"] = "glm4v_text"
        vision = dict(model_type="glm4v_vision", **_tiny_vision())
    else:
        vision = _tiny_vision()
    ids = dict(
        image_token_id=tiny.VIDEO_TOKEN_ID,  # the token every video frame token carries
        video_token_id=tiny.IMAGE_TOKEN_ID,  # the processor's unexpanded `<|video|>`: never in model inputs
        image_start_token_id=IMAGE_START_ID,
        image_end_token_id=IMAGE_END_ID,
        video_start_token_id=tiny.VISION_START_ID,
        video_end_token_id=tiny.VISION_END_ID,
    )
    return tiny.with_text_ids(config_cls(text_config=text, vision_config=vision, **{**ids, **token_ids}), text)


def _tiny_glm4v(family: str) -> Any:
    """`TinyModel.build` of the tiny model of `family` ("glm4v", "glm46v" or "glm4v_moe")."""
    name = {"glm4v": "Glm4vForConditionalGeneration", "glm46v": "Glm46VForConditionalGeneration"}
    model_class = name.get(family, "Glm4vMoeForConditionalGeneration")
    return tiny.builder(model_class, lambda num_layers: tiny_glm4v_config(family, num_layers))


def video_segment(frames: int, tokens_per_frame: int) -> list[int]:
    """The token ids the processor writes for one video of `frames` temporal patches (tiny vocabulary):
    begin-of-video, then per frame begin-of-image, its tokens, end-of-image and a timestamp; end-of-video."""
    ids = [tiny.VISION_START_ID]
    for _ in range(frames):
        ids += [IMAGE_START_ID] + [tiny.VIDEO_TOKEN_ID] * tokens_per_frame + [IMAGE_END_ID, *TIMESTAMP_IDS]
    return ids + [tiny.VISION_END_ID]


def tiny_inputs_glm4v(
    model: nn.Module,
    prefix_lens: list[int],
    suffix_lens: list[int],
    video: tiny.TinyVideo,
    padding_side: str,
    seed: int,
) -> dict[str, torch.Tensor]:
    """One video per sample in the processor's layout: t temporal patches of (grid x grid) merged tokens, each
    framed by begin/end-of-image and followed by its timestamp; flattened patches and `video_grid_thw`."""
    generator = torch.Generator().manual_seed(seed)
    segment = torch.tensor(video_segment(video.frames, video.grid**2))
    inputs = tiny.padded_batch(prefix_lens, suffix_lens, segment.numel(), padding_side, generator)
    ids = inputs["input_ids"]
    for row in range(ids.shape[0]):
        start = int((ids[row] == tiny.VIDEO_TOKEN_ID).nonzero()[0])  # padded_batch's placeholder run
        ids[row, start : start + segment.numel()] = segment
    vision = model.config.vision_config
    b = len(prefix_lens)
    h = w = video.grid * vision.spatial_merge_size
    patches = video.frames * h * w
    patch_values = 3 * vision.temporal_patch_size * vision.patch_size**2
    inputs["pixel_values_videos"] = torch.randn(b * patches, patch_values, generator=generator)
    inputs["video_grid_thw"] = torch.tensor([[video.frames, h, w]] * b)
    is_video = _video_frame_tokens(ids, model.config)
    inputs["mm_token_type_ids"] = is_video.int() * 2  # the processor's: 2 for video frames, 0 for text
    return inputs


_PATHS = ("model.language_model", "language_model")

GLM4V = ModelAdapter(
    name="glm4v",
    class_names=("Glm4vForConditionalGeneration", "Glm4vModel"),
    decoder_paths=_PATHS,
    locate=locate_glm4v,
    blank_frame=blank_frame_glm4v,
    blank_frame_needs_grid=True,
    model_types=("glm4v",),
    processor_class="Glm4vProcessor",
    video_processors=torch_video_processors,
    vision_flops=vision_flops_glm4v,
    # No lmms-eval wrapper: upstream's `glm4v` (lmms_eval.models.simple.glm4v) sends every visual, video files
    # included, to the chat template as an image, so it never puts a video in the prompt.
    tiny=TinyModel(build=_tiny_glm4v("glm4v"), inputs=tiny_inputs_glm4v),
)

GLM46V = ModelAdapter(
    name="glm46v",
    class_names=("Glm46VForConditionalGeneration", "Glm46VModel"),
    decoder_paths=_PATHS,
    locate=locate_glm4v,
    blank_frame=blank_frame_glm4v,
    blank_frame_needs_grid=True,
    model_types=("glm46v",),
    processor_class="Glm46VProcessor",
    video_processors=torch_video_processors,
    vision_flops=vision_flops_glm4v,
    tiny=TinyModel(build=_tiny_glm4v("glm46v"), inputs=tiny_inputs_glm4v),
)

GLM4V_MOE = ModelAdapter(
    name="glm4v_moe",
    class_names=("Glm4vMoeForConditionalGeneration", "Glm4vMoeModel"),
    decoder_paths=_PATHS,
    locate=locate_glm4v,
    blank_frame=blank_frame_glm4v,
    blank_frame_needs_grid=True,
    model_types=("glm4v_moe",),
    processor_class="Glm4vProcessor",
    video_processors=torch_video_processors,
    vision_flops=vision_flops_glm4v,
    tiny=TinyModel(build=_tiny_glm4v("glm4v_moe"), inputs=tiny_inputs_glm4v),
)
