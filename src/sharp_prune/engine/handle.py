"""The engine: `apply(model, config)` attaches hooks that prune once per prefill, `remove()` undoes it.

Per forward call of the model:

1. model pre-hook: tell prefill from decoding by the cache state; on prefill, locate the visual tokens
   (adapter) and decide which query rows to score.
2. attention at layer K-1 (registered function): score the visual tokens from post-RoPE q and k.
3. layer K pre-hook: select (selector), build the keep plan, slice hidden states, position
   embeddings, position ids and mask together. Layers > K get the same sliced kwargs.
4. model post-hook: publish `handle.last`. Layers >= K now cache only kept tokens; on later decoding
   steps their masks are cut to the same columns.

Every argument is read through `hf_protocol` (transformers' calling protocol, in one module). Where what the
hooks see contradicts itself (a "prefill" whose layer K already holds a cache, a prefill that never reached
layer K, a returned cache that layer K never wrote), the forward raises `ProtocolError` instead of returning.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import hf_protocol as hf
from ..config import PruneConfig, check_layer
from ..errors import AlreadyAppliedError, ConfigError, ConfigTypeError, InputError
from ..methods import SelectionInput, Selector, build_selector
from ..methods.sharp.posc import tile_blank_frame
from ..methods.sharp.segm import frame_descriptors, segment_attention, segment_frames, segment_mask
from ..models import ModelAdapter, resolve_adapter
from ..models.base import mixed_frame_sizes
from ..record import PruneRecord
from ..steps.keep_plan import (
    KeepPlan,
    build_keep_plan,
    decode_columns,
    gather_along,
    slice_layer_inputs,
    slice_mask,
    slice_position_embeddings,
    slice_position_ids,
)
from ..steps.locate import VisualLayout, protect_last_token
from ..steps.pre_stage import temporal_merge_keep
from ..steps.score import attention_received
from . import attention as attn

logger = logging.getLogger(__name__)

# model -> its active handle: one handle per model instance.
_APPLIED: weakref.WeakKeyDictionary[nn.Module, PruneHandle] = weakref.WeakKeyDictionary()


@dataclass
class _Prefill:
    """State of one prefill forward (dropped when the forward ends)."""

    layout: VisualLayout
    seq_len: int
    budget: int
    query_index: torch.Tensor | None = None
    query_valid: torch.Tensor | None = None
    key_valid: torch.Tensor | None = None
    input_valid: torch.Tensor | None = None  # [b, L] key_valid in original coordinates (the record's mask)
    scores: torch.Tensor | None = None
    prior: torch.Tensor | None = None
    embeds: torch.Tensor | None = None  # [b, L, D] input embeddings of the decoder
    segments: torch.Tensor | None = None  # [b, N] segment id of each visual token
    frame_similarity: list[torch.Tensor] | None = None  # per sample [F-1]: SegM's cosine of frames f, f+1
    segment_map: torch.Tensor | None = None  # [b, L] segment id, -1 for non-visual (SegM mask)
    segment_bias: torch.Tensor | None = None  # [b, 1, L, L] SegM's additive mask (eager only)
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # cos/sin of layer K-1 (to remove RoPE)
    observed: set[int] = field(default_factory=set)  # layers < K whose attention went through our function
    phase: str = "real"  # "prior" while PosC's content-free pass runs
    pre_plan: KeepPlan | None = None  # what the pre-LLM stage kept (original coordinates)
    original_layout: VisualLayout | None = None  # the layout before the pre-LLM stage
    plan: KeepPlan | None = None
    sliced: dict[int, Any] = field(default_factory=dict)  # id(original kwarg) -> sliced value


@dataclass
class _Decode:
    """Cut masks of layers >= K to the columns their (pruned) cache holds."""

    plan: KeepPlan
    pre_plan: KeepPlan | None = None
    sliced: dict[int, Any] = field(default_factory=dict)
    checked: set[int] = field(default_factory=set)  # layers whose cut mask was checked against their cache


def _query_rows(
    layout: VisualLayout, key_valid: torch.Tensor | None, seq_len: int, which: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """[b, R] query positions and validity: the last real token, or every text token after the video."""
    device = layout.positions.device
    b = layout.batch_size
    positions = torch.arange(seq_len, device=device).expand(b, -1)
    valid = key_valid if key_valid is not None else torch.ones(b, seq_len, dtype=torch.bool, device=device)
    if which == "last":
        last = torch.where(valid, positions, -1).max(dim=1).values
        return last[:, None], torch.ones(b, 1, dtype=torch.bool, device=device)
    after_video = positions > layout.video_end[:, None]
    rows_mask = after_video & valid
    counts = rows_mask.sum(dim=1)
    if int(counts.min()) == 0:
        raise InputError(
            "scoring with text queries needs at least one text token after the last video token in every "
            "sample; put the question after the video, or use a method that scores with the last token."
        )
    width = int(counts.max())
    # Stable sort puts each sample's query rows first, in order; pad with the last row, marked invalid.
    order = torch.sort((~rows_mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
    query_valid = torch.arange(width, device=device)[None, :] < counts[:, None]
    return order, query_valid


def _remove_rope(
    query: torch.Tensor, key: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Undo `apply_rotary_pos_emb` (rotate-half convention): x = (y cos - rot(y) sin) / (cos^2 + sin^2)."""
    if rope is None:
        raise hf.protocol_error("decoder layer K-1 received no position embeddings, so RoPE cannot be removed")
    cos, sin = (t.unsqueeze(1).float() for t in rope)
    norm = cos * cos + sin * sin

    def unrotate(y: torch.Tensor) -> torch.Tensor:
        y = y.float()
        half = y.shape[-1] // 2
        rotated = torch.cat((-y[..., half:], y[..., :half]), dim=-1)
        return (y * cos - rotated * sin) / norm

    return unrotate(query), unrotate(key)


