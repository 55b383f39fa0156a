"""VideoLLaMA3 (transformers `video_llama_3`: a SigLIP-style ViT with 2-D RoPE + Qwen2 text model).

The processor writes each frame as ``Time {t:.1f}s:`` followed by that frame's `video_token_id` tokens, frames
joined by ``,``: every frame is one run of video tokens, with text between frames and between videos. The
video processor's Differential Frame Pruning (`use_token_compression`, on by default) keeps, after the first
frame of each video, only the merged tokens whose patches changed (at least one a frame): frames then have
different lengths and are not h x w rasters. So the frames are found from the runs in `input_ids` alone
(`generate`, which encodes the video before the prefill, passes neither pixels nor grids), and the layout
carries no grid.

The text model is Qwen2 with 1-D RoPE; images use their own `image_token_id` and stay text to sharp-prune.

The family's whole entry: locating video tokens, the black frame, the vision tower's FLOPs, the tiny random
configuration of the real class, the checkpoints and processor `run` loads. transformers' video processor imports
torchvision; without it `run` builds the checkpoint's processor with the torch-only port
(`sharp_prune.models.video_llama_3_video_processing`: the official steps, Differential Frame Pruning included).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..hf_protocol import ModelCall
from ..steps.locate import VisualLayout
from . import tiny
from .base import ModelAdapter, TinyModel, black_pixels, input_ids_or_raise

# The video processor's merge size (VideoLlama3VideoProcessor.merge_size; images use 1): only the vision FLOPs
# need it, as the projector runs on merged tokens.
VIDEO_MERGE_SIZE = 2


def locate_video_llama_3(model: nn.Module, call: ModelCall, declared: torch.Tensor | None) -> VisualLayout | None:
    """Each run of `video_token_id` tokens is one frame (the processor puts a timestamp before every frame);
    frames count on across the videos of a sample."""
    input_ids = input_ids_or_raise("video_llama_3", call)
    is_video = input_ids == model.config.video_token_id
    starts = is_video.clone()
    starts[:, 1:] &= ~is_video[:, :-1]  # first token of each run
    frame_map = torch.where(is_video, starts.long().cumsum(dim=1) - 1, -1)
    if call.video_grid_thw is not None:
        _check_frames_against_grids(frame_map, call.video_grid_thw)
    return VisualLayout.from_frame_map(frame_map, grid=None)


def _check_frames_against_grids(frame_map: torch.Tensor, grid_thw: torch.Tensor) -> None:
    """With the processor's grids at hand: the batch's runs must be as many as the videos' frames (a video whose
    frames were not separated by timestamps would read as fewer, longer frames)."""
    runs = frame_map.max(dim=1).values.add(1).sum()  # -1 (no video) counts 0
    frames = grid_thw[:, 0].to(runs.device).long().sum()
    runs, frames = torch.stack([runs, frames]).tolist()  # the adapter's one host sync, when grids are passed
    if runs != frames:
        raise InputError(
            f"video_llama_3: `video_grid_thw` describes {frames} frame(s), but input_ids hold {runs} run(s) of video "
            "tokens; every frame must be its own run (the processor writes 'Time t s:' before each): build inputs "
            "with the model's processor."
        )


# VideoLLaMA3's image and video processors normalise with mean = std = 0.5.
_BLACK = black_pixels((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def blank_frame_video_llama_3(model: nn.Module, layout: VisualLayout, blank_token_id: int | None) -> torch.Tensor:
    """The vision tower + projector on a black frame: [1, D].

    The ViT has no absolute position embedding (only 2-D RoPE inside attention), so on a constant frame every
    patch has the same input and the same value vector, and every output token is the same vector whatever the
    frame size or a token's place (up to rounding); pixel unshuffling averages equal vectors. One patch gives
    that vector, which PosC then tiles over every frame, however compressed.
    """
    vision = model.config.vision_config
    base = model.model if hasattr(model, "model") else model
    param = next(base.vision_model.parameters())
    # one patch, flattened channel-major as the processor's patchify does
    pixels = _BLACK.to(param.device, param.dtype).repeat_interleave(vision.patch_size**2)[None]
    grid = torch.tensor([[1, 1, 1]], device=param.device)
    merge = torch.tensor([1], device=param.device)
    with torch.no_grad():
        features = base.get_video_features(pixel_values_videos=pixels, video_grid_thw=grid, video_merge_sizes=merge)
    return features.pooler_output[0]


def vision_flops_video_llama_3(config: Any, num_frames: int, video_grid_thw: tuple[int, int, int] | None) -> int:
    """The ViT on (t, h, w) patches with attention inside each frame, and the projector on every merged token
    (merge `VIDEO_MERGE_SIZE`; it runs before Differential Frame Pruning drops tokens): matmuls only."""
    if video_grid_thw is None:
        raise ConfigError("VideoLLaMA3: pass video_grid_thw=(t, h, w) in patches.")
    vision = config.vision_config
    text_hidden = config.get_text_config().hidden_size
    t, h, w = (int(x) for x in video_grid_thw)
    patches, e, i = t * h * w, vision.hidden_size, vision.intermediate_size
    total = 2 * patches * vision.num_channels * vision.patch_size**2 * e  # patch embedding
    total += vision.num_hidden_layers * (patches * (2 * 4 * e * e + 2 * 2 * e * i) + 4 * e * t * (h * w) ** 2)
    merged = patches // VIDEO_MERGE_SIZE**2
    total += 2 * merged * (e * text_hidden + text_hidden * text_hidden)
    return total


def torch_video_processors() -> tuple[type, ...]:
    """VideoLLaMA3's video processor on torch ops, for machines without torchvision."""
    from .video_llama_3_video_processing import VideoLlama3VideoProcessor

    return (VideoLlama3VideoProcessor,)


