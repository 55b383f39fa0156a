"""Tiny random-weight video LLMs of the real transformers classes, and inputs for them.

Real classes and real code paths at toy sizes: for tests, for checking an integration without a GPU,
and for timing shapes. Random weights give no meaningful attention. Each family's tiny configuration lives
in its entry (`sharp_prune.models.<family>`, `ModelAdapter.tiny`); these functions find it by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, PreTrainedModel

from . import hf_protocol
from .models import FAMILIES, GENERIC, resolve_adapter
from .models.llava_onevision import tiny_siglip
from .models.tiny import (
    IMAGE_TOKEN_ID,
    PAD_ID,
    VIDEO_TOKEN_ID,
    VISION_END_ID,
    VISION_START_ID,
    VOCAB,
    TinyVideo,
    text_config,
)

# Gemma 4 joins the battery where the installed transformers has the Gemma 4 classes sharp-prune prunes (older
# releases refuse it at apply: tests/test_model_table.py).
TINY_FAMILIES = tuple(
    name
    for name, entry in FAMILIES.items()
    if entry.tiny is not None and (name != "gemma4" or hf_protocol.gemma4_supported())
)


def tiny_model(
    family: str,
    num_layers: int = 4,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised model of `family` (one of `TINY_FAMILIES`), in eval mode."""
    entry = FAMILIES.get(family)
    if entry is None or entry.tiny is None:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {TINY_FAMILIES}.")
    return entry.tiny.build(num_layers, attn_implementation, dtype, seed)