def _checked_frame_map(frame_map: Any) -> torch.Tensor:
    """A declared frame map as a long tensor, or `InputError` saying what a frame map is."""
    what = "a frame map is an integer tensor [batch, seq_len]: each visual token's frame index (0, 1, ...), -1 for text"
    if not isinstance(frame_map, torch.Tensor) or frame_map.ndim != 2 or 0 in frame_map.shape:
        shape = tuple(frame_map.shape) if isinstance(frame_map, torch.Tensor) else type(frame_map).__name__
        raise InputError(f"{what}; got {shape}. Build one with sp.frame_map_for_span(...).")
    if frame_map.dtype == torch.bool:
        raise InputError(
            f"{what}; got a bool mask, which cannot say which frame a token belongs to (False would read as frame "
            "0). Use torch.where(mask, frame_index, -1), or sp.frame_map_for_span(...)."
        )
    if frame_map.is_floating_point() or frame_map.is_complex():
        raise InputError(f"{what}; got dtype {frame_map.dtype}.")
    frame_map = frame_map.long()
    if frame_map.numel() and int(frame_map.min()) < -1:
        raise InputError(f"{what}; got {int(frame_map.min())}, below -1.")
    return frame_map


def _rows(tensor: torch.Tensor | None) -> list[torch.Tensor] | None:
    return None if tensor is None else list(tensor.detach().cpu().unbind(0))


def _layout_key(layout: VisualLayout, state: _Prefill) -> tuple:
    """What PosC's cached prior depends on: the token layout (and segments), not the content.

    Every video position counts, not only the first (text may sit between frames), and so does the frame
    grid (a 2 x 3 and a 3 x 2 grid have the same token counts but different blank frames and M-RoPE
    positions); after the pre-LLM stage, so do the original positions of the survivors (their places).
    """
    rows = []
    for row in range(layout.batch_size):
        valid = state.key_valid[row] if state.key_valid is not None else None
        first_real = int(valid.nonzero()[0]) if valid is not None else 0
        queries = int(state.query_valid[row].sum()) if state.query_valid is not None else 0
        frames = tuple(torch.unique_consecutive(layout.frame_ids[row], return_counts=True)[1].tolist())
        segments = ()
        if state.segments is not None:
            segments = tuple(torch.unique_consecutive(state.segments[row], return_counts=True)[1].tolist())
        positions = tuple((layout.positions[row] - first_real).tolist())
        survivors = tuple(state.pre_plan.kept_visual[row].tolist()) if state.pre_plan is not None else ()
        rows.append((first_real, positions, survivors, frames, queries, segments))
    return (state.seq_len, layout.grid, tuple(rows))


