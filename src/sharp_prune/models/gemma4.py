"""Gemma 4 (`Gemma4ForConditionalGeneration`): one span of soft tokens per frame, between `<boi>` and `<eoi>`.

Layout. `Gemma4Processor` writes a video as, per sampled frame, its ``mm:ss`` timestamp, `<boi>`, n `<|video|>`
tokens and `<eoi>`, the frames joined by spaces (`processing_gemma4.replace_video_token`). Every frame is
therefore its own run of `config.video_token_id` tokens, with `config.boi_token_id` / `config.eoi_token_id` and the
timestamp text between runs: frames are found from `input_ids` and the config alone, under `generate` too. Image
tokens (`config.image_token_id`) and audio tokens are never pruned. The frame size (h, w) in soft tokens comes from
`video_position_ids` (each frame's (x, y) patch grid, -1 for padding, pooled k x k, k = the vision config's
`pooling_kernel_size`) when the call has them. `generate` encodes the video before the prefill and drops them;
the size is then taken from the span length when it is a square (s x s; a non-square frame with a square token
count cannot be told from it), else left unknown, which only PosC's black frame needs.

The vision tower takes each frame as up to `max_soft_tokens` * k^2 patches of 3 * patch^2 values in [0, 1] (the
processor rescales by 1/255 with mean 0 and std 1; the patch embedder maps them to [-1, 1] itself), so a black
pixel is 0. The black frame is the tower + pooler + `embed_vision` on a frame of zeros at the layout's size.

What the text stack adds, and what the engine does about it:

- ``use_bidirectional_attention="vision"`` (the larger checkpoints): in sliding-window layers the tokens of one
  frame (one run of video tokens, `mm_token_type_ids` == 2) attend to each other both ways; full-attention layers
  stay causal. The engine slices these masks to the keep plan; it never rebuilds them.
- per-layer inputs (the E2B / E4B checkpoints: `hidden_size_per_layer_input`): every decoder layer adds its own
  token embedding, which follows the keep plan at layers >= K.
- shared KV (`num_kv_shared_layers`): the last layers reuse the keys and values of the last earlier layer of
  their type (`kv_sharing_modes`: "store" / "reuse"); they read the pruned cache of that source layer, so K must
  be at or below the first layer that stores KV for sharing.

The tiny configuration has all of them: a full-attention layer first (so every K >= 1 scores at a full layer),
sliding layers of window 8, per-layer inputs, a 1-block vision tower with 2 x 2 pooling, and from 6 layers on the
last two layers sharing KV.

lmms-eval: upstream's simple ``gemma4`` wrapper (`lmms_eval.models.simple.gemma4:Gemma4`) puts video files in the
prompt as videos through the checkpoint's processor; ``sharp_gemma4`` runs it pruned.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, InputError
from ..hf_protocol import ModelCall
from ..steps.locate import VisualLayout
from . import tiny
from .base import LmmsWrapper, ModelAdapter, TinyModel, input_ids_or_raise, mixed_frame_sizes

# The value a black pixel has after Gemma 4's processor: rescaled by 1/255, normalised with mean 0 and std 1.
BLACK = 0.0


# ------------------------------------------------------------------------------------------------ locate
def frame_map_gemma4(input_ids: torch.Tensor, video_token_id: int) -> torch.Tensor:
    """[b, L] frame index of each video token (every run of consecutive video tokens is one frame), -1 elsewhere."""
    is_video = input_ids == video_token_id
    starts = is_video & ~F.pad(is_video[:, :-1], (1, 0), value=False)
    return torch.where(is_video, starts.long().cumsum(dim=1) - 1, -1)


def _frame_grid(
    frame_map: torch.Tensor, video_position_ids: torch.Tensor | None, pooling: int
) -> tuple[int, int] | None:
    """The frame size (h, w) in soft tokens, or None when it is unknown or differs between frames; `InputError`
    when `video_position_ids` does not describe the frames of `input_ids`.

    The adapter's one host sync: each frame's token count (smallest and largest), the frames, and with
    `video_position_ids` each frame's patch rows and columns (smallest and largest), read at once.
    """
    b, seq_len = frame_map.shape
    sizes = torch.zeros(b, seq_len + 1, dtype=torch.long, device=frame_map.device)
    sizes.scatter_add_(1, frame_map + 1, torch.ones_like(frame_map))  # column f + 1: tokens of frame f
    sizes = sizes[:, 1:]
    present = sizes > 0
    big = seq_len + 1
    facts = [
        torch.where(present, sizes, big).amin(),
        sizes.amax(),
        present.sum(),
    ]
    if video_position_ids is not None:
        positions = video_position_ids.to(frame_map.device).long()  # [frames, patches, 2]: (x, y), -1 padding
        real = (positions != -1).all(dim=-1)
        extent = torch.where(real[..., None], positions, -1).amax(dim=1) + 1  # [frames, 2]: columns, rows
        tokens = real.sum(dim=1) // pooling**2
        facts += [
            extent.amin(dim=0),
            extent.amax(dim=0),
            torch.tensor([positions.shape[0]], device=frame_map.device),
            tokens.amin(),
            tokens.amax(),
        ]
    values = torch.cat([f.reshape(-1) for f in facts]).tolist()
    smallest, largest, frames = values[:3]
    if frames == 0:
        return None
    if video_position_ids is None:
        side = math.isqrt(smallest)
        return (side, side) if smallest == largest == side * side else None
    (min_w, min_h), (max_w, max_h), rows, fewest, most = values[3:5], values[5:7], *values[7:]
    if rows != frames or (fewest, most) != (smallest, largest):
        raise InputError(
            f"gemma4: input_ids hold {frames} frames of {smallest}..{largest} video tokens, `video_position_ids` "
            f"describes {rows} frames of {fewest}..{most}; build the inputs with the model's processor."
        )
    if (min_w, min_h) != (max_w, max_h):
        return None
    return max_h // pooling, max_w // pooling


def locate_gemma4(model: nn.Module, call: ModelCall, declared: torch.Tensor | None) -> VisualLayout | None:
    """Each run of video tokens is a frame (see the module docstring); images and audio are not pruned."""
    input_ids = input_ids_or_raise("gemma4", call)
    config = model.config
    frame_map = frame_map_gemma4(input_ids, config.video_token_id)
    # `video_position_ids` when the call carries them (a plain forward; `generate` drops them before the prefill)
    video_position_ids = call.video_position_ids
    grid = _frame_grid(frame_map, video_position_ids, config.vision_config.pooling_kernel_size)
    return VisualLayout.from_frame_map(frame_map, grid=grid)


# Under `generate`, transformers encodes the video before the prefill and drops `video_position_ids`: the prefill
# knows a frame's size only when its token count is a square.
GENERATE_GRID_HINT = (
    " Under generate, transformers drops video_position_ids before the prefill, so Gemma 4's frame size is known "
    "only for square frames: resize the video to a square aspect ratio, or prune without PosC."
)


# ------------------------------------------------------------------------------------------------ black frame
def patch_positions(rows: int, cols: int, device: Any = None) -> torch.Tensor:
    """[rows * cols, 2] (x, y) of each patch of a frame, row-major, as the processor lays them out."""
    ys, xs = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
    return torch.stack([xs, ys], dim=-1).reshape(rows * cols, 2)


def blank_frame_gemma4(model: nn.Module, layout: VisualLayout, blank_token_id: int | None) -> torch.Tensor:
    """The vision tower, pooler and `embed_vision` on one black frame of the layout's size: [h * w, D]."""
    if layout.grid is None:
        raise InputError(mixed_frame_sizes("gemma4", GENERATE_GRID_HINT))
    vision = model.config.vision_config
    k, patch = vision.pooling_kernel_size, vision.patch_size
    rows, cols = layout.grid[0] * k, layout.grid[1] * k
    base = model.model if hasattr(model, "model") else model
    param = next(base.vision_tower.parameters())
    pixels = torch.full((1, rows * cols, 3 * patch * patch), BLACK, device=param.device, dtype=param.dtype)
    positions = patch_positions(rows, cols, param.device)[None]
    with torch.no_grad():
        features = base.get_video_features(
            pixel_values_videos=pixels,
            video_position_ids=positions,
            num_frames_per_video=torch.tensor([1]),
        )
    return features.pooler_output[0]