# ------------------------------------------------------------------------------------------------ tiny model
TIME_TOKENS = (7, 8)  # stand-ins for the tokens of "Time t s:" before each frame
COMMA_TOKEN = 9  # and for the "," between frames


def tiny_video_llama_3_config(num_layers: int, **overrides: Any) -> Any:
    """A one-layer ViT (patch 4, 32 wide) and a Qwen2 text model. `overrides` replaces config fields (token ids,
    vocab_size, ...)."""
    from transformers import VideoLlama3Config

    text = tiny.text_config(num_layers, rope=False)
    tiny.take_text_ids(overrides, text)
    fields: dict[str, Any] = dict(image_token_id=tiny.IMAGE_TOKEN_ID, video_token_id=tiny.VIDEO_TOKEN_ID)
    fields.update(overrides)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=4)
    config = VideoLlama3Config(text_config=dict(model_type="qwen2", **text), vision_config=vision, **fields)
    return tiny.with_text_ids(config, text)


tiny_video_llama_3 = tiny.builder(
    "VideoLlama3ForConditionalGeneration", tiny_video_llama_3_config
)  # the tiny configuration's model, with random weights


def video_tokens(frames: list[int]) -> torch.Tensor:
    """The processor's layout of one video whose frame f keeps `frames[f]` tokens: ``Time t s:`` + the frame's
    tokens, frames joined by ``,`` (token ids of the tiny vocabulary)."""
    pieces = []
    for f, count in enumerate(frames):
        if f:
            pieces.append(torch.tensor([COMMA_TOKEN]))
        pieces += [torch.tensor(TIME_TOKENS), torch.full((count,), tiny.VIDEO_TOKEN_ID)]
    return torch.cat(pieces)


def tiny_inputs_video_llama_3(
    model: nn.Module,
    prefix_lens: list[int],
    suffix_lens: list[int],
    video: tiny.TinyVideo,
    padding_side: str,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Per sample, text + one video of F timestamped frames of grid x grid merged tokens (no frame compressed)
    + text; flattened patches, `video_grid_thw` and `video_merge_sizes` as the video processor gives them."""
    generator = torch.Generator().manual_seed(seed)
    block = video_tokens([video.grid**2] * video.frames)
    rows = []
    for p, s in zip(prefix_lens, suffix_lens, strict=True):
        prefix = torch.randint(10, 200, (p,), generator=generator)
        suffix = torch.randint(10, 200, (s,), generator=generator)
        rows.append(torch.cat([prefix, block, suffix]))
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tiny.PAD_ID)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
        input_ids[i, sl] = r
        attention_mask[i, sl] = 1
    vision = model.config.vision_config
    b = len(prefix_lens)
    side = video.grid * VIDEO_MERGE_SIZE
    patches = video.frames * side * side
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values_videos": torch.randn(b * patches, 3 * vision.patch_size**2, generator=generator),
        "video_grid_thw": torch.tensor([[video.frames, side, side]] * b),
        "video_merge_sizes": torch.full((b,), VIDEO_MERGE_SIZE),
    }


VIDEO_LLAMA_3 = ModelAdapter(
    name="video_llama_3",
    class_names=("VideoLlama3ForConditionalGeneration", "VideoLlama3Model"),
    decoder_paths=("model.language_model", "language_model"),
    locate=locate_video_llama_3,
    blank_frame=blank_frame_video_llama_3,
    model_types=("video_llama_3",),
    processor_class="VideoLlama3Processor",
    video_processors=torch_video_processors,
    vision_flops=vision_flops_video_llama_3,
    # lmms-eval's videollama3 wrapper loads DAMO-NLP-SG's remote code, not the transformers class
    lmms=None,
    tiny=TinyModel(build=tiny_video_llama_3, inputs=tiny_inputs_video_llama_3),
)
