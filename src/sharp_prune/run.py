"""`sharp-prune run`: answer a question about a video file with a video LLM, pruned (and, with `compare`, not).

    sharp-prune run --model llava-hf/llava-onevision-qwen2-0.5b-ov-hf --video clip.mp4 \\
        --question "What happens after the dog jumps?" --method sharp --retention 0.2 --layer 2 --compare

Steps: decode `--frames` frames evenly over the video (PyAV, `sharp_prune.video`), load the model and its
processor, build the prompt with the processor's chat template (one video entry + the question), answer
greedily with pruning applied and, with `--compare`, without it; each answer's prefill time is the median of
forwards of the whole prompt with `logits_to_keep=1`, after one warm-up forward.

Without torchvision, the processor comes from `sharp_prune.processor_compat` (see there).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import logging
import statistics
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from .cli_args import add_prune_arguments, output_dir, positive_int, torch_device
from .config import PruneConfig, check_layer
from .engine import apply
from .errors import InputError, ModelLoadError, UnsupportedModelError
from .processor_compat import processor_without_torchvision
from .record import PruneRecord
from .video import VideoClip, read_video

logger = logging.getLogger(__name__)

# model_type -> (model class, processor class) of the video LLMs `run` supports.
RUN_MODELS: dict[str, tuple[str, str]] = {
    "llava_onevision": ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor"),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
}
DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto",
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


@dataclass
class RunResult:
    """Outcome of `run`: the answers, the video tokens kept, and the prefill times, all measured in one process.

    Attributes:
        model: the model id or path.
        model_class: the transformers class that ran.
        video: the video's metadata (`VideoInfo.to_dict()`).
        question: the question asked.
        frames: frames sampled from the video.
        frame_indices: their indices in the video.
        config: the `PruneConfig` as a dict.
        prompt_tokens: tokens of the prompt (text + video).
        video_tokens: video tokens the pruner found (LLaVA-OV: frame tokens, without the kept newline).
        kept_tokens: video tokens kept past layer K.
        answer: the pruned model's answer.
        prefill_s: the pruned model's prefill time, in seconds.
        unpruned_answer, unpruned_prefill_s: the same without pruning (`compare=True`), else None.
        device, dtype: where and in which dtype the model ran.
        max_new_tokens: the generation limit.
        viz: the pictures written (`viz_dir`), {name: path}, else None.
        record: the pruned prefill's `PruneRecord` (not in `to_dict`).
        clip: the decoded frames (`VideoClip`; not in `to_dict`), e.g. for `sharp_prune.viz.write_all`.
    """

    model: str
    model_class: str
    video: dict[str, Any]
    question: str
    frames: int
    frame_indices: list[int]
    config: dict[str, Any]
    prompt_tokens: int
    video_tokens: int
    kept_tokens: int
    answer: str
    prefill_s: float
    unpruned_answer: str | None = None
    unpruned_prefill_s: float | None = None
    device: str = "cpu"
    dtype: str = "float32"
    max_new_tokens: int = 64
    viz: dict[str, str] | None = None
    record: PruneRecord | None = field(default=None, repr=False, compare=False)
    clip: VideoClip | None = field(default=None, repr=False, compare=False)

    @property
    def retained_fraction(self) -> float:
        """Kept / found video tokens."""
        return self.kept_tokens / self.video_tokens if self.video_tokens else 1.0

    @property
    def speedup(self) -> float | None:
        """Unpruned / pruned prefill time (`compare=True`), else None."""
        if self.unpruned_prefill_s is None or self.prefill_s <= 0:
            return None
        return self.unpruned_prefill_s / self.prefill_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy, with `retained_fraction` and `speedup` added (without `record` and `clip`)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("record", "clip")}
        data = copy.deepcopy(data)
        data["retained_fraction"] = self.retained_fraction
        data["speedup"] = self.speedup
        return data


# --------------------------------------------------------------------------------------------------------------
# Loading


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


def _load_config(model_id: str | Path) -> Any:
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
    config = model.config if isinstance(model, nn.Module) else _load_config(model)
    _model_class(config)  # a checkpoint of an unsupported family says so first
    name = type(model).__name__ if isinstance(model, nn.Module) else repr(str(model))
    check_layer(layer, config.get_text_config().num_hidden_layers, name)


def _model_class(config: Any) -> type[nn.Module]:
    import transformers

    model_type = getattr(config, "model_type", None)
    if model_type not in RUN_MODELS:
        supported = ", ".join(RUN_MODELS)
        raise UnsupportedModelError(
            f"`sharp-prune run` supports the video LLMs {supported} (model_type); this checkpoint is "
            f"{model_type!r}. For another decoder-only LM use the Python API with a frame map."
        )
    return getattr(transformers, RUN_MODELS[model_type][0])


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
    config = _load_config(model_id)
    cls = _model_class(config)
    torch_dtype = resolve_dtype(dtype)
    target = resolve_device(device)
    if attn_implementation is not None and attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise InputError(f"unknown attention implementation {attn_implementation!r}; choose {ATTN_IMPLEMENTATIONS}.")
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


def load_processor(model_id: str | Path, config: Any = None) -> Any:
    """The checkpoint's processor: `AutoProcessor` when torchvision is installed; otherwise the same
    processor class with a torch-only video processor (see the module docstring).

    Raises:
        ModelLoadError: the processor files are missing, or its video processor needs torchvision.
    """
    from transformers.utils import is_torchvision_available

    source = str(model_id)
    try:
        if is_torchvision_available():
            from transformers import AutoProcessor

            return AutoProcessor.from_pretrained(source)
        config = config if config is not None else _load_config(source)
        default = RUN_MODELS.get(getattr(config, "model_type", None), (None, None))[1]
        return processor_without_torchvision(source, config, default)
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
    return processor(text=prompt, videos=[clip.frames], video_metadata=[clip.metadata()], return_tensors="pt")


def inputs_on_model(inputs: Any, model: nn.Module) -> dict[str, Any]:
    """The processor's output as a dict of tensors on the model's device (floating ones in its dtype)."""
    param = next(model.parameters())
    out = {}
    for key, value in dict(inputs).items():
        if isinstance(value, torch.Tensor):
            value = value.to(param.device, param.dtype) if value.is_floating_point() else value.to(param.device)
        out[key] = value
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_prefill(model: nn.Module, inputs: dict[str, Any], repeats: int = 3) -> float:
    """Median time in seconds of `repeats` forwards of the whole prompt with `logits_to_keep=1`, after a warm-up."""
    device = next(model.parameters()).device
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            model(**inputs, logits_to_keep=1)
            _sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


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


def run(
    model: str | Path | nn.Module,
    video: str | Path,
    question: str,
    config: PruneConfig | None = None,
    num_frames: int = 32,
    compare: bool = False,
    max_new_tokens: int = 64,
    processor: Any = None,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    prefill_repeats: int = 3,
    viz_dir: str | Path | None = None,
    viz_frames: int = 16,
) -> RunResult:
    """Answer `question` about `video` with pruning (and, with `compare`, without), timing each prefill.

    Args:
        model: a checkpoint folder or model id (loaded with `load_model`), or a loaded model (then pass
            `processor` too).
        video: the video file; `num_frames` frames are sampled evenly over all of it.
        question: what to ask.
        config: the pruning config (default `PruneConfig(method="sharp", retention=0.2, layer=2)`).
        num_frames: frames to sample, >= 1 and at most the video's.
        compare: also answer without pruning (first), to compare answers and prefill times.
        max_new_tokens: the answer's length limit (greedy decoding).
        processor: the model's processor, when `model` is a loaded model.
        dtype, device, attn_implementation: passed to `load_model` when `model` is a name or path.
        prefill_repeats: forwards timed per prefill measurement (after one warm-up).
        viz_dir: write the pictures of the pruned prefill there (`sharp_prune.viz.write_all`; scores are
            recorded for them, `record_scores=True`); their paths are in `RunResult.viz`.
        viz_frames: frames shown in the overlay picture (evenly spaced).

    The video is decoded (and every video check runs) before the model loads. The model is left as it was:
    the pruning handle is removed before returning, also on error.
    """
    config = config if config is not None else PruneConfig(method="sharp", retention=0.2, layer=2)
    if not isinstance(config, PruneConfig):
        raise InputError(f"config must be a PruneConfig, got {type(config).__name__}.")
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question is empty; pass the question to ask about the video, e.g. 'What happens?'.")
    for name, value in (
        ("max_new_tokens", max_new_tokens),
        ("prefill_repeats", prefill_repeats),
        ("viz_frames", viz_frames),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an int >= 1, got {value!r}.")
    if viz_dir is not None:
        from .viz.figure import require_matplotlib

        require_matplotlib()  # before the video and the model, not after the answer
        config = config.replace(record_scores=True)
    clip = read_video(video, num_frames)
    check_layer_fits(model, config.layer)  # from the config alone: before the weights and --compare
    if isinstance(model, nn.Module):
        if processor is None:
            raise InputError("a loaded model needs its processor: pass processor=... as well.")
        model_name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    else:
        model_name = str(model)
        logger.info("loading %s", model_name)
        model, processor = load_model(model, dtype=dtype, device=device, attn_implementation=attn_implementation)
    inputs = inputs_on_model(build_inputs(processor, clip, question), model)
    param = next(model.parameters())

    unpruned_answer = unpruned_prefill = None
    if compare:
        logger.info("answering without pruning")
        unpruned_prefill = measure_prefill(model, inputs, prefill_repeats)
        unpruned_answer = generate_answer(model, processor, inputs, max_new_tokens)
    logger.info("answering with %s", config.method)
    handle = apply(model, config)
    try:
        prefill = measure_prefill(model, inputs, prefill_repeats)
        answer = generate_answer(model, processor, inputs, max_new_tokens)
        record = handle.last
    finally:
        handle.remove()
    viz = None
    if viz_dir is not None and record is not None:
        from .viz import write_all

        viz = {name: str(path) for name, path in write_all(record, clip.frames, viz_dir, max_frames=viz_frames).items()}
    return RunResult(
        model=model_name,
        model_class=type(model).__name__,
        video=clip.info.to_dict() if clip.info else {},
        question=question,
        frames=len(clip.frames),
        frame_indices=list(clip.indices),
        config=config.to_dict(),
        prompt_tokens=int(inputs["input_ids"].shape[1]),
        video_tokens=int(record.num_visual[0]) if record is not None else 0,
        kept_tokens=int(record.budget[0]) if record is not None else 0,
        answer=answer,
        prefill_s=prefill,
        unpruned_answer=unpruned_answer,
        unpruned_prefill_s=unpruned_prefill,
        device=str(param.device),
        dtype=str(param.dtype).removeprefix("torch."),
        max_new_tokens=max_new_tokens,
        viz=viz,
        record=record,
        clip=clip,
    )


# --------------------------------------------------------------------------------------------------------------
# Output and command line


def format_result(result: RunResult) -> str:
    """`result` as a small text table: one row per answer (unpruned first, with `compare`)."""
    info = result.video
    cfg = result.config
    seconds = f", {info['duration_s']:.1f} s" if info.get("duration_s") else ""
    lines = [
        f"model     {result.model} ({result.model_class}, {result.device}, {result.dtype})",
        f"video     {info.get('path', '?')}: {result.frames} of {info.get('total_frames', '?')} frames, "
        f"{info.get('width', '?')}x{info.get('height', '?')}{seconds}",
        f"question  {result.question}",
        f"pruning   method={cfg['method']} retention={cfg['retention']} layer K={cfg['layer']}",
        "",
    ]
    rows = []
    if result.unpruned_answer is not None:
        rows.append(("unpruned", result.video_tokens, result.unpruned_prefill_s, result.unpruned_answer))
    rows.append((cfg["method"], result.kept_tokens, result.prefill_s, result.answer))
    width = max(len("run"), *(len(r[0]) for r in rows))
    kept_width = max(4, len(str(result.video_tokens)) * 2 + 1)
    lines.append(f"{'run':<{width}}  {'kept':>{kept_width}}  {'prefill':>9}  answer")
    for name, kept, prefill, answer in rows:
        kept_text = f"{kept}/{result.video_tokens}"
        prefill_text = f"{prefill * 1000:.0f} ms" if prefill is not None else "-"
        shown = " ".join(answer.split()) or "(empty)"
        lines.append(f"{name:<{width}}  {kept_text:>{kept_width}}  {prefill_text:>9}  {shown}")
    speedup = result.speedup
    footer = f"\nkept {result.retained_fraction:.1%} of {result.video_tokens} video tokens"
    if speedup is not None:
        footer += f"; prefill speed-up x{speedup:.2f} (unpruned / pruned time)"
    footer += f"; prefill = median of forwards after a warm-up, measured here; {result.prompt_tokens} prompt tokens."
    lines.append(footer)
    return "\n".join(lines)


def print_result(result: RunResult, file: TextIO | None = None) -> None:
    """Print `format_result(result)` to `file` (default stdout)."""
    print(format_result(result), file=file if file is not None else sys.stdout)


def add_run_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `run` subcommand on `subparsers` (from `ArgumentParser.add_subparsers`); returns its parser.

    Its `func` default runs the command and returns the exit code (0).
    """

    parser = subparsers.add_parser(
        "run",
        help="answer a question about a video file with a video LLM, pruned (and unpruned with --compare)",
        description="Answer a question about a video file with a video LLM (LLaVA-OneVision, Qwen2-VL, "
        "Qwen2.5-VL), pruning video tokens inside the LLM; --compare also answers unpruned and times both.",
    )
    parser.add_argument("--model", required=True, help="checkpoint folder or Hugging Face model id")
    parser.add_argument("--video", required=True, help="video file (any format FFmpeg reads)")
    parser.add_argument("--question", required=True, help="the question to ask about the video")
    add_prune_arguments(parser)
    parser.add_argument("--compare", action="store_true", help="also answer without pruning and compare prefill")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="answer length limit (default 64)")
    parser.add_argument("--dtype", default="auto", choices=list(DTYPES), help="weights dtype (default: checkpoint's)")
    parser.add_argument(
        "--device", type=torch_device, default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)"
    )
    parser.add_argument("--attn", default=None, choices=ATTN_IMPLEMENTATIONS, help="attention implementation")
    parser.add_argument(
        "--prefill-repeats", type=positive_int, default=3, help="timed prefill forwards after a warm-up (default 3)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument(
        "--viz",
        type=output_dir,
        default=None,
        metavar="DIR",
        help="also draw the pruned prefill's pictures (PNG) into DIR",
    )
    parser.set_defaults(func=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    """The `run` subcommand: run with the parsed options, print the table (or JSON); returns 0."""
    config = PruneConfig(method=args.method, retention=args.retention, layer=args.layer)
    result = run(
        args.model,
        args.video,
        args.question,
        config=config,
        num_frames=args.frames,
        compare=args.compare,
        max_new_tokens=args.max_new_tokens,
        dtype=args.dtype,
        device=args.device,
        attn_implementation=args.attn,
        prefill_repeats=args.prefill_repeats,
        viz_dir=getattr(args, "viz", None),
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_result(result)
        if result.viz is not None:
            from .viz import print_written

            print_written(result.viz, result.record)
    return 0


__all__ = [
    "RUN_MODELS",
    "RunResult",
    "add_run_parser",
    "build_inputs",
    "format_result",
    "generate_answer",
    "inputs_on_model",
    "load_model",
    "load_processor",
    "measure_prefill",
    "print_result",
    "run",
    "run_command",
]
