"""The pictures of one pruned prefill of a video LLM, straight from a video file and a question."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..config import PruneConfig
from ..errors import InputError
from .figure import require_matplotlib
from .write import write_all

logger = logging.getLogger(__name__)


def visualise_video(
    model: str | Path,
    video: str | Path,
    question: str,
    config: PruneConfig,
    out_dir: str | Path,
    num_frames: int = 32,
    max_frames: int = 16,
    max_new_tokens: int = 32,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
) -> tuple[str, Any, dict[str, Path]]:
    """Answer `question` about `video` once with pruning (scores recorded) and write the pictures.

    One generation (whose prefill is recorded), no timing: cheaper than `run(..., viz_dir=...)`.
    Every check (matplotlib, question, video) runs before the model loads.

    Returns:
        (answer, the `PruneRecord`, {picture: path}).
    """
    from ..engine import apply
    from ..models.loading import build_inputs, check_layer_fits, generate_answer, inputs_on_model, load_model
    from ..video import read_video

    require_matplotlib()
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question is empty; pass the question to ask about the video, e.g. 'What happens?'.")
    config = config.replace(record_scores=True)
    clip = read_video(video, num_frames)
    check_layer_fits(model, config.layer)
    logger.info("loading %s", model)
    loaded, processor = load_model(model, dtype=dtype, device=device, attn_implementation=attn_implementation)
    inputs = inputs_on_model(build_inputs(processor, clip, question), loaded)
    handle = apply(loaded, config)
    try:
        answer = generate_answer(loaded, processor, inputs, max_new_tokens)
        record = handle.last
    finally:
        handle.remove()
    if record is None:
        raise InputError("the model ran without pruning anything (no video tokens found in the prompt?).")
    return answer, record, write_all(record, clip.frames, out_dir, max_frames=max_frames)