# ------------------------------------------------------------------------------------------------ FLOPs
def vision_flops_gemma4(config: Any, num_frames: int, video_grid_thw: tuple[int, int, int] | None) -> int:
    """The vision tower on every frame's patches (attention within each frame), the k x k pooling and
    `embed_vision` (matmuls only).

    `video_grid_thw` = (frames, patch rows, patch columns) of one frame, as the tower runs it. The processor pads
    every frame to max_soft_tokens * k^2 patches, and the tower runs the padding too: pass rows x columns of the
    real patches for the frame's own work, or (frames, 1, max_soft_tokens * k^2) for what the kernels run (the
    pooling and projection then count max_soft_tokens tokens a frame, the real ones being fewer).
    """
    if video_grid_thw is None:
        raise ConfigError("Gemma 4: pass video_grid_thw=(frames, patch rows, patch columns) of a frame.")
    vision = config.vision_config
    text_hidden = config.get_text_config().hidden_size
    t, h, w = (int(x) for x in video_grid_thw)
    p, e, i = h * w, vision.hidden_size, vision.intermediate_size
    heads, kv_heads = vision.num_attention_heads, vision.num_key_value_heads
    head_dim = getattr(vision, "head_dim", None) or e // heads
    tokens = p // vision.pooling_kernel_size**2
    per_frame = 2 * p * 3 * vision.patch_size**2 * e  # patch embedding
    projections = 2 * p * e * head_dim * (2 * heads + 2 * kv_heads)  # q, o; k, v
    attention = 4 * p * p * head_dim * heads
    per_frame += vision.num_hidden_layers * (projections + attention + 2 * 3 * p * e * i)
    per_frame += 2 * tokens * p * e  # pooling: the averaging matmul
    per_frame += 2 * tokens * e * text_hidden  # embed_vision
    return t * per_frame


