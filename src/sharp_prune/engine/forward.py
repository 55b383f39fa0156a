"""What one forward call of a pruned model does, as an object the hooks hand control to.

The handle's hooks do nothing themselves: at each point the forward reaches (the model's call, the text
decoder's call, every attention call of layers < K, the calls of layers K..L-1, the model's return) they call
one method of the current `Forward`. `Prefill` (engine/prefill.py) runs the data path's steps; the classes here
are the other kinds of call: a prefill without video tokens, a decoding step that continues a pruned prefill,
and any other call.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import hf_protocol as hf
from ..config import PruneConfig
from ..models import ModelAdapter
from ..record import PruneRecord
from ..steps.keep_plan import KeepPlan, decode_columns, slice_mask
from ..steps.pre_stage import decode_inputs
from ..steps.sliding import decode_window_mask

Replacement = tuple[tuple[Any, ...], dict[str, Any]] | None  # what a forward pre-hook returns


@dataclass
class Parts:
    """What the forwards of one handle share: the config, the model's parts, and caches that outlive a forward.

    Attributes:
        config: the `PruneConfig` (the method's class: it says what to compute, and owns its steps).
        selector: the method's selector.
        adapter: the model family's entry.
        model: a weak reference to the model.
        layers: the text decoder's layers.
        base_impl: the attention implementation the handle wraps; base_attention: its function.
        drop_position_ids: hand layers >= K no position ids (flash attention reads gaps as packed sequences).
        prior_cache: PosC priors by token layout (`posc_prior="cached"`); blank_frames: blank frames by grid.
        windows: each decoder layer's sliding window, None for full attention (`hf.layer_windows`).
        score_layer: the layer whose attention scores the video tokens: K-1, or the last full-attention layer
            below K on a model with sliding-window or linear-attention layers (`steps.sliding.score_layer`).
        kinds: each decoder layer's kind (`hf.layer_kinds`): full, sliding or linear attention.
        kv_sources: the layer whose keys and values each layer attends to (`hf.kv_sources`: itself, or Gemma 4's
            KV-sharing layers' source).
        per_layer: the decoder hands each layer a per-layer input (Gemma 4, `hf.per_layer_input_size`).
    """

    config: PruneConfig
    selector: Any
    adapter: ModelAdapter
    model: weakref.ref
    layers: nn.ModuleList
    base_impl: str = "sdpa"
    base_attention: Any = None
    drop_position_ids: bool = False
    prior_cache: dict[tuple, torch.Tensor] = field(default_factory=dict)
    blank_frames: dict[tuple, torch.Tensor] = field(default_factory=dict)
    windows: tuple[int | None, ...] = ()
    score_layer: int = 0
    kinds: tuple[str, ...] = ()
    kv_sources: tuple[int, ...] = ()
    per_layer: bool = False

    @property
    def k(self) -> int:
        return self.config.layer


class Forward:
    """A forward call that changes nothing (decoding from a cache that is not a pruned prefill's, say)."""

    record: PruneRecord | None = None

    def enter_decoder(self, decoder: nn.Module, call: hf.DecoderCall) -> Replacement:
        return None

    def attend(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        return None

    def keep_rope(self, index: int, call: hf.LayerCall) -> None:
        return None

    def leave_decoder(self, output: Any) -> Any:
        return None

    def at_layer(self, index: int, call: hf.LayerCall) -> Replacement:
        return None

    def finish(self, output: Any) -> None:
        return None


def check_prefill_at_k(parts: Parts, call: hf.LayerCall) -> None:
    """What layer K receives must agree with the model pre-hook's verdict "this forward is a prefill" (layer K's
    cache holds no tokens, or, for a linear-attention layer, no recurrent state yet)."""
    if hf.cache_started(call.cache, parts.k):
        raise hf.protocol_error(
            f"the model was called without a filled cache (judged a prefill), yet decoder layer {parts.k} received "
            "a cache already holding its tokens or state (a decoding step that looked like a prefill)"
        )


class NoVideoPrefill(Forward):
    """A prefill without video tokens: nothing to prune, but layer K must still see a prefill."""

    def __init__(self, parts: Parts, record: PruneRecord) -> None:
        self.parts = parts
        self.record = record

    def at_layer(self, index: int, call: hf.LayerCall) -> Replacement:
        if index == self.parts.k:
            check_prefill_at_k(self.parts, call)
        return None


class Decode(Forward):
    """A decoding step after a pruned prefill: layers >= K cache only the kept tokens, so their masks are cut to
    the same columns (and, after a pre-LLM stage, every layer's: the decoder's inputs are adjusted). A sliding
    layer >= K gets its window, in original positions, over what its own cache holds (`decode_window_mask`). A
    linear-attention layer is left alone: its mask is the step's own 2-D padding mask (or None), already local, and
    its state holds no columns to cut. A KV-sharing layer (Gemma 4) attends to its source layer's cache."""

    def __init__(
        self,
        plan: KeepPlan,
        pre: KeepPlan | None,
        windows: tuple[int | None, ...] = (),
        kinds: tuple[str, ...] = (),
        kv_sources: tuple[int, ...] = (),
    ) -> None:
        self.plan = plan
        self.pre = pre
        self.windows = windows
        self.kinds = kinds
        self.kv_sources = kv_sources
        self._cut: dict[int, Any] = {}

    def enter_decoder(self, decoder: nn.Module, call: hf.DecoderCall) -> Replacement:
        if self.pre is None:
            return None
        reference = call.inputs_embeds if call.inputs_embeds is not None else call.input_ids
        cached = call.cache.get_seq_length() if call.cache is not None else self.pre.kept_len
        mask, positions = decode_inputs(self.pre, call.attention_mask, call.position_ids, cached, reference.shape[1])
        return call.replaced(attention_mask=mask, position_ids=positions).hook_result

    def at_layer(self, index: int, call: hf.LayerCall) -> Replacement:
        mask = call.attention_mask
        if not isinstance(mask, torch.Tensor):
            return None
        if index < len(self.kinds) and self.kinds[index] == hf.LINEAR_ATTENTION:
            return None
        window = self.windows[index] if index < len(self.windows) else None
        source = self.kv_sources[index] if index < len(self.kv_sources) else index
        new = call.hidden_states.shape[1]
        # tokens cached before this step: a KV-sharing layer's source ran earlier in this step and holds them already
        cached = hf.cache_length(call.cache, source) - (new if source != index else 0)
        cut = self._cut.get(id(mask))
        if cut is None and window is not None:
            plan = self.plan
            cut = self._cut[id(mask)] = decode_window_mask(
                mask, plan.index, plan.kept_valid, plan.seq_len, cached, new, window
            )
        if window is not None:
            return call.replaced(attention_mask=cut)
        if cut is None:
            cut = self._cut[id(mask)] = slice_mask(mask, None, decode_columns(self.plan, mask.shape[-1]))
        expected = cached + new
        if cut.shape[-1] != expected:
            raise hf.protocol_error(
                f"decoding: decoder layer {index} caches {expected - new} tokens, but its attention mask, cut to the "
                f"pruned columns, covers {cut.shape[-1]}"
            )
        return call.replaced(attention_mask=cut)
