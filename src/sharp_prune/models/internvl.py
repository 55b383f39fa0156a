"""InternVL (InternVL3 / InternVL3.5 `-hf` checkpoints): a video is a row of image tiles, one per frame.

InternVL has no video token. Its processor writes each frame as one tile of image-context tokens between
`<img>` and `</img>`, with the frame's number as text before it (`processing_internvl.replace_video_token`)::

    Frame1: <img><IMG_CONTEXT> x image_seq_length</img>\\nFrame2: <img>...</img>

and an image as one `<img>...</img>` span of image_seq_length tokens per tile (several tiles when the processor
crops it into patches, plus a thumbnail). Every tile is encoded on its own (vision tower, pixel shuffle,
projector), so every run of `config.image_token_id` tokens is a whole number of tiles, each an s x s raster.
The ids cannot tell a video frame from an image tile, so each tile of the prompt is one frame here: a video's
frames in order, and an image's tiles as frames of their own. Frames are found from `input_ids` alone (runs of
image-context tokens, cut every tokens-per-tile), under `generate` too, where the prefill gets no pixels.

The family's whole entry: locating video tokens, the black frame, the vision tower's FLOPs, a torch-only video
processor (transformers' imports torchvision), the tiny random configuration of the real class, the
checkpoints and processor `run` loads, the lmms-eval wrapper.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, InputError
from ..hf_protocol import ModelCall
from ..steps.locate import VisualLayout
from . import tiny
from .base import LmmsWrapper, ModelAdapter, TinyModel, black_pixels, input_ids_or_raise


def tile_grid(config: Any) -> tuple[int, int]:
    """(rows, cols) of one tile's tokens: the patch grid shrunk by the pixel shuffle's `downsample_ratio`."""
    vision = config.vision_config
    (height, width), (patch_h, patch_w) = _pair(vision.image_size), _pair(vision.patch_size)
    ratio = config.downsample_ratio
    return int(height // patch_h * ratio), int(width // patch_w * ratio)


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


def frame_map_internvl(
    input_ids: torch.Tensor, image_token_id: int, per_tile: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """[b, L] frame of each image-context token (-1 elsewhere), and [b] whether a sample has a run of them that is
    not a whole number of tiles. A frame starts at each run's start and every `per_tile` tokens into a run."""
    is_tile = input_ids == image_token_id
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    run_start = is_tile & ~F.pad(is_tile[:, :-1], (1, 0), value=False)
    run_end = is_tile & ~F.pad(is_tile[:, 1:], (0, 1), value=False)
    into_run = positions - torch.where(run_start, positions, 0).cummax(dim=1).values  # offset in its run
    frame_start = is_tile & (into_run % per_tile == 0)
    frame_map = torch.where(is_tile, frame_start.long().cumsum(dim=1) - 1, -1)
    ragged = (run_end & ((into_run + 1) % per_tile != 0)).any(dim=1)
    return frame_map, ragged


def locate_internvl(model: nn.Module, call: ModelCall, declared: torch.Tensor | None) -> VisualLayout | None:
    """Each tile of `image_token_id` tokens is a frame (see the module docstring)."""
    input_ids = input_ids_or_raise("internvl", call)
    grid = tile_grid(model.config)
    per_tile = grid[0] * grid[1]
    frame_map, ragged = frame_map_internvl(input_ids, model.config.image_token_id, per_tile)
    if bool(ragged.any()):  # the adapter's one host sync: a cut tile would put two tiles' tokens in one frame
        rows = ragged.nonzero().flatten().tolist()
        raise InputError(
            f"internvl: sample(s) {rows} hold a run of image-context tokens that is not a whole number of tiles of "
            f"{per_tile} tokens (the vision config's tile, after the pixel shuffle); build inputs with the model's "
            "processor, with its image_seq_length equal to that."
        )
    return VisualLayout.from_frame_map(frame_map, grid=grid)


# The InternVL -hf checkpoints' processors normalise with ImageNet's mean and std (convert_internvl_weights_to_hf).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BLACK = black_pixels(IMAGENET_MEAN, IMAGENET_STD)