# ------------------------------------------------------------------------------------------------ processor
def convert_video_to_patches(video: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[T, C, H, W] -> [T, (H / p) * (W / p), p * p * C]: patches row-major, each (row, column, channel)."""
    frames, channels, height, width = video.shape
    rows, cols = height // patch_size, width // patch_size
    patches = video.reshape(frames, channels, rows, patch_size, cols, patch_size)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(frames, rows * cols, -1)


@cache
def torch_video_processors() -> tuple[type, ...]:
    """Gemma 4's video processor on torch ops, for machines without torchvision (transformers' module cannot be
    imported there: a signature names torchvision's `InterpolationMode`); built on first use.

    Its steps are transformers' `Gemma4VideoProcessor`'s: the base pipeline's sampling (``num_frames`` = 32 evenly
    spaced frames by default), a resize of each video keeping its aspect ratio to the largest size within
    ``max_soft_tokens`` * k^2 patches whose sides are multiples of k * patch (bicubic, antialiased), rescale by
    1/255 with mean 0 and std 1, then each frame cut into patch x patch patches (row-major; values per patch in
    (row, column, channel) order), padded with zeros to max_soft_tokens * k^2 patches, with (x, y) patch positions
    (-1 for the padding). Same name, options, defaults and outputs (``pixel_values_videos``,
    ``video_position_ids``, ``num_frames_per_video``, ``num_soft_tokens_per_video``).
    """
    from transformers.image_processing_utils import BatchFeature
    from transformers.image_utils import PILImageResampling
    from transformers.models.gemma4.processing_gemma4 import get_aspect_ratio_preserving_size
    from transformers.processing_utils import VideosKwargs
    from transformers.video_processing_utils import BaseVideoProcessor

    from .processors import TorchVideoOps, _torch_mode, interpolate_frames

    supported = (70, 140, 280, 560, 1120)

    class Gemma4VideoProcessorKwargs(VideosKwargs, total=False):
        patch_size: int
        max_soft_tokens: int
        pooling_kernel_size: int

    class Gemma4VideoProcessor(TorchVideoOps, BaseVideoProcessor):
        """transformers' Gemma4VideoProcessor with torch ops in place of torchvision's."""

        resample = PILImageResampling.BICUBIC
        image_mean = [0.0, 0.0, 0.0]
        image_std = [1.0, 1.0, 1.0]
        size = None
        default_to_square = True
        do_convert_rgb = True
        do_resize = True
        do_rescale = True
        do_normalize = True
        num_frames = 32
        do_sample_frames = True
        patch_size = 16
        max_soft_tokens = 70
        pooling_kernel_size = 3
        valid_kwargs = Gemma4VideoProcessorKwargs
        model_input_names = ["pixel_values_videos", "video_position_ids", "num_frames_per_video"]

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            if self.max_soft_tokens not in supported:
                raise ValueError(f"`max_soft_tokens` must be one of {supported}, got {self.max_soft_tokens}.")

        def _validate_preprocess_kwargs(self, **kwargs: Any) -> None:
            kwargs["do_resize"] = False  # the size comes from the patch budget, not `size`
            super()._validate_preprocess_kwargs(**kwargs)

        def aspect_ratio_preserving_resize(
            self, video: torch.Tensor, patch_size: int, max_patches: int, pooling_kernel_size: int, resample: Any
        ) -> torch.Tensor:
            height, width = get_aspect_ratio_preserving_size(
                height=video.shape[-2],
                width=video.shape[-1],
                patch_size=patch_size,
                max_patches=max_patches,
                pooling_kernel_size=pooling_kernel_size,
            )
            return interpolate_frames(video, (height, width), _torch_mode(resample), antialias=True)

        def _preprocess(
            self,
            videos: list[torch.Tensor],
            do_resize: bool,
            resample: Any,
            do_rescale: bool,
            rescale_factor: float,
            do_normalize: bool,
            image_mean: Any,
            image_std: Any,
            return_tensors: Any,
            patch_size: int | None = None,
            max_soft_tokens: int | None = None,
            pooling_kernel_size: int | None = None,
            **kwargs: Any,
        ) -> BatchFeature:
            if max_soft_tokens not in supported:
                raise ValueError(f"`max_soft_tokens` must be one of {supported}, got {max_soft_tokens}.")
            max_patches = max_soft_tokens * pooling_kernel_size**2
            pixel_values, position_ids, soft_tokens, frame_counts = [], [], [], []
            for video in videos:  # [T, C, H, W]
                if do_resize:
                    video = self.aspect_ratio_preserving_resize(
                        video, patch_size, max_patches, pooling_kernel_size, resample
                    )
                video = self.rescale_and_normalize(
                    video, do_rescale, rescale_factor, do_normalize, image_mean, image_std
                )
                frames = video.shape[0]
                rows, cols = video.shape[-2] // patch_size, video.shape[-1] // patch_size
                patches = convert_video_to_patches(video, patch_size)
                positions = patch_positions(rows, cols, video.device)[None].repeat(frames, 1, 1)
                soft_tokens.append(patches.shape[1] // pooling_kernel_size**2)
                frame_counts.append(frames)
                if (pad := max_patches - patches.shape[1]) > 0:
                    patches = F.pad(patches, (0, 0, 0, pad), value=0)
                    positions = F.pad(positions, (0, 0, 0, pad), value=-1)
                pixel_values.append(patches)
                position_ids.append(positions)
            data = {
                "pixel_values_videos": torch.cat(pixel_values, dim=0),  # [all frames, max_patches, p * p * 3]
                "video_position_ids": torch.cat(position_ids, dim=0),  # [all frames, max_patches, 2]
                "num_frames_per_video": frame_counts,
                "num_soft_tokens_per_video": soft_tokens,
            }
            return BatchFeature(data=data, tensor_type=return_tensors)

    Gemma4VideoProcessor.__module__ = __name__
    return (Gemma4VideoProcessor,)


# ------------------------------------------------------------------------------------------------ tiny model
# Token ids of the tiny vocabulary: <boi> / <eoi> are the shared vision start / end ids.
AUDIO_TOKEN_ID, BOA_ID, EOA_ID = 254, 255, 249
TIMESTAMP_TOKENS = 3  # "00:01 " before each frame's <boi>: a few text tokens
POOLING = 2  # pooling_kernel_size of the tiny vision tower
PATCH = 4


def tiny_layer_types(num_layers: int) -> list[str]:
    """Full, sliding, sliding, full, ...: a full-attention layer first (every K >= 1 scores at one), and last
    (Gemma 4 forces it)."""
    kinds = ["full_attention" if i % 3 == 0 else "sliding_attention" for i in range(num_layers)]
    kinds[-1] = "full_attention"
    return kinds


def tiny_gemma4_config(num_layers: int, shared_kv_layers: int | None = None, **token_ids: int) -> Any:
    """A tiny Gemma 4 configuration of the real class: text 64 wide (4 heads of 16, 2 KV heads; full layers of the
    same width), sliding window 8, bidirectional attention inside frames in sliding layers, per-layer inputs of 8,
    and (`shared_kv_layers`, default 2 from 6 layers on, else 0) the last layers reusing earlier KV; a one-block
    vision tower (patch 4, 2 x 2 pooling); no audio tower. `token_ids` overrides the tiny vocabulary's ids."""
    import transformers

    if shared_kv_layers is None:
        shared_kv_layers = 2 if num_layers >= 6 else 0
    text = tiny.text_config(num_layers, rope=False)
    text.update(
        head_dim=16,
        global_head_dim=16,
        layer_types=tiny_layer_types(num_layers),
        sliding_window=8,
        use_bidirectional_attention="vision",
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=tiny.VOCAB,
        num_kv_shared_layers=shared_kv_layers,
    )
    tiny.take_text_ids(token_ids, text)
    text["vocab_size_per_layer_input"] = text["vocab_size"]
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        patch_size=PATCH,
        pooling_kernel_size=POOLING,
        position_embedding_size=64,
    )
    ids = dict(
        boi_token_id=tiny.VISION_START_ID,
        eoi_token_id=tiny.VISION_END_ID,
        image_token_id=tiny.IMAGE_TOKEN_ID,
        video_token_id=tiny.VIDEO_TOKEN_ID,
        audio_token_id=AUDIO_TOKEN_ID,
        boa_token_id=BOA_ID,
        eoa_token_index=EOA_ID,
    )
    ids.update(token_ids)
    config = transformers.Gemma4Config(text_config=text, vision_config=vision, audio_config=None, **ids)
    return tiny.with_text_ids(config, text)