def tiny_inputs(
    model: PreTrainedModel,
    prefix_lens: list[int],
    suffix_lens: list[int],
    video: TinyVideo | None = None,
    padding_side: str = "left",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Batch of `text prefix + video + text suffix` samples for a tiny model, padded on one side.

    Every sample has the same video size (default `TinyVideo()`); prefix and suffix lengths may differ per sample.
    """
    entry = resolve_adapter(model)
    if entry.tiny is None or entry.tiny.inputs is None:
        raise ValueError(f"no tiny inputs for {type(model).__name__}.")
    return entry.tiny.inputs(model, prefix_lens, suffix_lens, video or TinyVideo(), padding_side, seed)


def llava_grid(model: PreTrainedModel) -> int:
    """Tokens per frame side of a LLaVA-OV model's video path (patch grid pooled 2x2)."""
    vision = model.config.vision_config
    return -(-(vision.image_size // vision.patch_size) // 2)


def tiny_causal_lm(num_layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0) -> PreTrainedModel:
    """A randomly initialised `LlamaForCausalLM` (GQA, RoPE) for the generic adapter."""
    return GENERIC.tiny.build(num_layers, attn_implementation, torch.float32, seed)


def tiny_sliding_lm(
    num_layers: int = 6, attn_implementation: str = "sdpa", seed: int = 0, window: int = 8
) -> PreTrainedModel:
    """A randomly initialised `Gemma3ForCausalLM` (sliding, sliding, full, ... at window `window`) for the generic
    adapter: the layer mix of Gemma 3 and Gemma 4 at toy size."""
    from .models.generic import tiny_sliding_lm as build

    return build(num_layers, attn_implementation, torch.float32, seed, window)


def tiny_hybrid_lm(num_layers: int = 6, attn_implementation: str = "sdpa", seed: int = 0) -> PreTrainedModel:
    """A randomly initialised `Qwen3_5ForCausalLM` (linear, linear, full, ...: Gated DeltaNet layers mixed with
    full-attention layers) for the generic adapter: the layer mix of Qwen3.5 at toy size."""
    from .models.generic import tiny_hybrid_lm as build

    return build(num_layers, attn_implementation, torch.float32, seed)


def sample_of(inputs: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """Sample `index` of a `tiny_inputs` batch as an unpadded batch of one (one video per sample)."""
    real = inputs["attention_mask"][index].bool()
    out = {
        "input_ids": inputs["input_ids"][index][real][None],
        "attention_mask": inputs["attention_mask"][index][real][None],
    }
    if "num_frames_per_video" in inputs:  # Gemma 4: every sample's frames, one sample after another
        counts = inputs["num_frames_per_video"]
        start = int(counts[:index].sum())
        frames = slice(start, start + int(counts[index]))
        out["pixel_values_videos"] = inputs["pixel_values_videos"][frames]
        out["video_position_ids"] = inputs["video_position_ids"][frames]
        out["num_frames_per_video"] = counts[index : index + 1]
        out["mm_token_type_ids"] = inputs["mm_token_type_ids"][index][real][None]
    elif "video_grid_thw" in inputs:
        per_video = int(inputs["video_grid_thw"][index].prod())
        out["pixel_values_videos"] = inputs["pixel_values_videos"][index * per_video : (index + 1) * per_video]
        out["video_grid_thw"] = inputs["video_grid_thw"][index : index + 1]
        if "mm_token_type_ids" in inputs:  # Qwen-VL
            out["mm_token_type_ids"] = inputs["mm_token_type_ids"][index][real][None]
        if "video_merge_sizes" in inputs:  # VideoLLaMA3
            out["video_merge_sizes"] = inputs["video_merge_sizes"][index : index + 1]
    elif "pixel_values_videos" in inputs:
        out["pixel_values_videos"] = inputs["pixel_values_videos"][index : index + 1]
    elif "pixel_values" in inputs:  # InternVL: every sample's frames as tiles, one sample after another
        per_sample = inputs["pixel_values"].shape[0] // inputs["input_ids"].shape[0]
        out["pixel_values"] = inputs["pixel_values"][index * per_sample : (index + 1) * per_sample]
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
    torchvision is installed, and `sharp_prune.models.loading.load_processor` everywhere.

    Returns:
        `path`, ready for `from_pretrained`.
    """
    from transformers import LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor
    from transformers.utils import is_torchvision_available

    from .models.processors import accepting_processor_class, torch_video_processor_class

    folder = Path(path)
    tokenizer = _smollm2_tokenizer(tokenizer_dir, ["<image>", "<video>"])
    image_id, video_id = tokenizer.convert_tokens_to_ids(["<image>", "<video>"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    size, patch = 32, 4
    text = text_config(num_layers, rope=False)
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
        vision_config=tiny_siglip(image_size=size, patch_size=patch),
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


def _smollm2_dir(tokenizer_dir: str | Path | None) -> str | Path:
    """`tokenizer_dir`, default the `sharp_prune.smollm2` cache (filled on first use)."""
    if tokenizer_dir is None:
        from .smollm2 import DEFAULT_CACHE, load_smollm2

        if not (DEFAULT_CACHE / "tokenizer.json").is_file():
            load_smollm2()  # dequantises the GGUF once and fills the cache
        tokenizer_dir = DEFAULT_CACHE
    return tokenizer_dir


def _smollm2_tokenizer(tokenizer_dir: str | Path | None, special_tokens: list[str]) -> Any:
    """SmolLM2's tokenizer (from `tokenizer_dir`, default the `sharp_prune.smollm2` cache, filled on first use)
    with `special_tokens` added."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_smollm2_dir(tokenizer_dir))
    tokenizer.add_special_tokens({"additional_special_tokens": special_tokens})
    return tokenizer


# Qwen2-VL's chat template (the Qwen checkpoints'), for the tiny checkpoints: a default system turn, vision
# placeholders where the content puts them.
QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# Qwen3-VL's chat template (the Qwen3-VL checkpoints', without tools and reasoning), for the tiny checkpoints: no
# default system turn; each video's placeholder becomes one `<t seconds><|vision_start|>...<|vision_end|>` span
# per temporal patch in the processor, from the timestamps it works out of the video's metadata.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3.5's chat template, for the tiny checkpoints: Qwen3-VL's, plus the thinking switch of the generation prompt
# (upstream's lmms-eval wrapper passes `enable_thinking`, True by default): an open `<think>` block when thinking,
# an empty one when not.
QWEN3_5_CHAT_TEMPLATE = QWEN3_VL_CHAT_TEMPLATE.replace(
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}",
)

_QWEN_CHAT_TEMPLATES = {"qwen3_5": QWEN3_5_CHAT_TEMPLATE}  # the others: by generation (Qwen2-VL's, Qwen3-VL's)

QWEN_VL_CHECKPOINT_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5")


def tiny_qwen_vl_checkpoint(
    path: str | Path,
    family: str = "qwen2_vl",
    num_layers: int = 4,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Save a complete tiny Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE or Qwen3.5 checkpoint (random weights,
    real processor) to `path`.

    `family`: one of `QWEN_VL_CHECKPOINT_FAMILIES`. The tokenizer is SmolLM2's with Qwen-VL's vision tokens
    added; the vision tower has patch 4, merge 2, temporal patch 2, so each pair of frames is
    (height / 8) x (width / 8) video tokens. Qwen2-VL / Qwen2.5-VL frames are resized within [16 x 16, 64 x 64]
    pixels each (a 56 x 56 pair: 49 tokens); Qwen3-VL bounds the whole video within [2 x 16 x 16,
    16 x 64 x 64] pixels and normalises with mean = std = 0.5 (four 48 x 64 frames stay so: 2 x 48 tokens,
    each temporal patch after its `<t seconds>` timestamp). Qwen3.5: Qwen3-VL's processor (`Qwen3VLProcessor`, as
    the released checkpoints have it) and vision tower without DeepStack, a text stack alternating full and linear
    attention (full at layer 0), and a chat template with the thinking switch (`QWEN3_5_CHAT_TEMPLATE`);
    transformers loads its tokenizer as `Qwen3_5Tokenizer` (it overrides the saved class for qwen3_5). The
    processor (image, video, chat template) is saved as transformers saves the real one: `AutoProcessor` loads it
    where torchvision is installed, `sharp_prune.models.loading.load_processor` everywhere.
    """
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from .models.processors import accepting_processor_class

    if family not in QWEN_VL_CHECKPOINT_FAMILIES:
        raise ValueError(f"family must be one of {QWEN_VL_CHECKPOINT_FAMILIES}, got {family!r}.")
    qwen3 = family.startswith("qwen3")
    folder = Path(path)
    vision_tokens = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer = _smollm2_tokenizer(tokenizer_dir, vision_tokens)
    start, end, image, video = tokenizer.convert_tokens_to_ids(vision_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = dict(
        vision_start_token_id=start,
        vision_end_token_id=end,
        image_token_id=image,
        video_token_id=video,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id,
    )
    if family == "qwen3_5":
        from .models.qwen3_5 import tiny_qwen3_5_config

        config = tiny_qwen3_5_config(num_layers, **ids)
    elif qwen3:
        from .models.qwen3_vl import tiny_qwen3_vl_config

        config = tiny_qwen3_vl_config(num_layers, moe=family == "qwen3_vl_moe", **ids)
    else:
        from .models.qwen_vl import tiny_qwen_vl_config

        config = tiny_qwen_vl_config(family, num_layers, **ids)
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = False  # untied: answers in words
    torch.manual_seed(seed)
    model = getattr(transformers, FAMILIES[family].class_names[0])(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = pad_id
    model.save_pretrained(folder)

    patches = dict(patch_size=4, temporal_patch_size=2, merge_size=2)
    image_pixels = dict(patches, min_pixels=16 * 16, max_pixels=64 * 64)
    if qwen3:  # Qwen3-VL: SigLIP's normalisation; the video bounds count all frames
        half = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        image_pixels.update(half)
        video_pixels = dict(patches, **half, size={"shortest_edge": 2 * 16 * 16, "longest_edge": 16 * 64 * 64})
    else:
        video_pixels = dict(patches, min_pixels=16 * 16, max_pixels=64 * 64)
    processor_cls = getattr(transformers, FAMILIES[family].processor_class)
    video_name = "Qwen3VLVideoProcessor" if qwen3 else "Qwen2VLVideoProcessor"
    if transformers.utils.is_torchvision_available():
        video_cls = getattr(transformers, video_name)
    else:  # the family's torch-only port, and a processor class that accepts it
        video_cls = next(c for c in FAMILIES[family].video_processors() if c.__name__ == video_name)
        processor_cls = accepting_processor_class(processor_cls)
    processor = processor_cls(
        image_processor=Qwen2VLImageProcessorPil(**image_pixels),
        tokenizer=tokenizer,
        video_processor=video_cls(**video_pixels),
        chat_template=_QWEN_CHAT_TEMPLATES.get(family, QWEN3_VL_CHAT_TEMPLATE if qwen3 else QWEN_VL_CHAT_TEMPLATE),
    )
    processor.save_pretrained(folder)
    return folder


# InternVL's chat template (the -hf checkpoints', without their default system turn), for the tiny checkpoint: a
# `<video>` placeholder per video, which the processor writes as one "FrameN: <img>...</img>" tile per frame.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tiny_internvl_checkpoint(
    path: str | Path,
    num_layers: int = 4,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Save a complete tiny InternVL checkpoint (random weights, real processor) to `path`, as the -hf checkpoints
    are laid out: `InternVLForConditionalGeneration` (a Qwen2 text model, a one-layer InternViT on 32 x 32 tiles,
    patch 4, pixel shuffle 0.5: 16 tokens a tile) and `InternVLProcessor` (every video frame one tile, ImageNet
    normalisation). The tokenizer is SmolLM2's with InternVL's `<img>`, `</img>`, `<IMG_CONTEXT>` and `<video>`
    tokens; `AutoProcessor` loads it where torchvision is installed, `sharp_prune.models.loading.load_processor`
    (with sharp-prune's torch-only video processor) everywhere.
    """
    from transformers import AutoTokenizer, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.utils import is_torchvision_available

    from .models.internvl import IMAGENET_MEAN, IMAGENET_STD, torch_video_processors
    from .models.processors import accepting_processor_class

    folder = Path(path)
    if tokenizer_dir is None:
        from .smollm2 import DEFAULT_CACHE, load_smollm2

        if not (DEFAULT_CACHE / "tokenizer.json").is_file():
            load_smollm2()
        tokenizer_dir = DEFAULT_CACHE
    tokens = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, extra_special_tokens=tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    size, patch, ratio = 32, 4, 0.5
    per_tile = int((size // patch * ratio) ** 2)
    text = text_config(num_layers, rope=False)
    text.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,  # untied: answers in words
    )
    torch.manual_seed(seed)
    config = InternVLConfig(
        text_config=dict(model_type="qwen2", **text),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=size,
            patch_size=patch,
        ),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=per_tile,
        downsample_ratio=ratio,
        tie_word_embeddings=False,
    )
    model = InternVLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = pad_id
    model.save_pretrained(folder)

    pixels = dict(image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), size={"height": size, "width": size})
    processor_cls = InternVLProcessor
    if is_torchvision_available():
        from transformers import InternVLVideoProcessor as video_cls
    else:
        (video_cls,) = torch_video_processors()
        processor_cls = accepting_processor_class(processor_cls)
    processor = processor_cls(
        image_processor=GotOcr2ImageProcessorPil(**pixels),
        tokenizer=tokenizer,
        video_processor=video_cls(**pixels),
        image_seq_length=per_tile,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder


# Gemma 4's special tokens, as the released checkpoints' tokenizers name them (`extra_special_tokens`): the processor
# reads each as a tokenizer attribute (`tokenizer.boi_token`, `tokenizer.image_token_id`, ...).
GEMMA4_SPECIAL_TOKENS = {
    "image_token": "<|image|>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "video_token": "<|video|>",
    "audio_token": "<|audio|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
}

# Gemma 4's chat template, reduced to what the tiny checkpoint needs: `<|turn>role ... <turn|>` turns (the assistant
# is "model"), a system turn where the messages have one, an image / video placeholder (`<|image|>` / `<|video|>`)
# where the content puts it; the processor writes each video as, per frame, "mm:ss <|image>" + its soft tokens +
# "<image|>".
GEMMA4_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif item['type'] == 'video' %}{{ '<|video|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<turn|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|turn>model\\n' }}{% endif %}"
)


def tiny_gemma4_checkpoint(
    path: str | Path,
    num_layers: int = 4,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
    max_soft_tokens: int = 70,
) -> Path:
    """Save a complete tiny Gemma 4 checkpoint (random weights, real processor) to `path`.

    The model is `Gemma4ForConditionalGeneration` on `sharp_prune.models.gemma4.tiny_gemma4_config` (bidirectional
    attention inside frames in sliding layers, per-layer inputs, from 6 layers on the last two layers sharing KV;
    vision patch 4, 2 x 2 pooling; no audio tower) with the tokenizer's ids and untied embeddings. The tokenizer is
    SmolLM2's with Gemma 4's special tokens (`GEMMA4_SPECIAL_TOKENS`) as named extra special tokens, which
    `Gemma4Processor` reads as tokenizer attributes. The processor is `Gemma4Processor` (an audio feature
    extractor, an image processor, the video processor with `max_soft_tokens` soft tokens per frame, a chat
    template: `GEMMA4_CHAT_TEMPLATE`), saved as transformers saves the real one: `AutoProcessor` loads it where
    torchvision is installed, `sharp_prune.models.loading.load_processor` (with sharp-prune's torch-only video
    processor) everywhere.

    Frame sizes: the processor resizes each frame, keeping its aspect ratio, to the largest multiple of 8 x 8
    pixels (patch 4, pooling 2) within `max_soft_tokens` soft tokens. With the default 70: a 64 x 48 (4:3) video
    gives 72 x 56 frames, 9 x 7 = 63 soft tokens (not square: PosC cannot run under `generate`, see
    `sharp_prune.models.gemma4.GENERATE_GRID_HINT`); a square video gives 8 x 8 = 64 tokens a frame. No budget
    makes a 4:3 frame square: the sides keep the aspect ratio to within one 8-pixel step, and the smallest budget
    (70) already gives a 7 x 9 grid.
    """
    from transformers import AutoTokenizer, Gemma4ForConditionalGeneration, Gemma4Processor
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil
    from transformers.utils import is_torchvision_available

    from .models.gemma4 import POOLING, draw_patch_positions, tiny_gemma4_config, torch_video_processors
    from .models.processors import accepting_processor_class

    folder = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(_smollm2_dir(tokenizer_dir), extra_special_tokens=GEMMA4_SPECIAL_TOKENS)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = {
        name[: -len("_token")] + "_token_id": tokenizer.convert_tokens_to_ids(token)
        for name, token in GEMMA4_SPECIAL_TOKENS.items()
    }
    ids["eoa_token_index"] = ids.pop("eoa_token_id")
    config = tiny_gemma4_config(
        num_layers,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id,
        **ids,
    )
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = False  # untied: answers in words
    torch.manual_seed(seed)
    model = draw_patch_positions(Gemma4ForConditionalGeneration(config).eval(), seed)  # as tiny_model("gemma4")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = pad_id
    model.save_pretrained(folder)

    vision = config.vision_config
    patches = dict(patch_size=vision.patch_size, pooling_kernel_size=POOLING)
    processor_cls = Gemma4Processor
    if is_torchvision_available():
        from transformers import Gemma4VideoProcessor as video_cls
    else:
        (video_cls,) = torch_video_processors()
        processor_cls = accepting_processor_class(processor_cls)
    processor = processor_cls(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessorPil(**patches, max_soft_tokens=max_soft_tokens),
        tokenizer=tokenizer,
        video_processor=video_cls(**patches, max_soft_tokens=max_soft_tokens),
        image_seq_length=max_soft_tokens,
        chat_template=GEMMA4_CHAT_TEMPLATE,
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


__all__ = [
    "IMAGE_TOKEN_ID",
    "GEMMA4_CHAT_TEMPLATE",
    "GEMMA4_SPECIAL_TOKENS",
    "INTERNVL_CHAT_TEMPLATE",
    "LLAVA_ONEVISION_CHAT_TEMPLATE",
    "PAD_ID",
    "QWEN3_5_CHAT_TEMPLATE",
    "QWEN3_VL_CHAT_TEMPLATE",
    "QWEN_VL_CHAT_TEMPLATE",
    "QWEN_VL_CHECKPOINT_FAMILIES",
    "TINY_FAMILIES",
    "VIDEO_TOKEN_ID",
    "VISION_END_ID",
    "VISION_START_ID",
    "VOCAB",
    "TinyVideo",
    "llava_grid",
    "sample_of",
    "synthetic_video",
    "tiny_causal_lm",
    "tiny_gemma4_checkpoint",
    "tiny_inputs",
    "tiny_internvl_checkpoint",
    "tiny_llava_onevision_checkpoint",
    "tiny_model",
    "tiny_qwen_vl_checkpoint",
]