def blank_frame_internvl(model: nn.Module, layout: VisualLayout, blank_token_id: int | None) -> torch.Tensor:
    """Vision tower + pixel shuffle + projector on one black tile: [tokens per tile, D]."""
    height, width = _pair(model.config.vision_config.image_size)
    base = model.model if hasattr(model, "model") else model
    param = next(base.vision_tower.parameters())
    pixels = _BLACK.to(param.device, param.dtype).view(1, 3, 1, 1).expand(1, 3, height, width)
    with torch.no_grad():
        features = base.get_image_features(pixel_values=pixels).pooler_output
    return features[0]


def vision_flops_internvl(config: Any, num_frames: int, video_grid_thw: tuple[int, int, int] | None) -> int:
    """InternViT on one tile per frame (a CLS token and every patch), the pixel shuffle's projector (matmuls)."""
    if num_frames < 1:
        raise ConfigError("InternVL: pass num_frames >= 1 (one tile per frame).")
    vision = config.vision_config
    text_hidden = config.get_text_config().hidden_size
    (height, width), (patch_h, patch_w) = _pair(vision.image_size), _pair(vision.patch_size)
    e, i = vision.hidden_size, vision.intermediate_size
    patches = (height // patch_h) * (width // patch_w)
    n = patches + 1  # the CLS token runs through every layer
    per_tile = 2 * patches * vision.num_channels * patch_h * patch_w * e  # patch embedding (a strided conv)
    per_tile += vision.num_hidden_layers * (n * (2 * 4 * e * e + 2 * 2 * e * i) + 4 * e * n * n)
    rows, cols = tile_grid(config)
    merged = e * int(1 / config.downsample_ratio) ** 2  # channels after the pixel shuffle
    per_tile += 2 * rows * cols * (merged * text_hidden + text_hidden * text_hidden)  # projector
    return num_frames * per_tile


# ------------------------------------------------------------------------------------------------ video processor
@cache
def torch_video_processors() -> tuple[type, ...]:
    """InternVL's video processor on torch ops, for machines without torchvision (transformers' module imports
    torchvision at the top); built on first use.

    Its steps are transformers' `InternVLVideoProcessor`'s: the base pipeline (resize to `size`, centre crop,
    rescale and normalise; its `_preprocess` is the base one), the same defaults, and the same frame sampling
    (`num_frames` or `fps` frames evenly spaced from a shift of half a step, with `do_sample_frames=True`).
    """
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
    from transformers.processing_utils import VideosKwargs
    from transformers.video_processing_utils import BaseVideoProcessor

    from .processors import TorchVideoOps

    class InternVLVideoProcessorInitKwargs(VideosKwargs, total=False):
        initial_shift: bool | float | int

    class InternVLVideoProcessor(TorchVideoOps, BaseVideoProcessor):
        """transformers' InternVLVideoProcessor with torch ops in place of torchvision's."""

        resample = PILImageResampling.BICUBIC
        image_mean = OPENAI_CLIP_MEAN
        image_std = OPENAI_CLIP_STD
        size = {"height": 384, "width": 384}
        do_resize = True
        do_rescale = True
        do_normalize = True
        do_convert_rgb = True
        initial_shift = True
        do_sample_frames = False
        valid_kwargs = InternVLVideoProcessorInitKwargs

        def sample_frames(
            self,
            metadata: Any,
            num_frames: int | None = None,
            fps: float | None = None,
            initial_shift: bool | float | None = None,
            **kwargs: Any,
        ) -> torch.Tensor:
            """Indices of `num_frames` (or `fps` per second) frames, evenly spaced from `initial_shift`."""
            num_frames = num_frames if num_frames is not None else self.num_frames
            initial_shift = initial_shift if initial_shift is not None else self.initial_shift
            total = metadata.total_num_frames
            if num_frames is None and fps is not None:
                if metadata is None or metadata.fps is None:
                    raise ValueError("sampling `fps` frames per second needs the video's metadata (its fps).")
                num_frames = int(total / metadata.fps * fps)
            if initial_shift is True:
                initial_shift = total / num_frames / 2
            if num_frames > total:
                raise ValueError(f"Video can't be sampled: num_frames={num_frames} exceeds total_num_frames={total}.")
            return torch.arange(initial_shift, total, total / num_frames).int()

    InternVLVideoProcessor.__module__ = __name__
    return (InternVLVideoProcessor,)


# ------------------------------------------------------------------------------------------------ tiny model
# Text ids the tiny layout uses around each tile, as the processor writes "Frame{i}: <img>...</img>\n".
FRAME_WORD, FRAME_NUMBER, COLON, NEWLINE = 200, 201, 241, 242


def tiny_internvl(num_layers: int, attn_implementation: str, dtype: torch.dtype, seed: int) -> nn.Module:
    """Qwen2 text model and a one-layer InternViT on 32 x 32 tiles, patch 4, pixel shuffle 0.5: 16 tokens a
    frame. `image_token_id` is the tiny vocabulary's video token."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    torch.manual_seed(seed)
    size, patch, ratio = 32, 4, 0.5
    config = InternVLConfig(
        text_config=dict(model_type="qwen2", **tiny.text_config(num_layers, rope=False)),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=size,
            patch_size=patch,
        ),
        image_token_id=tiny.VIDEO_TOKEN_ID,
        image_seq_length=int((size // patch * ratio) ** 2),
        downsample_ratio=ratio,
    )
    config.text_config.bos_token_id = 1
    config.text_config.eos_token_id = None
    return tiny.finish(InternVLForConditionalGeneration(config), attn_implementation, dtype)


def tiny_video_ids(frames: int, per_tile: int) -> torch.Tensor:
    """One video's ids as InternVLProcessor lays it out: "Frame{i}: <img>" tile "</img>", joined by newlines."""
    pieces = []
    for f in range(frames):
        if f:
            pieces.append(torch.tensor([NEWLINE]))
        label = [FRAME_WORD, FRAME_NUMBER + f % (COLON - FRAME_NUMBER), COLON, tiny.VISION_START_ID]
        pieces += [
            torch.tensor(label),
            torch.full((per_tile,), tiny.VIDEO_TOKEN_ID),
            torch.tensor([tiny.VISION_END_ID]),
        ]
    return torch.cat(pieces)


def tiny_inputs_internvl(
    model: nn.Module,
    prefix_lens: list[int],
    suffix_lens: list[int],
    video: tiny.TinyVideo,
    padding_side: str,
    seed: int,
) -> dict[str, torch.Tensor]:
    """`prefix + video + suffix` samples in the processor's layout, padded on one side; `pixel_values`
    [b * F, 3, H, W] (the processor's: every frame a tile, videos one after another)."""
    generator = torch.Generator().manual_seed(seed)
    rows, grid = [], tile_grid(model.config)
    video_ids = tiny_video_ids(video.frames, grid[0] * grid[1])
    for p, s in zip(prefix_lens, suffix_lens, strict=True):
        prefix = torch.randint(3, 200, (p,), generator=generator)
        suffix = torch.randint(3, 200, (s,), generator=generator)
        rows.append(torch.cat([prefix, video_ids, suffix]))
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tiny.PAD_ID)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
        input_ids[i, sl] = r
        attention_mask[i, sl] = 1
    height, width_px = _pair(model.config.vision_config.image_size)
    pixels = torch.randn(len(rows) * video.frames, 3, height, width_px, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixels}


INTERNVL = ModelAdapter(
    name="internvl",
    class_names=("InternVLForConditionalGeneration", "InternVLModel"),
    decoder_paths=("model.language_model", "language_model"),
    locate=locate_internvl,
    blank_frame=blank_frame_internvl,
    model_types=("internvl",),
    processor_class="InternVLProcessor",
    video_processors=torch_video_processors,
    vision_flops=vision_flops_internvl,
    lmms=LmmsWrapper(
        model_id="sharp_internvl",
        simple=None,  # lmms-eval's simple internvl* wrappers run the remote-code checkpoints, not this class
        chat="lmms_eval.models.chat.internvl_hf:InternVLHf",
        default_pretrained="OpenGVLab/InternVL3_5-8B-HF",
    ),
    tiny=TinyModel(build=tiny_internvl, inputs=tiny_inputs_internvl),
)