class PruneHandle:
    """A pruning setup attached to one model instance; returned by `sharp_prune.apply`.

    Attributes:
        config: the `PruneConfig`.
        adapter: the `ModelAdapter` in use.
        last: `PruneRecord` of the latest prefill (None before the first).
    """

    def __init__(self, model: nn.Module, config: PruneConfig, adapter: ModelAdapter) -> None:
        self.config = config
        self.adapter = adapter
        self.last: PruneRecord | None = None
        self._model_ref = weakref.ref(model)
        self._selector: Selector = build_selector(config)
        self._decoder = adapter.decoder(model)
        self._layers = adapter.layers(model)
        self._attention_modules = hf.attention_modules(self._layers)
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._local = threading.local()  # per thread: the frame map declared for its calls (generic adapter)
        self._prefill: _Prefill | None = None
        self._decode: _Decode | None = None
        self._expect_prefill = False  # the model pre-hook judged this forward a prefill
        self._plan_cache: weakref.ref[hf.Cache] | None = None
        self._last_plan: KeepPlan | None = None
        self._last_pre_plan: KeepPlan | None = None
        self._prior_cache: dict[tuple, torch.Tensor] = {}
        self._blank_frames: dict[tuple, torch.Tensor] = {}
        self._use_base_implementation(hf.attention_implementation(self._decoder.config))
        self._forward_params = hf.forward_parameters(model)
        self._lock = threading.Lock()
        self._running: int | None = None  # thread id of the forward in progress
        self._active = False

    # ----------------------------------------------------------------- lifecycle
    def _use_base_implementation(self, impl: str) -> None:
        """Wrap `impl`, the attention implementation the text decoder has now (and restore it on remove)."""
        if isinstance(impl, str) and impl.startswith(attn.PREFIX):
            raise AlreadyAppliedError(
                "this model's attention is already wrapped by sharp-prune; remove that handle first."
            )
        attn.registered_name(impl)  # validates the implementation
        self._base_impl = impl
        self.base_attention = attn.base_attention_for(impl, self._attention_modules[0])
        self._drop_position_ids = "flash" in impl

    def _attach(self) -> None:
        model = self._model_ref()
        k = self.config.layer
        hf.set_attention_implementation(self._decoder.config, attn.registered_name(self._base_impl))
        attn.attach(self._attention_modules, self)
        self._hooks.append(model.register_forward_pre_hook(self._on_model_forward, with_kwargs=True))
        # always_call: the forward's state is dropped (and the model freed for other threads) even when it raises
        self._hooks.append(model.register_forward_hook(self._on_model_output, always_call=True))
        selector = self._selector
        if selector.needs_segments or selector.needs_prior or self.config.pre is not None:
            self._hooks.append(self._decoder.register_forward_pre_hook(self._on_decoder_forward, with_kwargs=True))
        if not selector.rope:
            self._hooks.append(self._layers[k - 1].register_forward_pre_hook(self._keep_rope, with_kwargs=True))
        for idx in range(k, len(self._layers)):
            self._hooks.append(self._layers[idx].register_forward_pre_hook(self._layer_hook(idx), with_kwargs=True))
        _APPLIED[model] = self
        self._active = True

    def remove(self) -> None:
        """Detach every hook and restore the attention implementation; safe to call twice."""
        if not self._active:
            return
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        attn.detach(self._attention_modules)
        hf.set_attention_implementation(self._decoder.config, self._base_impl)
        model = self._model_ref()
        if model is not None and _APPLIED.get(model) is self:
            del _APPLIED[model]
        self._prefill = self._decode = None
        self._expect_prefill = False
        self._plan_cache = None
        self._active = False

    def reattach(self) -> PruneHandle:
        """Attach a removed handle again, with its caches (PosC's cached priors, blank frames) intact."""
        if self._active:
            return self
        model = self._model_ref()
        if model is None:
            raise InputError("the model of this handle no longer exists (it was freed); apply to a live model.")
        existing = _APPLIED.get(model)
        if existing is not None and existing.active:
            raise AlreadyAppliedError("this model has another active sharp-prune handle; remove it first.")
        # The implementation may have changed while removed (set_attn_implementation): wrap, and later restore, it.
        self._use_base_implementation(hf.attention_implementation(self._decoder.config))
        self._attach()
        return self

    @property
    def active(self) -> bool:
        return self._active

    def __enter__(self) -> PruneHandle:
        """`with handle:` prunes inside the block; a removed handle is attached again on entry."""
        if not self._active:
            self.reattach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self._active else "removed"
        return f"PruneHandle({self.config!r}, adapter={self.adapter.name!r}, {state})"

    def _refuse_copy(self, *args: object) -> Any:
        raise AlreadyAppliedError(
            "a model with sharp-prune applied cannot be deep-copied or pickled (its hooks belong to this handle "
            "and this model): call handle.remove() first, copy or save the model, then sp.apply(copy, "
            "handle.config) on the copy."
        )

    # A deep copy or pickle of the model reaches the handle through its hooks.
    __deepcopy__ = _refuse_copy
    __reduce_ex__ = _refuse_copy

    # ----------------------------------------------------------------- generic adapter
    def set_visual_frames(self, frame_map: torch.Tensor | None) -> None:
        """Declare the visual tokens of this thread's next calls (generic adapter).

        `frame_map` is a [b, L] integer tensor: each visual token's frame index (0, 1, ...), -1 for text;
        None clears the declaration. A declaration belongs to the thread that made it.
        """
        self._local.declared = None if frame_map is None else _checked_frame_map(frame_map)

    @contextmanager
    def visual_frames(self, frame_map: torch.Tensor) -> Iterator[PruneHandle]:
        """Context manager form of `set_visual_frames`; on exit the declaration before it is back (blocks nest)."""
        previous = self._declared
        self.set_visual_frames(frame_map)
        try:
            yield self
        finally:
            self._local.declared = previous

    @property
    def _declared(self) -> torch.Tensor | None:
        return getattr(self._local, "declared", None)

    # ----------------------------------------------------------------- hooks
    def _on_model_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        me = threading.get_ident()
        with self._lock:
            if self._running is not None and self._running != me:
                raise InputError(
                    "this pruned model is running a forward in another thread; its per-forward state is not shared "
                    "safely: run one forward at a time (a lock around generate), or load one model per thread."
                )
            self._running = me
        self._prefill = self._decode = None
        self._expect_prefill = False
        call = hf.read_model_call(self._forward_params, args, kwargs)
        if not call.is_prefill:
            # Decoding (or a continuation): layers >= K hold the pruned cache of our last prefill.
            if self._plan_cache is not None and self._plan_cache() is call.cache and self._last_plan is not None:
                self._decode = _Decode(plan=self._last_plan, pre_plan=self._last_pre_plan)
            return
        hf.check_dynamic_cache(call.cache)
        self._expect_prefill = True
        self._plan_cache = None
        self._last_plan = self._last_pre_plan = None
        self.last = None  # a prefill that fails leaves no record of an earlier one behind
        layout = self.adapter.locate(module, call, self._declared)
        seq_len, batch = call.seq_len, call.batch_size
        mask = call.attention_mask
        key_valid = mask.bool() if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
        if layout is not None:
            if key_valid is not None and bool((~key_valid.gather(1, layout.positions)).any()):
                raise InputError("some visual tokens are masked out as padding in attention_mask; check the inputs.")
            layout = protect_last_token(layout, key_valid, seq_len)
        needs_grid = self._selector.needs_prior and self.adapter.blank_frame_needs_grid
        if layout is not None and needs_grid and layout.grid is None:
            raise InputError(mixed_frame_sizes(self.adapter.name))
        if layout is None:
            self.last = self._empty_record(batch, seq_len)
            return
        budget = layout.num_visual if self.config.method == "none" else self.config.budget(layout.num_visual)
        state = _Prefill(layout=layout, seq_len=seq_len, budget=budget, key_valid=key_valid, input_valid=key_valid)
        if self._selector.query != "none":
            state.query_index, state.query_valid = _query_rows(layout, key_valid, seq_len, self._selector.query)
        self._prefill = state

    def _on_decoder_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Prefill: keep the input embeddings (SegM descriptors, PosC's blank copy) and segment frames."""
        state = self._prefill
        if state is None:
            if self._decode is not None and self._decode.pre_plan is not None:
                return self._pre_stage_decode(hf.read_decoder_call(args, kwargs))
            return None
        call = hf.read_decoder_call(args, kwargs)
        embeds = call.inputs_embeds
        replaced = None
        if embeds is None:
            # hand the decoder the embeddings we computed, so that the lookup runs once
            embeds = hf.embed_tokens(module, call.input_ids)
            replaced = call.replaced(inputs_embeds=embeds)
        if self.config.pre == "temporal_merge":
            call.check_resizable()
            embeds, replaced = self._pre_stage(state, embeds, call)
        state.embeds = embeds
        if self._selector.needs_segments:
            state.segments = self._segment(state.layout, embeds)
            if self._selector.segment_mask:
                state.segment_map = torch.full(embeds.shape[:2], -1, dtype=torch.long, device=embeds.device)
                state.segment_map.scatter_(1, state.layout.positions, state.segments)
        return replaced

    def _pre_stage(
        self, state: _Prefill, embeds: torch.Tensor, call: hf.DecoderCall
    ) -> tuple[torch.Tensor, tuple[tuple[Any, ...], dict[str, Any]]]:
        """Drop temporal duplicates before layer 0; later stages work on the shorter sequence."""
        layout = state.layout
        visual = gather_along(embeds, layout.positions, dim=1)
        keep = torch.stack(
            [
                temporal_merge_keep(visual[row], layout.frame_ids[row], self.config.pre_threshold)
                for row in range(layout.batch_size)
            ]
        )
        counts = keep.sum(dim=1).tolist()
        if len(set(counts)) != 1:
            raise InputError(
                f"pre='temporal_merge' kept {counts} video tokens in the samples of this batch; samples must "
                "keep the same number to be batched. Run them one at a time, or drop the pre-LLM stage."
            )
        if counts[0] == layout.num_visual:
            return embeds, call.replaced(inputs_embeds=embeds)
        local = keep.nonzero()[:, 1].view(layout.batch_size, -1)
        pre_plan = build_keep_plan(layout, local, state.seq_len)
        index = pre_plan.index
        attention_mask = call.attention_mask
        if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim != 2:
            raise InputError("pre='temporal_merge' needs a 2-D attention_mask (or none), not a prepared 4-D mask.")
        position_ids = call.position_ids
        if position_ids is None:
            position_ids = torch.arange(state.seq_len, device=embeds.device)[None]
        short_embeds = gather_along(embeds, index, dim=1)
        replaced = call.replaced(
            inputs_embeds=short_embeds,
            position_ids=slice_position_ids(position_ids, index),
            attention_mask=gather_along(attention_mask, index, dim=1) if attention_mask is not None else None,
        )
        # Re-express the prefill in the shorter sequence's coordinates.
        state.original_layout = layout
        state.pre_plan = pre_plan
        state.layout = VisualLayout(
            positions=torch.searchsorted(index, pre_plan.kept_visual),
            frame_ids=layout.frame_ids.gather(1, local),
            grid=layout.grid,
            span_end=None if layout.span_end is None else torch.searchsorted(index, layout.span_end[:, None])[:, 0],
        )
        state.seq_len = index.shape[1]
        if state.key_valid is not None:
            state.key_valid = gather_along(state.key_valid, index, dim=1)
        state.budget = (
            state.layout.num_visual if self.config.method == "none" else self.config.budget(state.layout.num_visual)
        )
        if self._selector.query != "none":
            state.query_index, state.query_valid = _query_rows(
                state.layout, state.key_valid, state.seq_len, self._selector.query
            )
        return short_embeds, replaced

    def _pre_stage_decode(self, call: hf.DecoderCall) -> Any:
        """Decoding after a pre-LLM stage: every layer's cache lacks the merged tokens."""
        pre_plan = self._decode.pre_plan
        attention_mask = call.attention_mask
        new_mask = attention_mask
        if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2:
            new_mask = gather_along(attention_mask, decode_columns(pre_plan, attention_mask.shape[1]), dim=1)
        position_ids = call.position_ids
        if position_ids is None:
            reference = call.inputs_embeds if call.inputs_embeds is not None else call.input_ids
            dropped = pre_plan.seq_len - pre_plan.kept_len
            start = (call.cache.get_seq_length() if call.cache is not None else pre_plan.kept_len) + dropped
            position_ids = torch.arange(start, start + reference.shape[1], device=reference.device)[None]
        return call.replaced(attention_mask=new_mask, position_ids=position_ids)

    def _segment(self, layout: VisualLayout, embeds: torch.Tensor) -> torch.Tensor:
        visual = gather_along(embeds, layout.positions, dim=1)
        rows, similarity = [], []
        for row in range(layout.batch_size):
            descriptors = frame_descriptors(visual[row], layout.frame_ids[row])
            frame_segments = segment_frames(descriptors, self.config.segm_tau, self.config.segm_max_segments)
            rows.append(frame_segments[layout.frame_ids[row]])
            if self.config.record_scores:
                similarity.append((descriptors[:-1] * descriptors[1:]).sum(dim=-1).detach().cpu())
        if self.config.record_scores and self._prefill is not None:
            self._prefill.frame_similarity = similarity
        return torch.stack(rows)

    def _keep_rope(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._prefill is not None:
            self._prefill.rope = hf.read_layer_call(args, kwargs).position_embeddings

    def observe_attention(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Called by the registered attention function of every text layer (see `attention.py`)."""
        state = self._prefill
        layer_idx = hf.layer_index(module)
        if state is None or layer_idx is None or layer_idx >= self.config.layer or key.shape[2] != state.seq_len:
            return None
        state.observed.add(layer_idx)
        if layer_idx == self.config.layer - 1 and state.query_index is not None:
            q, k = (query, key) if self._selector.rope else _remove_rope(query, key, state.rope)
            scores = attention_received(
                q, k, state.query_index, state.query_valid, state.key_valid, hf.attention_scaling(module)
            )
            scores = scores.gather(1, state.layout.positions.to(scores.device))
            if state.phase == "prior":
                state.prior = scores
            else:
                state.scores = scores
        if state.segment_map is None:
            return None
        if self._base_impl == "eager":
            # Eager returns the attention weights (output_attentions): run it under SegM's dense mask, so that the
            # weights are SegM's too. Eager materialises L x L anyway; the other implementations never do.
            if state.segment_bias is None or state.segment_bias.dtype != query.dtype:
                allowed = segment_mask(state.segment_map, state.key_valid, self.config.segm_within)
                state.segment_bias = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill(
                    ~allowed.to(query.device), torch.finfo(query.dtype).min
                )
            return self.base_attention(module, query, key, value, state.segment_bias, **kwargs)
        output = segment_attention(
            query,
            key,
            value,
            state.segment_map,
            state.key_valid,
            hf.attention_scaling(module),
            self.config.segm_within,
        )
        return output, None

    def _layer_hook(self, idx: int):  # noqa: ANN202 - returns a torch hook
        def hook(layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if self._prefill is None and self._decode is None and not self._expect_prefill:
                return None
            call = hf.read_layer_call(args, kwargs)
            if self._expect_prefill and idx == self.config.layer:
                self._check_prefill_at_k(call)
            if self._prefill is not None:
                return self._prune_or_reuse(idx, call)
            if self._decode is not None:
                return self._cut_decode_mask(idx, call)
            return None

        return hook

    def _check_prefill_at_k(self, call: hf.LayerCall) -> None:
        """What layer K receives must agree with the model pre-hook's verdict "this forward is a prefill"."""
        held = hf.cache_length(call.cache, self.config.layer)
        if held > 0:
            self._fail(
                f"the model was called without a filled cache (judged a prefill), yet decoder layer "
                f"{self.config.layer} received a cache already holding {held} tokens (a decoding step that looked "
                "like a prefill)"
            )
        state = self._prefill
        if state is not None and call.hidden_states.shape[1] != state.seq_len:
            self._fail(
                f"decoder layer {self.config.layer} received {call.hidden_states.shape[1]} positions, the prefill "
                f"has {state.seq_len}"
            )
        if state is not None:
            needed = set()
            if self._selector.segment_mask and state.segment_map is not None:
                needed = set(range(self.config.layer))
            elif self._selector.query != "none":
                needed = {self.config.layer - 1}
            missing = sorted(needed - state.observed)
            if missing:
                self._fail(
                    f"the attention of decoder layer(s) {missing} did not run through sharp-prune's registered "
                    "attention function, so their scores (or SegM's mask) are missing; was the attention "
                    "implementation changed after apply()?"
                )

    def _sliced(self, state: _Prefill, value: Any, slicer: Any) -> Any:
        """`value` sliced to the keep plan, once per object (layers > K usually receive the same ones)."""
        if value is None:
            return None
        sliced = state.sliced.get(id(value))
        if sliced is None:
            sliced = slicer(value)
            state.sliced[id(value)] = sliced
        return sliced

    def _prune_or_reuse(self, idx: int, call: hf.LayerCall) -> Any:
        state = self._prefill
        if idx == self.config.layer:
            call.check_prunable()
            state.plan = self._select(state, call)
            self._plan_cache = weakref.ref(call.cache) if call.cache is not None else None
            self._last_plan = state.plan
            self._last_pre_plan = state.pre_plan
            if state.plan.is_identity:
                return None
            sliced = slice_layer_inputs(
                call.hidden_states,
                state.plan,
                position_embeddings=call.position_embeddings,
                position_ids=call.position_ids,
                attention_mask=call.attention_mask,
                drop_position_ids=self._drop_position_ids,
            )
            for original, value in (
                (call.position_embeddings, sliced.position_embeddings),
                (call.position_ids, sliced.position_ids),
                (call.attention_mask, sliced.attention_mask),
            ):
                if original is not None:
                    state.sliced[id(original)] = value
            return call.replaced(
                hidden_states=sliced.hidden_states,
                position_embeddings=sliced.position_embeddings,
                position_ids=sliced.position_ids,
                attention_mask=sliced.attention_mask,
            )
        if state.plan is None or state.plan.is_identity:
            return None
        call.check_prunable()
        index = state.plan.index
        position_ids = None
        if not self._drop_position_ids:
            position_ids = self._sliced(state, call.position_ids, lambda t: slice_position_ids(t, index))
        return call.replaced(
            position_embeddings=self._sliced(
                state, call.position_embeddings, lambda t: slice_position_embeddings(t, index)
            ),
            position_ids=position_ids,
            attention_mask=self._sliced(state, call.attention_mask, lambda m: slice_mask(m, index, index)),
        )

    def _select(self, state: _Prefill, call: hf.LayerCall) -> KeepPlan:
        layout = state.layout
        visual_hidden = None
        if self._selector.needs_hidden:
            visual_hidden = gather_along(call.hidden_states, layout.positions, dim=1)
        if self._selector.query != "none" and state.scores is None:
            raise hf.protocol_error(
                f"decoder layer {self.config.layer - 1} produced no attention scores; was the attention "
                "implementation changed after apply()?"
            )
        prior = self._prior(state, call) if self._selector.needs_prior else None
        with torch.no_grad():  # selection is not differentiable; merged states and registers are detached
            selection = self._selector.select(
                SelectionInput(
                    layout=layout,
                    budget=state.budget,
                    scores=state.scores,
                    hidden=visual_hidden,
                    config=self.config,
                    prior=prior,
                    segments=state.segments,
                )
            )
        plan = build_keep_plan(layout, selection.keep, state.seq_len, selection.hidden)
        kept_original = plan.kept_visual
        original = layout
        if state.pre_plan is not None:
            kept_original = state.pre_plan.index.gather(1, plan.kept_visual)
            original = state.original_layout
        scores = selection.scores if selection.scores is not None else state.scores
        output_positions = plan.index if state.pre_plan is None else state.pre_plan.index.gather(1, plan.index)
        if state.pre_plan is None and plan.kept_len == state.seq_len:
            output_positions = None
        self.last = PruneRecord(
            method=self.config.method,
            layer=self.config.layer,
            seq_len=state.pre_plan.seq_len if state.pre_plan is not None else state.seq_len,
            kept_len=plan.kept_len,
            num_visual=[original.num_visual] * layout.batch_size,
            budget=[plan.kept_visual.shape[1]] * layout.batch_size,
            keep_positions=list(kept_original.cpu().unbind(0)),
            visual_positions=list(original.positions.cpu().unbind(0)),
            frame_ids=list(original.frame_ids.cpu().unbind(0)),
            pre_kept=[layout.num_visual] * layout.batch_size if state.pre_plan is not None else None,
            pre_keep_positions=_rows(state.pre_plan.kept_visual) if state.pre_plan is not None else None,
            num_query_rows=state.query_valid.sum(dim=1).tolist() if state.query_valid is not None else None,
            attention_mask=_rows(state.input_valid),
            scores=_rows(scores) if self.config.record_scores else None,
            raw_scores=_rows(state.scores) if self.config.record_scores else None,
            prior=_rows(prior) if self.config.record_scores else None,
            segment_ids=_rows(state.segments),
            frame_similarity=state.frame_similarity,
            is_register=_rows(selection.is_register),
            grid=original.grid,
            output_positions=_rows(output_positions),
            config=self.config.to_dict(),
        )
        return plan

    def _prior(self, state: _Prefill, call: hf.LayerCall) -> torch.Tensor:
        """PosC's content-free prior: the same scores on blank visual embeddings, layers 0..K-1 only."""
        layout = state.layout
        key = None
        if self.config.posc_prior == "cached":
            key = _layout_key(layout, state)
            cached = self._prior_cache.get(key)
            if cached is not None:
                return cached.to(state.embeds.device)
        blank_key = (layout.grid, state.embeds.dtype, state.embeds.device)
        blank_frame = self._blank_frames.get(blank_key)
        if blank_frame is None:
            blank_frame = self.adapter.blank_frame(self._model_ref(), layout, self.config.posc_blank_token_id)
            self._blank_frames[blank_key] = blank_frame = blank_frame.to(state.embeds.dtype)
        if state.pre_plan is not None:
            # Survivors of the pre-LLM stage keep their place in the frame: the blank token at that place.
            original = state.original_layout
            kept = torch.searchsorted(original.positions, state.pre_plan.kept_visual)
            blank = tile_blank_frame(blank_frame, original.frame_ids, kept)
        else:
            blank = tile_blank_frame(blank_frame, layout.frame_ids)
        embeds = state.embeds.scatter(1, layout.positions[..., None].expand_as(blank), blank)
        kwargs = call.rerun_kwargs()  # same positions and mask, no cache
        state.phase = "prior"
        try:
            hidden = embeds
            with torch.no_grad(), hf.outputs_not_captured():
                for layer in self._layers[: self.config.layer]:
                    hidden = layer(hidden, **kwargs)
        finally:
            state.phase = "real"
        if state.prior is None:
            raise hf.protocol_error("PosC's blank pass produced no attention scores at layer K-1")
        if key is not None:
            self._prior_cache[key] = state.prior
        return state.prior

    def _cut_decode_mask(self, idx: int, call: hf.LayerCall) -> Any:
        mask = call.attention_mask
        if not isinstance(mask, torch.Tensor):
            return None
        state = self._decode
        cut = state.sliced.get(id(mask))
        if cut is None:
            cut = slice_mask(mask, None, decode_columns(state.plan, mask.shape[-1]))
            state.sliced[id(mask)] = cut
        expected = hf.cache_length(call.cache, idx) + call.hidden_states.shape[1]
        if cut.shape[-1] != expected:
            raise hf.protocol_error(
                f"decoding: decoder layer {idx} caches {expected - call.hidden_states.shape[1]} tokens, but its "
                f"attention mask, cut to the pruned columns, covers {cut.shape[-1]}"
            )
        return call.replaced(attention_mask=cut)

    def _on_model_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        with self._lock:
            if self._running != threading.get_ident():
                # A forward refused by the pre-hook (another thread's is running): the running one's state stays.
                return
            self._running = None
        state = self._prefill
        self._prefill = None
        self._decode = None
        self._expect_prefill = False
        if output is None or state is None:
            return  # the forward raised (its error stands), or there was nothing to prune
        if state.plan is None:
            self._fail(f"the prefill ended without reaching decoder layer {self.config.layer}, where pruning happens")
        if not state.plan.is_identity:
            returned = hf.output_cache(output)
            written = self._plan_cache() if self._plan_cache is not None else None
            if returned is not None and returned is not written:
                self._fail(
                    f"the model returned a cache that decoder layer {self.config.layer} did not receive, so decoding "
                    "could not continue from the pruned prefill"
                )

    def _fail(self, what: str) -> None:
        """Raise `ProtocolError` from the forward, leaving no record or plan of the failed prefill behind."""
        self.last = None
        self._plan_cache = None
        self._last_plan = self._last_pre_plan = None
        raise hf.protocol_error(what)

    def _empty_record(self, batch: int, seq_len: int) -> PruneRecord:
        return PruneRecord(
            method=self.config.method,
            layer=self.config.layer,
            seq_len=seq_len,
            kept_len=seq_len,
            num_visual=[0] * batch,
            budget=[0] * batch,
            keep_positions=[torch.empty(0, dtype=torch.long) for _ in range(batch)],
            config=self.config.to_dict(),
        )


def apply(model: nn.Module, config: PruneConfig | None = None, **overrides: Any) -> PruneHandle:
    """Attach pruning to `model` (in place, reversibly); returns the `PruneHandle`.

    Args:
        model: a supported transformers model instance (see `sharp_prune.SUPPORTED_MODELS`).
        config: the `PruneConfig` (default: `PruneConfig()`).
        **overrides: fields to change on `config`, e.g. ``apply(model, retention=0.2)``.

    Every check runs before anything is attached: on error the model is left untouched.

    Raises:
        ConfigTypeError / ConfigError: bad config, or K outside [1, num_layers - 1].
        UnsupportedModelError: the model is not supported.
        AlreadyAppliedError: the model already carries an active handle (remove it first).
    """
    if config is None:
        config = PruneConfig()
    if not isinstance(config, PruneConfig):
        raise ConfigTypeError(
            f"sharp_prune.apply expects a PruneConfig, got {type(config).__name__}; "
            "build one with sharp_prune.PruneConfig(method=..., retention=..., layer=...)."
        )
    if overrides:
        config = config.replace(**overrides)
    adapter = resolve_adapter(model)
    existing = _APPLIED.get(model)
    if existing is not None and existing.active:
        raise AlreadyAppliedError(
            "this model already has sharp-prune applied; call handle.remove() before applying another config."
        )
    decoder = adapter.decoder(model)
    check_layer(config.layer, len(decoder.layers), f"this {type(model).__name__}")
    if config.posc_blank_token_id is not None:
        vocab = model.get_input_embeddings().num_embeddings
        if config.posc_blank_token_id >= vocab:
            raise ConfigError(
                f"PruneConfig.posc_blank_token_id={config.posc_blank_token_id} is outside this model's vocabulary "
                f"(0..{vocab - 1}); pass the id of a pad or space token, e.g. tokenizer.pad_token_id."
            )
    hf.warn_if_untested()
    handle = PruneHandle(model, config, adapter)  # checks the attention implementation; attaches nothing
    handle._attach()
    logger.info("sharp-prune: %s on %s (%s)", config, type(model).__name__, adapter.name)
    return handle
