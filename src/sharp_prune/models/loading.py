"""Loading a video LLM checkpoint, its processor and inputs: the library side of `run`, `viz` and lmms-eval.

Which class and processor a checkpoint needs comes from its family's entry (`sharp_prune.models`). Without
torchvision, the processor is built with a torch-only video processor (`sharp_prune.models.processors`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import check_layer
from ..errors import InputError, ModelLoadError
from ..hf_protocol import SUPPORTED_ATTENTION
from ..video import VideoClip
from . import family_of_checkpoint
from .processors import processor_without_torchvision

#: dtype names accepted everywhere a dtype is named (CLI options, `load_model`, `sharp-prune speed`).
DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto",
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or CUDA when available and CPU otherwise."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"unknown device {device!r}; pass e.g. cpu, cuda or cuda:1.") from err


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """A torch dtype, or "auto" (the checkpoint's), from a name such as "bfloat16" / "bf16"."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def load_config(model_id: str | Path) -> Any:
    """A checkpoint's config (config.json only: no weights), or `ModelLoadError` saying what to pass."""
    from transformers import AutoConfig

    source = str(model_id)
    path = Path(source)
    if path.exists() and not path.is_dir():
        raise ModelLoadError(
            f"{source} is a file; pass the checkpoint folder that holds config.json and the weights, or a "
            "Hugging Face model id such as llava-hf/llava-onevision-qwen2-0.5b-ov-hf."
        )
    if not path.exists() and (source.startswith(("/", ".", "~")) or source.count("/") > 1):
        raise ModelLoadError(
            f"checkpoint folder not found: {source}; check the path, or pass a Hugging Face model id such as "
            "llava-hf/llava-onevision-qwen2-0.5b-ov-hf."
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{source} is not a model checkpoint (no config.json in it); pass the folder that "
            "`save_pretrained` wrote, or a Hugging Face model id such as llava-hf/llava-onevision-qwen2-0.5b-ov-hf."
        )
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(
            f"cannot load a model config from {source!r} ({_first_line(err)}); pass a local checkpoint folder "
            "(config.json, weights, processor files) or a Hugging Face model id that is cached here or reachable."
        ) from err


def check_layer_fits(model: str | Path | nn.Module, layer: int) -> None:
    """K fits the model's text decoder, read from its config alone (no weights load): `ConfigError` if not."""
    config = model.config if isinstance(model, nn.Module) else load_config(model)
    _model_class(config)  # a checkpoint of an unsupported family says so first
    name = type(model).__name__ if isinstance(model, nn.Module) else repr(str(model))
    check_layer(layer, config.get_text_config().num_hidden_layers, name)


def _model_class(config: Any) -> type[nn.Module]:
    import transformers

    family = family_of_checkpoint(getattr(config, "model_type", None))
    return getattr(transformers, family.class_names[0])


def load_model(
    model_id: str | Path,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
) -> tuple[nn.Module, Any]:
    """Load a supported video LLM and its processor, in eval mode on `device`.

    Args:
        model_id: a checkpoint folder or a Hugging Face model id.
        dtype: "auto" (the checkpoint's), "float32", "bfloat16" or "float16" (or a torch dtype).
        device: e.g. "cuda", "cpu"; default CUDA when available.
        attn_implementation: "sdpa", "eager" or "flash_attention_2"; default transformers' choice.

    Raises:
        ModelLoadError: the path is not a checkpoint, the weights or processor do not load.
        UnsupportedModelError: the checkpoint is not LLaVA-OneVision, Qwen2-VL or Qwen2.5-VL.
    """
    config = load_config(model_id)
    cls = _model_class(config)
    torch_dtype = resolve_dtype(dtype)
    target = resolve_device(device)
    if attn_implementation is not None and attn_implementation not in SUPPORTED_ATTENTION:
        raise InputError(f"unknown attention implementation {attn_implementation!r}; choose {SUPPORTED_ATTENTION}.")
    processor = load_processor(model_id, config=config)  # cheaper than the weights: fail on it first
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if target.type != "cpu" and importlib.util.find_spec("accelerate") is not None:
        kwargs["device_map"] = str(target)
    try:
        model = cls.from_pretrained(str(model_id), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as err:
        raise ModelLoadError(
            f"cannot load the {cls.__name__} weights from {str(model_id)!r} ({_first_line(err)}); check that the "
            "checkpoint is complete (config.json and *.safetensors) and that the dtype / attention "
            "implementation are available here."
        ) from err
    if "device_map" not in kwargs:
        model = model.to(target)
    return model.eval(), processor


def load_processor(model_id: str | Path, config: Any = None, **kwargs: Any) -> Any:
    """The checkpoint's processor: `AutoProcessor` when torchvision is installed; otherwise the same
    processor class with a torch-only video processor (see the module docstring).

    Args:
        model_id: a checkpoint folder or hub id.
        config: its config, when already loaded.
        **kwargs: processor options, as `AutoProcessor.from_pretrained` takes them (e.g. Qwen-VL's
            ``min_pixels`` / ``max_pixels``).

    Raises:
        ModelLoadError: the processor files are missing, or its video processor needs torchvision.
    """
    from transformers.utils import is_torchvision_available

    source = str(model_id)
    try:
        if is_torchvision_available():
            from transformers import AutoProcessor

            return AutoProcessor.from_pretrained(source, **kwargs)
        config = config if config is not None else load_config(source)
        family = family_of_checkpoint(getattr(config, "model_type", None))
        replacements = family.video_processors() if family.video_processors is not None else ()
        return processor_without_torchvision(source, config, family.processor_class, replacements, **kwargs)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, TypeError, ImportError, AttributeError) as err:
        raise ModelLoadError(
            f"cannot load the processor of {source!r} ({_first_line(err)}); the checkpoint needs its processor "
            "files (processor_config.json or preprocessor_config.json, the tokenizer, a chat template)."
        ) from err


def build_inputs(processor: Any, clip: VideoClip, question: str) -> Any:
    """The prompt (chat template: one video + the question, then the assistant turn) as model inputs."""
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question is empty; pass the question to ask about the video, e.g. 'What happens?'.")
    if getattr(processor, "chat_template", None) is None:
        raise ModelLoadError("the checkpoint's processor has no chat template; add chat_template.jinja to it.")
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    options: dict[str, Any] = {}
    if getattr(getattr(processor, "video_processor", None), "do_sample_frames", False):
        # The clip's frames are the sample (Qwen3-VL's processor samples by default, reading the video's frame
        # count from the metadata): sampling them again would index past them. The metadata's frame indices
        # still give the processor its timestamps.
        options["do_sample_frames"] = False
    return processor(
        text=prompt, videos=[clip.frames], video_metadata=[clip.metadata()], return_tensors="pt", **options
    )


def inputs_on_model(inputs: Any, model: nn.Module) -> dict[str, Any]:
    """The processor's output as a dict of tensors on the model's device (floating ones in its dtype)."""
    param = next(model.parameters())
    out = {}
    for key, value in dict(inputs).items():
        if isinstance(value, torch.Tensor):
            value = value.to(param.device, param.dtype) if value.is_floating_point() else value.to(param.device)
        out[key] = value
    return out


def generate_answer(model: nn.Module, processor: Any, inputs: dict[str, Any], max_new_tokens: int) -> str:
    """Greedy answer of at most `max_new_tokens` tokens, decoded without special tokens."""
    from transformers import GenerationConfig

    tokenizer = getattr(processor, "tokenizer", processor)
    base = model.generation_config
    eos = base.eos_token_id if base.eos_token_id is not None else tokenizer.eos_token_id
    pad = base.pad_token_id if base.pad_token_id is not None else tokenizer.pad_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=pad if pad is not None else eos,
    )
    with torch.no_grad():
        out = model.generate(**inputs, generation_config=config)
    return processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
