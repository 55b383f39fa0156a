"""Step "record": what one prefill kept, in original sequence coordinates (`PruneRecord`, `handle.last`)."""

from __future__ import annotations

from typing import Any

import torch

from ..record import PruneRecord
from .keep_plan import KeepPlan
from .locate import Located
from .pre_stage import PreStage


def _rows(tensor: torch.Tensor | None) -> list[torch.Tensor] | None:
    # Views on the model's device: copying to the host here would make every prefill wait for the device.
    return None if tensor is None else list(tensor.detach().unbind(0))


def prefill_record(
    config: Any,
    located: Located,
    plan: KeepPlan,
    pre: PreStage | None = None,
    *,
    is_register: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
    raw_scores: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
    frame_similarity: list[torch.Tensor] | None = None,
) -> PruneRecord:
    """The record of a pruned prefill.

    Args:
        config: the `PruneConfig` that ran.
        located: the video tokens layer K saw (after the pre-LLM stage, if any).
        plan: the keep plan of layer K (in `located`'s coordinates).
        pre: the pre-LLM stage's result, or None.
        is_register: [b, B] register slots (RegD), aligned with the kept slots.
        scores, raw_scores, prior: [b, N] the scores selected on, before calibration, and the prior
            (kept only with `config.record_scores`).
        segments: [b, N] segment ids; frame_similarity: per sample [F-1] SegM cosines.
    """
    original = pre.original if pre is not None else located
    layout, first = located.layout, original.layout
    kept = plan.kept_visual if pre is None else pre.plan.index.gather(1, plan.kept_visual)
    rows = plan.index if pre is None else pre.plan.index.gather(1, plan.index)
    pruned_nothing = pre is None and plan.kept_len == located.seq_len
    keep_scores = config.record_scores
    return PruneRecord(
        method=config.method,
        layer=config.layer,
        seq_len=original.seq_len,
        kept_len=plan.kept_len,
        num_visual=[first.num_visual] * layout.batch_size,
        budget=[plan.kept_visual.shape[1]] * layout.batch_size,
        keep_positions=_rows(kept),
        visual_positions=_rows(first.positions),
        frame_ids=_rows(first.frame_ids),
        pre_kept=[layout.num_visual] * layout.batch_size if pre is not None else None,
        pre_keep_positions=_rows(pre.plan.kept_visual) if pre is not None else None,
        num_query_rows=located.num_query_rows,
        attention_mask=_rows(original.key_valid),
        scores=_rows(scores) if keep_scores else None,
        raw_scores=_rows(raw_scores) if keep_scores else None,
        prior=_rows(prior) if keep_scores else None,
        segment_ids=_rows(segments),
        frame_similarity=frame_similarity if keep_scores else None,
        is_register=_rows(is_register),
        grid=first.grid,
        output_positions=None if pruned_nothing else _rows(rows),
        config=config.to_dict(),
    )


def empty_record(config: Any, batch: int, seq_len: int) -> PruneRecord:
    """The record of a prefill without video tokens: nothing found, nothing pruned."""
    return PruneRecord(
        method=config.method,
        layer=config.layer,
        seq_len=seq_len,
        kept_len=seq_len,
        num_visual=[0] * batch,
        budget=[0] * batch,
        keep_positions=[torch.empty(0, dtype=torch.long) for _ in range(batch)],
        config=config.to_dict(),
    )
