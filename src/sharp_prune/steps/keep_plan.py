"""Step 5 of the data path: the keep plan, and slicing everything a decoder layer reads by it.

Hidden states, position embeddings, position ids and attention masks are always sliced together, by
one helper, so that kept tokens keep their original positions (1-D or 3-D M-RoPE alike).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ProtocolError
from .indices import true_first
from .locate import VisualLayout


@dataclass(frozen=True)
class KeepPlan:
    """Which original sequence positions continue past layer K.

    Attributes:
        index: [b, L'] sorted original positions that continue: every non-visual position (text,
            padding, never-pruned tokens) plus the kept visual ones.
        kept_visual: [b, B] sorted original positions of the kept visual tokens.
        seq_len: L, the prefill length the positions refer to.
        visual_hidden: [b, B, D] hidden states to place at the kept visual slots (aligned with
            `kept_visual`), or None to keep the tokens' own (merged tokens and registers use it).
        kept_valid: [b, L'] bool, False where a kept position is padding (None: no padding).
    """

    index: torch.Tensor
    kept_visual: torch.Tensor
    seq_len: int
    visual_hidden: torch.Tensor | None = None
    kept_valid: torch.Tensor | None = None

    @property
    def kept_len(self) -> int:
        return self.index.shape[1]

    @property
    def is_identity(self) -> bool:
        return self.kept_len == self.seq_len and self.visual_hidden is None


def build_keep_plan(
    layout: VisualLayout,
    keep_local: torch.Tensor,
    seq_len: int,
    visual_hidden: torch.Tensor | None = None,
    key_valid: torch.Tensor | None = None,
) -> KeepPlan:
    """Turn a selector's [b, B] local indices into original positions and the full kept index.

    `visual_hidden` ([b, B, D], aligned with `keep_local`) follows the tokens when they are sorted; `key_valid`
    ([b, L] bool, False at padding) gives the plan's `kept_valid`.
    """
    keep_local, order = keep_local.to(layout.positions.device).sort(dim=1)
    if visual_hidden is not None:
        visual_hidden = visual_hidden.gather(1, order[..., None].expand_as(visual_hidden))
    kept_visual = layout.positions.gather(1, keep_local)
    b = layout.batch_size
    keep = torch.ones(b, seq_len, dtype=torch.bool, device=layout.positions.device)
    keep.scatter_(1, layout.positions, False)
    keep.scatter_(1, kept_visual, True)
    # every sample keeps its L - N non-visual positions and its B distinct slots: a stable sort puts them first,
    # in order, without nonzero() (which waits for the device to say how many there are)
    kept_len = seq_len - layout.num_visual + keep_local.shape[1]
    index = true_first(keep, dim=1)[:, :kept_len].contiguous()
    kept_valid = gather_along(key_valid.bool(), index, dim=1) if key_valid is not None else None
    return KeepPlan(
        index=index, kept_visual=kept_visual, seq_len=seq_len, visual_hidden=visual_hidden, kept_valid=kept_valid
    )


def gather_along(tensor: torch.Tensor, index: torch.Tensor, dim: int, batch_dim: int = 0) -> torch.Tensor:
    """Gather `tensor` along `dim` with a per-sample [b, L'] index, broadcasting a size-1 batch dim."""
    b, kept = index.shape
    shape = list(tensor.shape)
    if shape[batch_dim] == 1 and b > 1:
        shape[batch_dim] = b
        tensor = tensor.expand(*shape)
    view = [1] * tensor.ndim
    view[batch_dim], view[dim] = b, kept
    expanded = list(tensor.shape)
    expanded[dim] = kept
    return tensor.gather(dim, index.to(tensor.device).view(view).expand(expanded))


def slice_mask(mask: Any, rows: torch.Tensor | None, cols: torch.Tensor) -> Any:
    """Slice an attention mask to kept query rows and key columns.

    Handles None (sdpa's implicit causal mask stays implicit: the kept sequence is still in order), a
    2-D padding mask [b, L] (flash attention) and a 4-D mask [b, 1, q, kv] (sdpa bool / eager float).
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ProtocolError(f"sharp-prune cannot slice an attention mask of type {type(mask).__name__}.")
    if mask.ndim == 2:
        return gather_along(mask, cols, dim=1)
    if mask.ndim != 4:
        raise ProtocolError(f"sharp-prune cannot slice a {mask.ndim}-D attention mask.")
    if rows is not None:
        mask = gather_along(mask, rows, dim=2)
    return gather_along(mask, cols, dim=3)


def decode_columns(plan: KeepPlan, total_len: int) -> torch.Tensor:
    """Key columns that layers >= K hold after the prefill, for a mask covering `total_len` positions."""
    b = plan.index.shape[0]
    new = torch.arange(plan.seq_len, total_len, device=plan.index.device).expand(b, -1)
    return torch.cat([plan.index, new], dim=1)


@dataclass(frozen=True)
class LayerInputs:
    """What a decoder layer reads along the sequence, after slicing to a keep plan."""

    hidden_states: torch.Tensor
    position_embeddings: tuple[torch.Tensor, ...] | None
    position_ids: torch.Tensor | None
    attention_mask: Any
    per_layer_input: torch.Tensor | None = None


def slice_position_embeddings(position_embeddings: tuple[torch.Tensor, ...], index: torch.Tensor) -> tuple:
    """cos/sin: [b or 1, L, d] (1-D RoPE and Qwen-VL's recomposed M-RoPE alike): sequence at dim -2."""
    return tuple(gather_along(t, index, dim=t.ndim - 2, batch_dim=t.ndim - 3) for t in position_embeddings)


def slice_position_ids(position_ids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[b or 1, L] text positions, or [3, b, L] M-RoPE positions."""
    batch_dim = 1 if position_ids.ndim == 3 else 0
    return gather_along(position_ids, index, dim=position_ids.ndim - 1, batch_dim=batch_dim)


def slice_layer_inputs(
    hidden_states: torch.Tensor,
    plan: KeepPlan,
    *,
    position_embeddings: tuple[torch.Tensor, ...] | None = None,
    position_ids: torch.Tensor | None = None,
    attention_mask: Any = None,
    per_layer_input: torch.Tensor | None = None,
    drop_position_ids: bool = False,
) -> LayerInputs:
    """Slice a decoder layer's hidden states and its position and mask inputs to the keep plan, together.

    Args:
        hidden_states: [b, L, D] layer input.
        plan: the keep plan.
        position_embeddings, position_ids, attention_mask: the layer's inputs (None where absent).
        per_layer_input: [b, L, d] Gemma 4's per-layer input of the layer (None where absent).
        drop_position_ids: set `position_ids` to None (flash attention reads gaps in them as packed
            sequences; RoPE is already in `position_embeddings`).
    """
    index = plan.index
    hidden = gather_along(hidden_states, index, dim=1)
    if plan.visual_hidden is not None:
        slots = torch.searchsorted(index, plan.kept_visual.to(index.device))
        states = plan.visual_hidden.to(hidden.device, hidden.dtype)
        hidden = hidden.scatter(1, slots[..., None].expand_as(states), states)
    return LayerInputs(
        hidden_states=hidden,
        position_embeddings=None
        if position_embeddings is None
        else slice_position_embeddings(position_embeddings, index),
        position_ids=None if drop_position_ids or position_ids is None else slice_position_ids(position_ids, index),
        attention_mask=slice_mask(attention_mask, index, index),
        per_layer_input=None if per_layer_input is None else gather_along(per_layer_input, index, dim=1),
    )
