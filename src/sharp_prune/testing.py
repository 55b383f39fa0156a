"""Tiny random-weight video LLMs of the real transformers classes, and inputs for them.

Real classes and real code paths at toy sizes: for tests, for checking an integration without a GPU,
and for timing shapes. Random weights give no meaningful attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

VIDEO_TOKEN_ID = 251
IMAGE_TOKEN_ID = 250
VISION_START_ID = 252
VISION_END_ID = 253
PAD_ID = 0
VOCAB = 256
TINY_FAMILIES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl")


def _text_config(num_layers: int, rope: bool) -> dict:
    config = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=32768,
        bos_token_id=1,
        eos_token_id=None,
        pad_token_id=PAD_ID,
    )
    if rope:
        config["rope_parameters"] = dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0)
    return config


def _tiny_siglip(image_size: int, patch_size: int) -> dict:
    """A one-layer SigLIP vision config for tiny LLaVA-OneVision models."""
    return dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )


def tiny_model(
    family: str,
    num_layers: int = 4,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised model of `family` ("llava_onevision", "qwen2_vl", "qwen2_5_vl"), in eval mode."""
    torch.manual_seed(seed)
    ids = dict(image_token_id=IMAGE_TOKEN_ID, video_token_id=VIDEO_TOKEN_ID)
    if family == "llava_onevision":
        config = LlavaOnevisionConfig(
            text_config=dict(model_type="qwen2", **_text_config(num_layers, rope=False)),
            vision_config=_tiny_siglip(image_size=32, patch_size=4),
            image_token_index=IMAGE_TOKEN_ID,
            video_token_index=VIDEO_TOKEN_ID,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
        )
        cls = LlavaOnevisionForConditionalGeneration
    elif family in ("qwen2_vl", "qwen2_5_vl"):
        vision = dict(patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, depth=1, num_heads=2)
        if family == "qwen2_vl":
            vision.update(embed_dim=32, hidden_size=64, mlp_ratio=2)
            config_cls, cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration
        else:
            vision.update(
                hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=16, fullatt_block_indexes=[0]
            )
            config_cls, cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        config = config_cls(
            text_config=_text_config(num_layers, rope=True),
            vision_config=vision,
            vision_start_token_id=VISION_START_ID,
            vision_end_token_id=VISION_END_ID,
            **ids,
        )
    else:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {TINY_FAMILIES}.")
    config.text_config.bos_token_id = 1
    config.text_config.eos_token_id = None
    model = cls(config).to(dtype).eval()
    model.set_attn_implementation(attn_implementation)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD_ID
    return model


@dataclass(frozen=True)
class TinyVideo:
    """Size of the synthetic video of each sample: frames, and tokens per frame side (Qwen-VL only:
    LLaVA-OV's grid follows from its vision config)."""

    frames: int = 4
    grid: int = 4  # tokens per frame = grid * grid (after pooling / merging)


