"""Answer a question about a video file with a video LLM, pruned (and, with `compare`, not): the Python API
behind `sharp-prune run`.

Steps: decode `num_frames` frames evenly over the video (PyAV, `sharp_prune.video`), load the model and its
processor (`sharp_prune.models.loading`), build the prompt with the processor's chat template (one video entry
+ the question), answer greedily with pruning applied and, with `compare`, without it; each answer's prefill
time is the median of forwards of the whole prompt with `logits_to_keep=1`, after one warm-up forward.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import PruneConfig
from .engine import apply
from .errors import InputError
from .measure.timing import median_seconds, model_device
from .models.loading import build_inputs, check_layer_fits, generate_answer, inputs_on_model, load_model
from .record import PruneRecord
from .video import VideoClip, read_video

logger = logging.getLogger(__name__)


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
        from .viz.write import write_all

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


def measure_prefill(model: nn.Module, inputs: dict[str, Any], repeats: int = 3) -> float:
    """Median seconds of `repeats` forwards of the whole prompt with `logits_to_keep=1`, after a warm-up."""

    def forward() -> Any:
        with torch.no_grad():
            return model(**inputs, logits_to_keep=1)

    return median_seconds(forward, model_device(model), repeats)


__all__ = ["RunResult", "measure_prefill", "run"]