def draw_patch_positions(model: nn.Module, seed: int) -> nn.Module:
    """Draw a Gemma 4 model's patch position table at random (transformers initialises it to ones, which would make
    every patch of a uniform frame alike; checkpoints have learned ones); returns the model."""
    table = model.model.vision_tower.patch_embedder.position_embedding_table
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        table.copy_(torch.randn(table.shape, generator=generator).to(table.dtype) * 0.5)
    return model


def tiny_gemma4(num_layers: int, attn_implementation: str, dtype: torch.dtype, seed: int) -> nn.Module:
    """`TinyModel.build`: the tiny model, its patch position table drawn at random (`draw_patch_positions`)."""
    build = tiny.builder("Gemma4ForConditionalGeneration", tiny_gemma4_config)
    return draw_patch_positions(build(num_layers, attn_implementation, dtype, seed), seed)


def video_ids(frames: int, tokens_per_frame: int, generator: torch.Generator) -> torch.Tensor:
    """One video's ids as Gemma4Processor writes it: per frame a timestamp, <boi>, the frame's tokens, <eoi>."""
    parts = []
    for _ in range(frames):
        parts.append(torch.randint(3, 200, (TIMESTAMP_TOKENS,), generator=generator))
        parts.append(torch.tensor([tiny.VISION_START_ID]))
        parts.append(torch.full((tokens_per_frame,), tiny.VIDEO_TOKEN_ID))
        parts.append(torch.tensor([tiny.VISION_END_ID]))
    return torch.cat(parts)


