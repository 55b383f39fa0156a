"""One pruned prefill, read top to bottom: the data path's steps, in the order the forward reaches them.

    locate -> pre-stage -> segment -> (layers 0..K-1) score at K-1 -> blank pass -> calibrate -> select
           -> apply keep plan -> record -> (layers K..L-1 on the kept tokens) -> finish

`locate` ran before this object exists (the handle builds it from the `Located` of the model's call). Each
method below is one step and calls a pure step function (`sharp_prune.steps`) or the method's own code (its
config class, `sharp_prune.methods`); the hooks only hand control to it.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .. import hf_protocol as hf
from ..errors import InputError
from ..methods import Selection, SelectionInput
from ..models.base import mixed_frame_sizes
from ..steps.deepstack import DeepStack, full_additions
from ..steps.keep_plan import (
    KeepPlan,
    build_keep_plan,
    gather_along,
    slice_layer_inputs,
    slice_mask,
    slice_position_embeddings,
    slice_position_ids,
)
from ..steps.locate import Located
from ..steps.pre_stage import PreStage, temporal_merge
from ..steps.record import prefill_record
from ..steps.score import score_video
from .forward import Forward, Parts, Replacement, check_prefill_at_k


class _Scores:
    """Where layer K-1's attention scores go: the real pass's, or the blank pass's (PosC)."""

    def __init__(self) -> None:
        self.scores: torch.Tensor | None = None