def tiny_inputs(
    model: PreTrainedModel,
    prefix_lens: list[int],
    suffix_lens: list[int],
    video: TinyVideo = TinyVideo(),
    padding_side: str = "left",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Batch of `text prefix + video + text suffix` samples for a tiny model, padded on one side.

    Every sample has the same video size; prefix and suffix lengths may differ per sample.
    """
    generator = torch.Generator().manual_seed(seed)
    family = _family(model)
    grid = llava_grid(model) if family == "llava_onevision" else video.grid
    per_frame = grid * grid
    # LLaVA-OV: F * s * s tokens + 1 newline; Qwen-VL: t temporal patches of (grid x grid) merged tokens.
    n_video = video.frames * per_frame + (1 if family == "llava_onevision" else 0)
    rows = []
    for p, s in zip(prefix_lens, suffix_lens, strict=True):
        prefix = torch.randint(3, 200, (p,), generator=generator)
        suffix = torch.randint(3, 200, (s,), generator=generator)
        rows.append(torch.cat([prefix, torch.full((n_video,), VIDEO_TOKEN_ID), suffix]))
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), PAD_ID)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
        input_ids[i, sl] = r
        attention_mask[i, sl] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    b = len(rows)
    if family == "llava_onevision":
        size = model.config.vision_config.image_size
        inputs["pixel_values_videos"] = torch.randn(b, video.frames, 3, size, size, generator=generator)
    else:
        merge = model.config.vision_config.spatial_merge_size
        patch = model.config.vision_config.patch_size
        temporal = model.config.vision_config.temporal_patch_size
        h = w = grid * merge
        patches = video.frames * h * w
        inputs["pixel_values_videos"] = torch.randn(b * patches, 3 * temporal * patch * patch, generator=generator)
        inputs["video_grid_thw"] = torch.tensor([[video.frames, h, w]] * b)
        inputs["mm_token_type_ids"] = (input_ids == VIDEO_TOKEN_ID).int() * 2
    return inputs


def _family(model: PreTrainedModel) -> str:
    name = type(model).__name__
    if name.startswith("LlavaOnevision"):
        return "llava_onevision"
    if name.startswith("Qwen2_5_VL"):
        return "qwen2_5_vl"
    if name.startswith("Qwen2VL"):
        return "qwen2_vl"
    raise ValueError(f"no tiny inputs for {name}.")


def llava_grid(model: PreTrainedModel) -> int:
    """Tokens per frame side of a LLaVA-OV model's video path (patch grid pooled 2x2)."""
    vision = model.config.vision_config
    return -(-(vision.image_size // vision.patch_size) // 2)


def tiny_causal_lm(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0) -> PreTrainedModel:
    """A randomly initialised `LlamaForCausalLM` (GQA, RoPE) for the generic adapter."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**_text_config(num_layers, rope=False))
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation(attn_implementation)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD_ID
    return model


def sample_of(inputs: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """Sample `index` of a `tiny_inputs` batch as an unpadded batch of one (one video per sample)."""
    real = inputs["attention_mask"][index].bool()
    out = {
        "input_ids": inputs["input_ids"][index][real][None],
        "attention_mask": inputs["attention_mask"][index][real][None],
    }
    if "video_grid_thw" in inputs:
        per_video = int(inputs["video_grid_thw"][index].prod())
        out["pixel_values_videos"] = inputs["pixel_values_videos"][index * per_video : (index + 1) * per_video]
        out["video_grid_thw"] = inputs["video_grid_thw"][index : index + 1]
        out["mm_token_type_ids"] = inputs["mm_token_type_ids"][index][real][None]
    elif "pixel_values_videos" in inputs:
        out["pixel_values_videos"] = inputs["pixel_values_videos"][index : index + 1]
    return out


# LLaVA-OneVision's chat template (llava-hf checkpoints): images, then videos, then the text of each turn.
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% if message['content'] is string %}{{ '\\n' + message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
    "{% endfor %}{% endif %}{{'<|im_end|>\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tiny_llava_onevision_checkpoint(
    path: str | Path,
    num_layers: int = 4,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Save a complete tiny LLaVA-OneVision checkpoint (random weights, real processor) to `path`.

    The tokenizer is SmolLM2's (from `tokenizer_dir`, default the `sharp_prune.smollm2` cache, created on
    first use) with `<image>` and `<video>` added; the model's vocabulary covers it. Vision: 32 x 32 frames,
    patch 4, so 16 video tokens per frame (+ 1 newline per video). The processor (image, video, chat
    template) is saved as transformers would save the real one, so `AutoProcessor` loads it where
    torchvision is installed, and `sharp_prune.run.load_processor` everywhere.

    Returns:
        `path`, ready for `from_pretrained`.
    """
    from transformers import AutoTokenizer, LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor
    from transformers.utils import is_torchvision_available

    from .processor_compat import accepting_processor_class, torch_video_processor_class

    folder = Path(path)
    if tokenizer_dir is None:
        from .smollm2 import DEFAULT_CACHE, load_smollm2

        if not (DEFAULT_CACHE / "tokenizer.json").is_file():
            load_smollm2()  # dequantises the GGUF once and fills the cache
        tokenizer_dir = DEFAULT_CACHE
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]})
    image_id, video_id = tokenizer.convert_tokens_to_ids(["<image>", "<video>"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    size, patch = 32, 4
    text = _text_config(num_layers, rope=False)
    text.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,  # tied random weights echo the last prompt token; untied answer in words
    )
    torch.manual_seed(seed)
    config = LlavaOnevisionConfig(
        text_config=dict(model_type="qwen2", **text),
        vision_config=_tiny_siglip(image_size=size, patch_size=patch),
        image_token_index=image_id,
        video_token_index=video_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=[[size, size]],  # the processor's: images and video may share a prompt
        tie_word_embeddings=False,
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = pad_id
    model.save_pretrained(folder)

    # SigLIP normalisation (mean = std = 0.5), as in the llava-hf checkpoints.
    pixels = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], size={"height": size, "width": size})
    image_processor = LlavaOnevisionImageProcessorPil(image_grid_pinpoints=[[size, size]], **pixels)
    video_cls, processor_cls = LlavaOnevisionVideoProcessor, LlavaOnevisionProcessor
    if not is_torchvision_available():
        video_cls = torch_video_processor_class(video_cls)
        processor_cls = accepting_processor_class(processor_cls)
    processor = processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_cls(**pixels),
        num_image_tokens=(size // patch) ** 2,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder


def synthetic_video(
    path: str | Path,
    num_frames: int = 36,
    width: int = 64,
    height: int = 48,
    fps: int = 10,
    codec: str = "mpeg4",
) -> Path:
    """Write a small video of coloured squares moving over a dark background (PyAV; mp4, mkv, avi, webm...).

    `num_frames=0` writes a container whose video stream has no frames (use .avi: mp4 drops the empty track).
    """
    import av
    import numpy as np

    out = Path(path)
    with av.open(str(out), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        container.start_encoding()
        side = max(2, min(width, height) // 4)
        for i in range(num_frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[:] = (20, 20, 60)
            x = (i * 3) % (width - side)
            y = (i * 2) % (height - side)
            image[y : y + side, x : x + side] = (255, 40, 40)
            image[height - side - y : height - y, width - side - x : width - x] = (40, 220, 40)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out