def max_soft_tokens_for(tokens_per_frame: int) -> int:
    """The smallest of the processor's budgets (70, 140, ...) that holds a frame of this many tokens."""
    return next(n for n in (70, 140, 280, 560, 1120) if n >= tokens_per_frame)


def tiny_inputs_gemma4(
    model: nn.Module,
    prefix_lens: list[int],
    suffix_lens: list[int],
    video: tiny.TinyVideo,
    padding_side: str,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Each sample: prefix, then per frame timestamp text + <boi> + grid x grid video tokens + <eoi>, then suffix,
    padded on one side; the processor's video outputs (frames of (grid * k)^2 patches with values in [0, 1],
    padded to its patch budget, (x, y) positions, frames per video) and `mm_token_type_ids` (2 at video tokens)."""
    generator = torch.Generator().manual_seed(seed)
    per_frame = video.grid**2
    rows = []
    for p, s in zip(prefix_lens, suffix_lens, strict=True):
        prefix = torch.randint(3, 200, (p,), generator=generator)
        suffix = torch.randint(3, 200, (s,), generator=generator)
        rows.append(torch.cat([prefix, video_ids(video.frames, per_frame, generator), suffix]))
    inputs = tiny.pad_rows(rows, padding_side)
    vision = model.config.vision_config
    k, patch = vision.pooling_kernel_size, vision.patch_size
    side = video.grid * k
    max_patches = max_soft_tokens_for(per_frame) * k**2
    frames = len(prefix_lens) * video.frames
    pixels = torch.zeros(frames, max_patches, 3 * patch**2)
    pixels[:, : side * side] = torch.rand(frames, side * side, 3 * patch**2, generator=generator)
    positions = torch.full((frames, max_patches, 2), -1, dtype=torch.long)
    positions[:, : side * side] = patch_positions(side, side)
    inputs["pixel_values_videos"] = pixels
    inputs["video_position_ids"] = positions
    inputs["num_frames_per_video"] = torch.tensor([video.frames] * len(prefix_lens))
    inputs["mm_token_type_ids"] = (inputs["input_ids"] == model.config.video_token_id).long() * 2
    return inputs


GEMMA4 = ModelAdapter(
    name="gemma4",
    class_names=("Gemma4ForConditionalGeneration", "Gemma4Model"),
    decoder_paths=("model.language_model", "language_model"),
    locate=locate_gemma4,
    blank_frame=blank_frame_gemma4,
    blank_frame_needs_grid=True,
    grid_hint=GENERATE_GRID_HINT,
    model_types=("gemma4",),
    processor_class="Gemma4Processor",
    video_processors=torch_video_processors,
    vision_flops=vision_flops_gemma4,
    lmms=LmmsWrapper(
        model_id="sharp_gemma4",
        simple="lmms_eval.models.simple.gemma4:Gemma4",
        chat=None,
        default_pretrained="google/gemma-4-31B-it",
    ),
    tiny=TinyModel(build=tiny_gemma4, inputs=tiny_inputs_gemma4),
)