class Prefill(Forward):
    """The steps of one prefill that has video tokens to prune."""

    def __init__(self, parts: Parts, located: Located, logits_to_keep: Any = None) -> None:
        self.parts = parts
        self.logits_to_keep = logits_to_keep  # the model call's: the rows its LM head reads
        self.config = parts.config
        self.located = located
        self.pre: PreStage | None = None
        self.embeds: torch.Tensor | None = None  # [b, L, D] the decoder's input embeddings
        self.segments: torch.Tensor | None = None  # [b, N] segment id of each video token
        self.frame_similarity: list[torch.Tensor] | None = None
        self.segment_map: torch.Tensor | None = None  # [b, L] segment id, -1 elsewhere (SegM's mask)
        self.segment_plan: Any = None  # the segments on the host, built once (the method's `plan_segments`)
        self.segment_bias: torch.Tensor | None = None  # [b, 1, L, L] SegM's additive mask (eager only)
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None  # layer K-1's cos/sin (to remove RoPE)
        self.observed: set[int] = set()  # layers < K whose attention went through the registered function
        self.layer_masks: dict[int, Any] = {}  # layer < K -> the attention mask it ran with (for the blank pass)
        self.layer_rope: dict[int, Any] = {}  # layer <= the scoring layer -> its position embeddings (the same)
        self._real = _Scores()
        self._scores_to = self._real
        self.plan: KeepPlan | None = None
        self.cache_at_k: weakref.ref | None = None  # the cache layer K received (decoding continues from it)
        self._sliced: dict[int, Any] = {}  # id(a layer argument) -> the same, sliced to the keep plan
        self._tail_checked = 0  # q, once the last q kept positions were checked to be the prefill's last q
        self.deepstack: DeepStack | None = None  # DeepStack's features of layers >= K (added after pruning)
        self.deepstack_call: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # all of them (the blank pass)
        self.decoder: nn.Module | None = None
        self.per_layer_tokens: torch.Tensor | None = None  # [b, L, layers, d] per-layer inputs' token part (Gemma 4)
        if self.config.needs_prior and parts.adapter.blank_frame_needs_grid and located.layout.grid is None:
            raise InputError(mixed_frame_sizes(parts.adapter.name, parts.adapter.grid_hint))

    # ---------------------------------------------------------------------------- before layer 0
    def enter_decoder(self, decoder: nn.Module, call: hf.DecoderCall) -> Replacement:
        """The text decoder's call: DeepStack's late features, the input embeddings, then the pre-LLM stage and the
        segments."""
        config = self.config
        original = call
        call = self.take_late_deepstack(call)
        if not (config.needs_segments or config.needs_prior or config.pre is not None):
            return call.hook_result if call is not original else None
        embeds = call.inputs_embeds
        if self.parts.per_layer and (config.needs_prior or embeds is None):
            # The per-layer inputs' token part: the blank pass projects its own embeddings with it, and a decoder
            # handed embeddings instead of ids would otherwise recover the ids by matching the embedding table.
            self.decoder = decoder
            self.per_layer_tokens = hf.per_layer_token_inputs(decoder, call)
        if embeds is None:  # hand the decoder the embeddings computed here, so that the lookup runs once
            embeds = hf.embed_tokens(decoder, call.input_ids)
            if self.per_layer_tokens is not None:
                call = call.replaced(inputs_embeds=embeds, per_layer_inputs=self.per_layer_tokens)
            else:
                call = call.replaced(inputs_embeds=embeds)
        if config.pre == "temporal_merge":
            call.check_resizable()
            self.pre = temporal_merge(
                self.located,
                embeds,
                call.position_ids,
                call.attention_mask,
                config.pre_threshold,
                config.budget,
                config.query,
            )
            if self.pre is not None:
                self.located, embeds = self.pre.located, self.pre.embeds
                call = call.replaced(
                    inputs_embeds=embeds, position_ids=self.pre.position_ids, attention_mask=self.pre.attention_mask
                )
        self.embeds = embeds
        self.segment(embeds)
        return call.hook_result if call is not original else None

    def take_late_deepstack(self, call: hf.DecoderCall) -> hf.DecoderCall:
        """DeepStack adds visual features to the hidden states after layers 0..n-1, at every visual position. The
        decoder keeps adding those of layers < K (full length); those of layers >= K are taken from it and added
        here, at the visual positions the keep plan kept (`follow`)."""
        deepstack = self.deepstack_call = call.deepstack
        if deepstack is None or len(deepstack[1]) <= self.parts.k:
            return call
        mask, features = deepstack
        self.deepstack = DeepStack.of(mask, features, start=self.parts.k)
        return call.replaced(deepstack_features=features[: self.parts.k])

    def segment(self, embeds: torch.Tensor) -> None:
        """Scene segments of each sample's frames (the method's own rule), and the mask they make."""
        if not self.config.needs_segments:
            return
        layout = self.located.layout
        visual = gather_along(embeds, layout.positions, dim=1)
        frames = layout.frames  # known on the host when the layout came from a frame map
        rows = [self.config.segment(visual[i], layout.frame_ids[i], frames) for i in range(layout.batch_size)]
        self.segments = torch.stack([segments for segments, _ in rows])
        if self.config.record_scores:
            self.frame_similarity = [similarity.detach() for _, similarity in rows]
        segment_map = torch.full(embeds.shape[:2], -1, dtype=torch.long, device=embeds.device)
        segment_map.scatter_(1, layout.positions, self.segments)
        self.segment_plan = self.config.plan_segments(segment_map, self.located.key_valid)
        if self.config.segment_mask:
            self.segment_map = segment_map

    # ---------------------------------------------------------------------------- layers 0..K-1
    def keep_rope(self, index: int, call: hf.LayerCall) -> None:
        """The call of a layer up to the scoring layer: its RoPE, for methods that score without it (the scoring
        layer's) and for the blank pass (each layer's: Gemma's sliding and full layers rotate at different bases)."""
        self.layer_rope[index] = call.position_embeddings
        if index == self.parts.score_layer:
            self.rope = call.position_embeddings

    def attend(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Every attention call of layers < K: the score at K-1, and the method's mask (SegM)."""
        layer = hf.layer_index(module)
        if layer is None or layer >= self.parts.k or key.shape[2] != self.located.seq_len:
            return None
        self.observed.add(layer)
        if self._scores_to is self._real:
            self.layer_masks[layer] = attention_mask
        if layer == self.parts.score_layer and self.located.query_index is not None:
            self.score(module, query, key)
        if self.segment_map is None or self.parts.windows[layer] is not None:
            return None  # a sliding-window layer keeps its own window: it is local already
        if self.parts.base_impl == "eager":
            # Eager returns the attention weights (output_attentions): run it under the method's dense mask, so that
            # the weights are the method's too. Eager materialises L x L anyway; the other implementations never do.
            if self.segment_bias is None or self.segment_bias.dtype != query.dtype:
                allowed = self.config.dense_mask_before_k(self.segment_map, self.located.key_valid).to(query.device)
                bias = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
                self.segment_bias = bias.masked_fill(~allowed, torch.finfo(query.dtype).min)
            return self.parts.base_attention(module, query, key, value, self.segment_bias, **kwargs)
        scaling = hf.attention_scaling(module)
        output = self.config.attend_before_k(
            query, key, value, self.segment_map, self.located.key_valid, scaling, self.segment_plan
        )
        return output, None

    def score(self, module: nn.Module, query: torch.Tensor, key: torch.Tensor) -> None:
        """The scoring layer (K-1, or the last full-attention layer below K): the attention the query rows pay to
        each video token (post-RoPE, or without RoPE)."""
        rope = None
        if not self.config.rope:
            if self.rope is None:
                raise hf.protocol_error(
                    f"decoder layer {self.parts.score_layer} received no position embeddings, so RoPE cannot be removed"
                )
            rope = self.rope
        scaling, apply_rope = hf.attention_scaling(module), hf.rope_function_of(module)
        self._scores_to.scores = score_video(query, key, self.located, scaling, rope, apply_rope)

    # ---------------------------------------------------------------------------- layer K
    def at_layer(self, index: int, call: hf.LayerCall) -> Replacement:
        if index == self.parts.k:
            return self.prune(call)
        return self.follow(index, call)

    def prune(self, call: hf.LayerCall) -> Replacement:
        """Layer K's call: blank pass, calibrate, select, apply the keep plan, record."""
        self.check_layer_k(call)
        call.check_prunable()
        config = self.config
        scores = self._real.scores
        if config.query != "none" and scores is None:
            raise hf.protocol_error(
                f"decoder layer {self.parts.k - 1} produced no attention scores; was the attention implementation "
                "changed after apply()?"
            )
        prior = self.blank_pass(call) if config.needs_prior else None
        calibrated = config.calibrate(scores, prior) if prior is not None else scores
        selection = self.select(call.hidden_states, calibrated)
        located = self.located
        self.plan = build_keep_plan(
            located.layout, selection.keep, located.seq_len, selection.hidden, key_valid=located.key_valid
        )
        self.cache_at_k = weakref.ref(call.cache) if call.cache is not None else None
        self.record = prefill_record(
            config,
            located,
            self.plan,
            self.pre,
            is_register=selection.is_register,
            scores=calibrated,
            raw_scores=scores,
            prior=prior,
            segments=self.segments,
            frame_similarity=self.frame_similarity,
        )
        return self.apply_plan(call)

    def check_layer_k(self, call: hf.LayerCall) -> None:
        """Layer K's call must be this prefill's, after every layer < K went through the registered attention."""
        check_prefill_at_k(self.parts, call)
        if call.hidden_states.shape[1] != self.located.seq_len:
            raise hf.protocol_error(
                f"decoder layer {self.parts.k} received {call.hidden_states.shape[1]} positions, the prefill has "
                f"{self.located.seq_len}"
            )
        needed: set[int] = set()
        if self.segment_map is not None:  # every attention layer < K (a linear-attention layer calls none)
            needed = {i for i in range(self.parts.k) if self.parts.kinds[i : i + 1] != (hf.LINEAR_ATTENTION,)}
        elif self.config.query != "none":
            needed = {self.parts.score_layer}
        missing = sorted(needed - self.observed)
        if missing:
            raise hf.protocol_error(
                f"the attention of decoder layer(s) {missing} did not run through sharp-prune's registered attention "
                "function, so their scores (or the method's mask) are missing; was the attention implementation "
                "changed after apply()?"
            )

    def blank_pass(self, call: hf.LayerCall) -> torch.Tensor:
        """The content-free prior: the same scores on a copy whose video tokens are a black frame, layers 0..K-1
        again (or the prior of an identical token layout, when the method caches it)."""
        parts, config, located = self.parts, self.config, self.located
        layout = located.layout
        survivors = self.pre.plan.kept_visual if self.pre is not None else None
        key = config.prior_cache_key(
            seq_len=located.seq_len,
            grid=layout.grid,
            positions=layout.positions,
            frame_ids=layout.frame_ids,
            key_valid=located.key_valid,
            query_valid=located.query_valid,
            segments=self.segments,
            survivors=survivors,
        )
        if key is not None and key in parts.prior_cache:
            return parts.prior_cache[key].to(self.embeds.device)
        blank_frame = self._blank_frame()
        if self.pre is not None:
            # Survivors of the pre-LLM stage keep their place in the frame: the blank token at that place.
            original = self.pre.original.layout
            kept = torch.searchsorted(original.positions, self.pre.plan.kept_visual)
            embeds = config.blank_embeddings(self.embeds, layout.positions, blank_frame, original.frame_ids, kept)
        else:
            embeds = config.blank_embeddings(self.embeds, layout.positions, blank_frame, layout.frame_ids)
        blank = _Scores()
        masks = self._blank_pass_masks(call)
        deepstack = self._blank_deepstack(embeds.dtype)
        with self._scoring_into(blank), torch.no_grad(), hf.outputs_not_captured():
            # Gemma 4: each layer's per-layer input, from the blank copy's embeddings (a VLM's token part is the pad
            # token's at every video position, black frame or not; a text LM's keeps its real tokens')
            per_layer = None
            if self.per_layer_tokens is not None:
                per_layer = hf.project_per_layer_inputs(self.decoder, embeds, self.per_layer_tokens)
            hidden = embeds
            for index, layer in enumerate(parts.layers[: parts.score_layer + 1]):  # the layers above cannot matter
                layer_input = None if per_layer is None else per_layer[:, :, index]
                # same positions (each layer's own RoPE), no cache
                rerun = call.rerun_kwargs(
                    attention_mask=masks[index],
                    position_embeddings=self.layer_rope.get(index, call.position_embeddings),
                    per_layer_input=layer_input,
                )
                hidden = layer(hidden, **rerun)
                if index < len(deepstack):
                    hidden = hidden + deepstack[index]
        if blank.scores is None:
            raise hf.protocol_error(f"the blank pass produced no attention scores at layer {parts.score_layer}")
        if key is not None:
            parts.prior_cache[key] = blank.scores
        return blank.scores

    def _blank_deepstack(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """DeepStack's additions for the blank pass, one [b, L, D] per level below the scoring layer: the black frame's
        own features at the video positions (a black video's), the real ones at other visual positions (images);
        [] without DeepStack. With a pre-LLM stage there is none (the stage refuses DeepStack's arguments)."""
        parts, layout = self.parts, self.located.layout
        if self.deepstack_call is None or parts.adapter.blank_deepstack is None or self.pre is not None:
            return []
        mask, features = self.deepstack_call
        additions = full_additions(mask, features, min(len(features), parts.score_layer), dtype)
        if not additions:
            return []
        key = ("deepstack", layout.grid, dtype, self.embeds.device)
        levels = parts.blank_frames.get(key)
        if levels is None:
            blank_token = getattr(self.config, "posc_blank_token_id", None)
            levels = parts.adapter.blank_deepstack(parts.model(), layout, blank_token).to(self.embeds.device, dtype)
            parts.blank_frames[key] = levels
        # the same tiling as the blank frame's: token i of every frame gets the black frame's token i
        return [
            self.config.blank_embeddings(added, layout.positions, levels[j], layout.frame_ids)
            for j, added in enumerate(additions)
        ]

    def _blank_pass_masks(self, call: hf.LayerCall) -> list[Any]:
        """The mask each layer up to the scoring layer ran with in the real pass, for the blank pass: the layers of
        one stack may differ in kind (full, sliding-window, linear attention), and each kind has its own mask.

        An attention layer's is the one its attention function received (`attend`); a linear-attention layer's is
        the 2-D padding mask transformers gives them: layer K's when layer K is linear, else the sequence's
        `key_valid` (None when unpadded: the same product with the hidden states).
        """
        parts = self.parts
        linear = self.located.key_valid
        if parts.kinds[parts.k : parts.k + 1] == (hf.LINEAR_ATTENTION,):
            linear = call.attention_mask
        masks = []
        for index in range(parts.score_layer + 1):
            if parts.kinds[index : index + 1] == (hf.LINEAR_ATTENTION,):
                masks.append(linear)
            else:
                masks.append(self.layer_masks.get(index, call.attention_mask))
        return masks

    @contextmanager
    def _scoring_into(self, scores: _Scores):  # noqa: ANN202 - a context manager
        previous, self._scores_to = self._scores_to, scores
        try:
            yield
        finally:
            self._scores_to = previous

    def _blank_frame(self) -> torch.Tensor:
        """The model family's black frame, cached by grid, dtype and device."""
        parts, layout = self.parts, self.located.layout
        key = (layout.grid, self.embeds.dtype, self.embeds.device)
        frame = parts.blank_frames.get(key)
        if frame is None:
            blank_token = getattr(self.config, "posc_blank_token_id", None)
            frame = parts.adapter.blank_frame(parts.model(), layout, blank_token).to(self.embeds.dtype)
            parts.blank_frames[key] = frame
        return frame

    def select(self, hidden: torch.Tensor, scores: torch.Tensor | None) -> Selection:
        """The method's choice of B slots per sample."""
        layout = self.located.layout
        visual_hidden = gather_along(hidden, layout.positions, dim=1) if self.config.needs_hidden else None
        with torch.no_grad():  # selection is not differentiable; merged states and registers are detached
            return self.parts.selector.select(
                SelectionInput(
                    layout=layout,
                    budget=self.located.budget,
                    scores=scores,
                    hidden=visual_hidden,
                    config=self.config,
                    segments=self.segments,
                    num_segments=self.segment_plan.num_segments if self.segment_plan is not None else None,
                )
            )

    def apply_plan(self, call: hf.LayerCall) -> Replacement:
        """Slice layer K's hidden states, positions, mask and per-layer input to the keep plan, together."""
        if self.plan.is_identity:
            return None
        self.check_per_layer_input(call)
        sliced = slice_layer_inputs(
            call.hidden_states,
            self.plan,
            position_embeddings=call.position_embeddings,
            position_ids=call.position_ids,
            attention_mask=call.attention_mask,
            per_layer_input=call.per_layer_input,
            drop_position_ids=self.parts.drop_position_ids,
        )
        for original, value in (
            (call.position_embeddings, sliced.position_embeddings),
            (call.position_ids, sliced.position_ids),
            (call.attention_mask, sliced.attention_mask),
        ):
            if original is not None:
                self._sliced[id(original)] = value
        return call.replaced(
            hidden_states=sliced.hidden_states,
            position_embeddings=sliced.position_embeddings,
            position_ids=sliced.position_ids,
            attention_mask=sliced.attention_mask,
            per_layer_input=sliced.per_layer_input if call.per_layer_input is not None else hf.KEEP,
        )

    def check_per_layer_input(self, call: hf.LayerCall) -> None:
        """A second positional tensor is Gemma 4's per-layer input, on a decoder that declares them only."""
        if call.per_layer_input is not None and not self.parts.per_layer:
            raise hf.protocol_error(
                "a decoder layer received a second positional tensor, and its config declares no per-layer inputs "
                "(hidden_size_per_layer_input)"
            )

    # ---------------------------------------------------------------------------- layers K+1..L-1
    def follow(self, index: int, call: hf.LayerCall) -> Replacement:
        """Later layers get the same sliced arguments (or their own, sliced once: a mask per layer type; a sliding
        layer's mask, cut to the kept tokens, keeps its window in original positions; each layer's per-layer input).

        Gemma 4 runs its KV-sharing layers on the last `logits_to_keep` query rows only (under `generate`): the
        hidden states then hold the last q kept tokens, and the model has cut its own arguments to the last q
        original rows, the same tokens (the last position is never pruned). Arguments still as long as the
        prefill are cut to those rows here; the mask's columns to the kept tokens, which the shared keys hold.
        """
        if self.plan is None:
            return None
        hidden = self.add_late_deepstack(index, call)
        if self.plan.is_identity:
            return None if hidden is None else call.replaced(hidden_states=hidden)
        call.check_prunable()
        self.check_per_layer_input(call)
        keep, seq_len = self.plan.index, self.located.seq_len
        rows = self.query_rows(call.hidden_states.shape[1])

        def cut(t: torch.Tensor, dim: int, slicer: Any) -> torch.Tensor:  # as long as the prefill: to the rows
            return slicer(t, rows) if t.shape[dim] == seq_len else t

        position_ids = None
        if not self.parts.drop_position_ids:
            position_ids = self._once(call.position_ids, lambda t: cut(t, -1, slice_position_ids))
        per_layer = call.per_layer_input
        return call.replaced(
            hidden_states=call.hidden_states if hidden is None else hidden,
            position_embeddings=self._once(
                call.position_embeddings,
                lambda pe: slice_position_embeddings(pe, rows) if pe[0].shape[-2] == seq_len else pe,
            ),
            position_ids=position_ids,
            attention_mask=self._once(
                call.attention_mask,
                lambda m: slice_mask(m, rows if m.ndim != 4 or m.shape[2] == seq_len else None, keep),
            ),
            per_layer_input=hf.KEEP if per_layer is None else cut(per_layer, 1, lambda t, r: gather_along(t, r, dim=1)),
        )

    def query_rows(self, rows: int) -> torch.Tensor:
        """[b, q] original positions of a later layer's q query rows: every kept token, or (Gemma 4's KV-sharing
        layers) the last q of them, which must be the prefill's last q positions as the model assumes."""
        keep = self.plan.index
        if rows == keep.shape[1]:
            return keep
        if rows > keep.shape[1]:
            raise hf.protocol_error(
                f"a decoder layer after K received {rows} positions, the keep plan kept {keep.shape[1]}"
            )
        tail = keep[:, -rows:]
        # one row is the last position, never pruned; more need a look (a host sync, once)
        if rows > 1 and self._tail_checked != rows:
            expected = torch.arange(self.located.seq_len - rows, self.located.seq_len, device=keep.device)
            if not bool((tail == expected).all()):
                raise hf.protocol_error(
                    f"the model kept only the last {rows} query rows after K (logits_to_keep), and some of "
                    "those positions were pruned; call it with logits_to_keep=1 or 0 while pruning"
                )
            self._tail_checked = rows
        return tail

    def add_late_deepstack(self, index: int, call: hf.LayerCall) -> torch.Tensor | None:
        """Layer j + 1's call, j >= K: the hidden states plus DeepStack's features of layer j at the kept visual
        positions (None when DeepStack has none for layer j)."""
        if self.deepstack is None:
            return None
        return self.deepstack.add_after(index - 1, call.hidden_states, self.plan.index)

    def _once(self, value: Any, slicer: Any) -> Any:
        if value is None:
            return None
        sliced = self._sliced.get(id(value))
        if sliced is None:
            sliced = self._sliced[id(value)] = slicer(value)
        return sliced

    # ---------------------------------------------------------------------------- the decoder's return
    def leave_decoder(self, output: Any) -> Any:
        """The text decoder returned: a pruned output holds L' rows, and a model asked for the last k rows' logits
        gets its last k hidden states (Gemma 4 would project all L' rows: it cuts only an output as long as the
        input). Any other call is left as it is."""
        k = self.logits_to_keep
        if self.plan is None or self.plan.is_identity or isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            return None
        return hf.keep_last_rows(output, k)

    # ---------------------------------------------------------------------------- the model's return
    def finish(self, output: Any) -> None:
        """The forward returned: pruning must have happened, and the returned cache must be the one layer K wrote."""
        if self.plan is None:
            raise hf.protocol_error(
                f"the prefill ended without reaching decoder layer {self.parts.k}, where pruning happens"
            )
        if not self.plan.is_identity:
            returned = hf.output_cache(output)
            written = self.cache_at_k() if self.cache_at_k is not None else None
            if returned is not None and returned is not written:
                raise hf.protocol_error(
                    f"the model returned a cache that decoder layer {self.parts.k} did not receive, so decoding could "
                    "not continue from the pruned prefill"
                )
