"""Analytic prefill FLOPs of the text decoder, pruned and unpruned, and a torch counter to check them.

Data path: `TextDims` (from the model config) + `PrefillLayout` (from a `PruneRecord`, or synthetic for
`estimate`) + `PruneConfig` -> `count_flops` -> `FlopsReport` (total, unpruned total, breakdown).

What is counted (one multiply-add = 2 FLOPs, as `torch.utils.flop_counter` counts matmuls):

- per decoder layer and token: the q/k/v/o projections and the gated MLP (gate, up, down); biases,
  RMSNorm, RoPE, SiLU, residual adds and softmax are elementwise and count 0 (FlopCounterMode ignores
  them too), and so does the embedding lookup (a gather);
- attention: QK^T and AV, 4 * H * head_dim per (query row, key) pair;
- layers < K at the full length L (under SegM: the text rows against every key, plus one
  [prompt; segment] block per segment, as `segm.segment_attention` executes them); layers >= K at the
  kept length L';
- PosC's blank pass (`method="sharp"`, `posc=True`): K more layers at length L, and a second scoring
  pass. Counted for `posc_prior="per_input"`; for `"cached"` it is counted as 0 (a cache hit; the
  first prefill of a layout misses and runs it: pass `posc_pass=True` for that one);
- scoring at layer K-1: |Q| query rows x L keys, QK^T only (2 * H * head_dim per pair);
- selection similarity work (approximate): RegD does one N x D matvec per accepted token and per
  farthest-point pick, i.e. 2 * N * D * B_sel per sample (B_sel = B minus registers); DivPrune
  2 * N * D * B. FlopCounterMode sees only RegD's `mm` calls (matvecs are `aten.mv`, which it ignores),
  so it reports somewhat less here; the term is well under 0.1% of a prefill;
- the LM head on the last token of each sample (`logits_to_keep=1`, as `generate` runs the prefill);
- hybrid stacks (Qwen3.5: Gated DeltaNet layers among full-attention layers): a linear-attention layer has no
  q/k/v/o or attention term but ``linear`` (its projections, short convolution and gated delta rule, linear in
  the tokens: `TextDims.linear_mixer_flops` gives the formula); scores come from the last full-attention layer
  below K and the blank pass runs layers 0..that layer only;
- mixture-of-experts stacks (Qwen3-MoE, Qwen3-VL-MoE, Qwen3.5-MoE, GLM-4.5V: `prefill_shape.MOE_MODEL_TYPES`): a
  MoE layer's ``mlp`` is the router (D x E), the k experts each token is routed to (gate, up, down at the expert
  width) and the shared expert (and its gate), `TextDims.moe_per_token`; the dense layers (`mlp_only_layers`,
  `decoder_sparse_step`, `first_k_dense_replace`) count the dense MLP. Both conventions count the k active experts
  per token: transformers' experts implementations ("grouped_mm", its default, "batched_mm", "eager") all run
  exactly those (`flop_counter_mode` adds the grouped matmul's formula, which torch lacks); executed also routes
  the padding;
- sliding-window stacks (Gemma 3's mix; `config.layer_types`): a sliding layer's attention is, executed, the whole
  product as for a causal layer (the kernels mask the rest), and ideal, the causal pairs within the window W (a
  query sees itself and the W - 1 positions before it); after K the window stays in the original positions of the
  kept tokens (`SampleLayout.kept_positions`: from the record, or, for `estimate`, the kept video tokens spread
  evenly over the video). SegM leaves sliding layers alone; scores come from the last full-attention layer below
  K;
- Gemma 4's text stack (`Gemma4ForCausalLM`, and inside `Gemma4ForConditionalGeneration`): each layer at its own
  head size and key/value heads (full-attention layers at `global_head_dim`), its own key/value projections (keys
  only under `attention_k_eq_v`, none in a KV-sharing layer, which attends to its source layer's keys), its own MLP
  width (`use_double_wide_mlp`), the dense MLP plus a router and top-k experts under `enable_moe_block`; per-layer
  inputs: ``per_layer_inputs``, the projection of the input embeddings to every layer's input (D x layers d, every
  token of the decoder's input), and in each layer ``per_layer``, its gate (D -> d) and projection (d -> D); PosC's
  blank pass projects its own (``posc_pass.per_layer_inputs``). The q/k/v norms are elementwise (0). Under
  `generate` (an integer `logits_to_keep`, eager or sdpa attention) transformers runs the KV-sharing layers on the
  last `logits_to_keep` rows only (`Gemma4TextModel._maybe_slice_kv_shared_inputs`), and so does the count by
  default (`count_flops`'s `kv_shared_sliced`: a plain forward runs them on every row). A pruned Gemma 4 output goes
  through the LM head whole when no KV-sharing layer cut it (transformers keeps the last `logits_to_keep` rows only
  of an output as long as the input): executed counts those L' rows, ideal the `lm_head_tokens` asked for. In the
  VLM (called with the processor's `mm_token_type_ids`), sliding layers let a frame's tokens attend to its later
  tokens too (`use_bidirectional_attention="vision"`): the ideal pairs include them, after K among the kept tokens
  (a frame is a run of consecutive video tokens; the record does not hold image tokens, which get the same
  treatment, so their pairs are counted causal); the executed count does not change (the kernels run the masked
  product). `TextDims.from_config` reads this from the VLM's config, not from its text config alone.

Two conventions:

- ``"executed"``: what the kernels run, as `FlopCounterMode` counts it: padded batches, every attention
  call as its full q_len x kv_len product (causality is not discounted, SegM's stacked blocks include
  the prompt rows they discard), the scoring matmul at the batch's widest query count.
- ``"ideal"``: only useful work: real (non-padding) tokens, and only the (query, key) pairs the mask
  allows (causal triangle, SegM's segments), for attention and scoring alike.

The vision tower is not part of the totals: in-LLM pruning does not reduce it (it runs on every frame
either way). `vision_flops` estimates it for LLaVA-OneVision and Qwen2-VL / Qwen2.5-VL configs; pass
the figure as `vision=` to carry it in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import PruneConfig, check_layer
from ..errors import ConfigError
from ..models import vision_flops  # noqa: F401  (re-exported: FLOPs of the vision tower, per family)
from ..record import PruneRecord
from ..steps.sliding import check_shared_kv_k
from .flop_counter import MeasuredFlops, flop_counter_mode, measure_prefill_flops  # noqa: F401  (re-exported)
from .prefill_shape import PrefillLayout, SampleLayout, TextDims  # noqa: F401  (SampleLayout re-exported)

CONVENTIONS = ("executed", "ideal")
VISION_NOTE = "vision tower FLOPs are not reduced by in-LLM pruning and are not included in total/unpruned"


# ---------------------------------------------------------------------------------------------- pair counts
def _triangle(n: int) -> int:
    return n * (n + 1) // 2


def _pairs(keys: torch.Tensor, queries: torch.Tensor, window: int = 0, blocks: torch.Tensor | None = None) -> int:
    """Allowed (query, key) pairs among real tokens at sorted positions `keys`, for the sorted query positions
    `queries` (some of the keys): causal (a query sees the keys at or before it), within `window` (at most
    `window - 1` positions back; 0: no window), and with `blocks` ([L] block of each position, -1 outside any)
    also the later keys of the query's own block: Gemma 4's sliding mask for a VLM, AND(window, OR(causal, same
    block)), a block being one frame's run of video tokens."""
    if not queries.numel():
        return 0
    upto = torch.searchsorted(keys, queries, right=True)  # keys at or before each query
    first = torch.searchsorted(keys, queries - window, right=True) if window else torch.zeros_like(upto)
    total = int((upto - first).sum())
    if blocks is not None:
        key_blocks, query_blocks = blocks[keys], blocks[queries]
        inside, query_inside = key_blocks >= 0, query_blocks >= 0
        if bool(query_inside.any()):
            # a block is a run of positions, so its keys are a run of `keys`: the later ones end where it ends
            ends = torch.zeros(int(key_blocks.max()) + 1, dtype=torch.long)
            ends.scatter_reduce_(0, key_blocks[inside], torch.arange(1, keys.numel() + 1)[inside], "amax")
            total += int((ends[query_blocks[query_inside]] - upto[query_inside]).sum())
    return total


@dataclass(frozen=True)
class _Rows:
    """The query rows one pass runs through a run of layers: per sample (executed: padded), and the attention pairs
    of one full-attention layer and of one sliding-window layer over them."""

    lengths: list[int]
    full: int
    sliding: int


def _executed_rows(batch: int, length: int, rows: int | None = None) -> _Rows:
    """Executed: every attention call is its whole q_len x kv_len product, sliding ones too (the kernels mask it);
    `rows`: the last `rows` query rows only (Gemma 4's KV-sharing layers under `generate`)."""
    q = length if rows is None else min(rows, length)
    return _Rows([q] * batch, batch * q * length, batch * q * length)


def _ideal_rows(dims: TextDims, views: list[tuple[torch.Tensor, int, torch.Tensor | None]], rows: int | None) -> _Rows:
    """Ideal: the real tokens and the pairs the masks allow. `views`: per sample, the sorted positions of its real
    tokens in this pass (the keys), the sequence's length and the vision blocks (None: causal sliding layers);
    `rows`: the queries are the real tokens among the last `rows` positions only (else all the keys)."""
    lengths, full, sliding = [], 0, 0
    for keys, length, blocks in views:
        queries = keys if rows is None else keys[keys >= length - rows]
        lengths.append(queries.numel())
        full += _triangle(keys.numel()) if rows is None else _pairs(keys, queries)
        if dims.has_sliding:
            sliding += _pairs(keys, queries, dims.sliding_window, blocks)
    return _Rows(lengths, full, sliding)


def _blocks(dims: TextDims, sample: SampleLayout) -> torch.Tensor | None:
    return sample.vision_blocks if dims.vision_bidirectional else None


def _views(dims: TextDims, layout: PrefillLayout, kept: bool) -> list[tuple[torch.Tensor, int, torch.Tensor | None]]:
    """Per sample: the real tokens of the decoder's input (layers < K) or of layers >= K (`kept`: in their original
    positions, where a sliding window keeps counting: `steps.sliding`)."""
    return [
        (s.kept_positions if kept else s.valid.nonzero().flatten(), layout.seq_len, _blocks(dims, s))
        for s in layout.samples
    ]


def _original_views(dims: TextDims, layout: PrefillLayout) -> list[tuple[torch.Tensor, int, torch.Tensor | None]]:
    """Per sample: the real tokens of the unpruned prefill (before any pre-LLM stage: its dropped tokens back, as one
    unpadded run, whose blocks are not known: `count_flops` refuses the ideal count there)."""
    views = []
    for s in layout.samples:
        if s.pre_dropped:
            n = s.real + s.pre_dropped
            views.append((torch.arange(n), n, None))
        else:
            views.append((s.valid.nonzero().flatten(), layout.seq_len, _blocks(dims, s)))
    return views


def _score_pairs(layout: PrefillLayout, ideal: bool) -> int:
    """Scoring pairs at layer K-1 (one pass): query rows x keys."""
    if ideal:
        # the query rows are the last |Q| real tokens: row k from the end sees real - k keys
        return sum(s.query_rows * s.real - _triangle(s.query_rows - 1) for s in layout.samples)
    width = max(s.query_rows for s in layout.samples)  # rows are padded to the widest sample
    return layout.batch * width * layout.seq_len


def _selection_flops(dims: TextDims, layout: PrefillLayout, config: PruneConfig) -> int:
    """Similarity work of the selector (approximate; the method's own estimate, see the module docstring)."""
    return sum(
        config.selection_flops(s.visual.numel(), s.kept_visual, dims.hidden_size, s.num_segments)
        for s in layout.samples
    )


# ---------------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class FlopsReport:
    """Prefill FLOPs of the text decoder, pruned and unpruned (same input).

    Attributes:
        total: FLOPs of the pruned prefill (sum of `breakdown`).
        unpruned: FLOPs of the same prefill without pruning (no pre-stage either).
        breakdown: FLOPs by component: ``before_k.*``, ``posc_pass.*``, ``after_k.*`` (each ``qkvo``,
            ``attention``, ``mlp``, ``linear`` on a hybrid stack, ``per_layer`` with Gemma 4's per-layer inputs),
            ``scoring``, ``selection``, ``lm_head``, and with per-layer inputs ``per_layer_inputs`` (and
            ``posc_pass.per_layer_inputs``).
        unpruned_breakdown: the same for the unpruned prefill (``before_k`` / ``after_k`` at full length).
        convention: "executed" or "ideal" (see the module docstring).
        vision: vision tower FLOPs when given (identical pruned or not; not in `total`).
        summary: the layout and switches the count used (lengths, query rows, SegM, PosC pass).
    """

    total: int
    unpruned: int
    breakdown: dict[str, int]
    unpruned_breakdown: dict[str, int]
    convention: str
    vision: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """total / unpruned: the fraction of the unpruned prefill's FLOPs that is left."""
        return self.total / self.unpruned if self.unpruned else 1.0

    @property
    def reduction(self) -> float:
        """1 - total / unpruned: the fraction of FLOPs saved (the paper's "TFLOPs cut")."""
        return 1.0 - self.ratio

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: every field, plus `ratio`, `reduction` and a note on the vision tower."""
        return {
            "convention": self.convention,
            "total": self.total,
            "unpruned": self.unpruned,
            "ratio": self.ratio,
            "reduction": self.reduction,
            "breakdown": dict(self.breakdown),
            "unpruned_breakdown": dict(self.unpruned_breakdown),
            "vision": self.vision,
            "vision_note": VISION_NOTE,
            "summary": dict(self.summary),
        }


def _stage(
    dims: TextDims, name: str, layers: range, rows: _Rows, ideal: bool, tail: _Rows | None = None
) -> dict[str, int]:
    """FLOPs of decoder layers `layers` over the query rows `rows` (`tail`: those of the KV-sharing layers, when
    they run on fewer rows: Gemma 4 under `generate`)."""
    qkvo = attention = mlp = per_layer = linear = 0
    for i in layers:
        run = tail if tail is not None and i >= dims.first_kv_shared_layer else rows
        tokens = sum(run.lengths)
        mlp += tokens * dims.mlp_flops_per_token(i)
        per_layer += tokens * dims.per_layer_flops_per_token
        if dims.is_linear(i):
            linear += sum(dims.linear_mixer_flops(n, ideal) for n in run.lengths)
            continue
        qkvo += tokens * dims.qkvo_flops_per_token(i)
        attention += (run.sliding if dims.is_sliding(i) else run.full) * dims.attention_flops_per_pair(i)
    stage = {f"{name}.qkvo": qkvo, f"{name}.attention": attention, f"{name}.mlp": mlp}
    if dims.has_linear:
        stage[f"{name}.linear"] = linear
    if dims.per_layer_input_size:
        stage[f"{name}.per_layer"] = per_layer
    return stage


def _per_layer_inputs(dims: TextDims, name: str, rows: _Rows) -> dict[str, int]:
    """Gemma 4's projection of the input embeddings to every layer's per-layer input, over the decoder's input."""
    if not dims.per_layer_input_size:
        return {}
    return {name: sum(rows.lengths) * dims.per_layer_inputs_per_token}


def _unpruned(dims: TextDims, layout: PrefillLayout, config: PruneConfig, ideal: bool, lm: int, q: int | None) -> dict:
    """Every layer over the original input (before any pre-stage), plain causal; `q`: the KV-sharing layers run on
    the last q rows only."""
    if ideal:
        views = _original_views(dims, layout)
        rows = _ideal_rows(dims, views, None)
        tail = _ideal_rows(dims, views, q) if q is not None else None
    else:
        rows = _executed_rows(layout.batch, layout.input_len)
        tail = _executed_rows(layout.batch, layout.input_len, q) if q is not None else None
    k = config.layer
    return {
        **_per_layer_inputs(dims, "per_layer_inputs", rows),
        **_stage(dims, "before_k", range(k), rows, ideal, tail),
        **_stage(dims, "after_k", range(k, dims.num_layers), rows, ideal, tail),
        "lm_head": lm * dims.lm_head_per_token,
    }


def count_flops(
    dims: TextDims,
    layout: PrefillLayout,
    config: PruneConfig,
    *,
    convention: str = "executed",
    posc_pass: bool | None = None,
    lm_head_tokens: int = 1,
    kv_shared_sliced: bool | None = None,
    vision: int | None = None,
) -> FlopsReport:
    """Prefill FLOPs of the text decoder for `layout` pruned by `config`, and unpruned.

    Args:
        dims: the text model's shape.
        layout: the prefill's token layout (`PrefillLayout.from_record` or `.synthetic`).
        config: the pruning config that ran.
        convention: "executed" (matches `FlopCounterMode`) or "ideal" (useful work only).
        posc_pass: whether PosC's blank pass ran; None: yes for ShaRP with `posc=True` and
            `posc_prior="per_input"`, no for `"cached"` (assumed a cache hit).
        lm_head_tokens: LM head rows per sample (1 with `logits_to_keep=1`, as in `generate`).
        kv_shared_sliced: Gemma 4's KV-sharing layers ran on the last `lm_head_tokens` rows of each sample only,
            as transformers runs them in a forward with an integer `logits_to_keep` (`generate`'s prefill,
            `measure_prefill_flops`) under eager or sdpa attention. None: so when the model can
            (`TextDims.kv_shared_sliceable`: not under flash or flex attention). Pass False for a forward that ran
            them on every row: a plain `model(**inputs)` (logits_to_keep=0, with `lm_head_tokens` = every row), one
            that records hidden states, attentions or router logits, or sdpa with `logits_to_keep` > 1 or a static
            (compileable) cache on an unpadded text prompt (no masks).
        vision: vision tower FLOPs to carry in the report (not added to the totals).
    """
    if convention not in CONVENTIONS:
        raise ConfigError(f"convention={convention!r} is not one of {CONVENTIONS}.")
    check_layer(config.layer, dims.num_layers)
    if dims.kv_sources:
        check_shared_kv_k(dims.kv_sources, config.layer)
    ideal = convention == "ideal"
    k = config.layer
    pruned_any = layout.num_visual > 0  # the engine does nothing on a prefill without visual tokens
    if ideal and dims.vision_bidirectional and any(s.pre_dropped and s.visual.numel() for s in layout.samples):
        raise ConfigError(
            "the ideal count of a frame's bidirectional pairs needs the frames of the unpruned prefill, which a "
            "pre-LLM stage hides; count the executed convention."
        )
    if kv_shared_sliced is None:
        kv_shared_sliced = dims.kv_shared_sliceable
    q = lm_head_tokens if kv_shared_sliced and dims.num_kv_shared_layers else None
    lm_rows = layout.batch * lm_head_tokens
    unpruned = _unpruned(dims, layout, config, ideal, lm_rows, q)

    if ideal:
        rows, kept = _ideal_rows(dims, _views(dims, layout, False), None), _views(dims, layout, True)
        after, tail = _ideal_rows(dims, kept, None), (_ideal_rows(dims, kept, q) if q is not None else None)
    else:
        rows, after = _executed_rows(layout.batch, layout.seq_len), _executed_rows(layout.batch, layout.kept_len)
        tail = _executed_rows(layout.batch, layout.kept_len, q) if q is not None else None
    segm = pruned_any and config.segment_mask
    if segm:
        # A sliding-window layer keeps its own window under SegM (it is local already).
        full = sum(config.attention_pairs_before_k(s.valid, s.visual, s.segments, ideal) for s in layout.samples)
        rows = _Rows(rows.lengths, full, rows.sliding)
    if posc_pass is None:
        posc_pass = config.blank_pass_each_prefill
    posc_pass = bool(posc_pass and pruned_any)
    score_passes = (1 + int(posc_pass)) if pruned_any and config.query != "none" else 0

    score_layer = dims.score_layer(k)
    blank_layers = range(score_layer + 1 if posc_pass else 0)  # the blank pass stops at the scoring layer
    breakdown = {
        **_per_layer_inputs(dims, "per_layer_inputs", rows),
        **_stage(dims, "before_k", range(k), rows, ideal),
        # the blank pass projects its own per-layer inputs (from the blank copy's embeddings), then reruns
        **(_per_layer_inputs(dims, "posc_pass.per_layer_inputs", rows) if posc_pass else {}),
        **_stage(dims, "posc_pass", blank_layers, rows, ideal),
        "scoring": score_passes * _score_pairs(layout, ideal) * dims.score_flops_per_pair(score_layer),
        "selection": _selection_flops(dims, layout, config) if pruned_any else 0,
        # layers >= K keep a sliding window in the original positions of the kept tokens
        **_stage(dims, "after_k", range(k, dims.num_layers), after, ideal, tail),
        "lm_head": lm_rows * dims.lm_head_per_token,
    }
    summary = {
        "batch": layout.batch,
        "input_len": layout.input_len,
        "seq_len": layout.seq_len,
        "kept_len": layout.kept_len,
        "num_visual": layout.num_visual,
        "kept_visual": layout.samples[0].kept_visual,
        "query_rows": [s.query_rows for s in layout.samples],
        "layer": k,
        "method": config.method,
        "segm_attention": segm,
        "posc_pass": posc_pass,
        "score_layer": score_layer if config.query != "none" else None,
    }
    if dims.num_kv_shared_layers:
        summary["kv_shared_rows"] = q  # None: every row
    return FlopsReport(
        total=sum(breakdown.values()),
        unpruned=sum(unpruned.values()),
        breakdown=breakdown,
        unpruned_breakdown=unpruned,
        convention=convention,
        vision=vision,
        summary=summary,
    )


def prefill_flops(
    model: nn.Module | Any,
    record: PruneRecord,
    config: PruneConfig | None = None,
    *,
    convention: str = "executed",
    posc_pass: bool | None = None,
    lm_head_tokens: int = 1,
    kv_shared_sliced: bool | None = None,
    vision: int | None = None,
) -> FlopsReport:
    """FLOPs of the prefill `record` describes (`handle.last`), on `model` (or its config).

    Args:
        model: the pruned model, or its config.
        record: `handle.last` after the prefill.
        config: the `PruneConfig` that ran (default: the one echoed in the record).
        convention, posc_pass, lm_head_tokens, kv_shared_sliced, vision: as in `count_flops` (the record does not
            say whether Gemma 4's KV-sharing layers ran on the last rows only: the default assumes the prefill of
            `generate`, under the model's own attention implementation).
    """
    if config is None:
        config = PruneConfig.from_dict(record.config)
    return count_flops(
        TextDims.from_config(model),
        PrefillLayout.from_record(record),
        config,
        convention=convention,
        posc_pass=posc_pass,
        lm_head_tokens=lm_head_tokens,
        kv_shared_sliced=kv_shared_sliced,
        vision=vision,
    )


def estimate(
    model_config: Any,
    seq_len: int,
    num_visual: int,
    budget: int | None = None,
    layer: int | None = None,
    *,
    config: PruneConfig | None = None,
    prompt_len: int = 0,
    num_segments: int | None = None,
    batch: int = 1,
    num_frames: int | None = None,
    convention: str = "executed",
    kv_shared_sliced: bool | None = None,
    vision: int | None = None,
) -> FlopsReport:
    """What a prefill would cost, without running it: unpadded samples of `seq_len` tokens.

    Args:
        model_config: the model's config (or the model).
        seq_len: L, tokens per sample.
        num_visual: N, prunable video tokens per sample, starting right after `prompt_len` text tokens;
            the remaining text follows the video (ShaRP's query rows with `sharp_query="text"`).
        budget: B, kept video tokens (default: `config.budget(num_visual)`; N for method "none").
        layer: K (default: `config.layer`).
        config: the pruning config (default: `PruneConfig()`); `layer` overrides its K.
        prompt_len: text tokens before the video.
        num_segments: scene segments, equal-sized (default: `config.expected_segments`; ShaRP: the cap).
        batch: samples.
        num_frames: the video's frames, equal runs of its tokens. Needed for the ideal count of a Gemma 4 VLM that
            lets a frame's tokens attend to each other both ways in sliding layers (`use_bidirectional_attention=
            "vision"`); other models and the executed convention do not depend on it.
        convention, kv_shared_sliced, vision: as in `count_flops` (the prefill of `generate`: one LM head row).
    """
    config = config if config is not None else PruneConfig()
    dims = TextDims.from_config(model_config)
    if dims.vision_bidirectional and convention == "ideal" and num_frames is None and num_visual:
        raise ConfigError(
            "this model's frames attend to themselves both ways in its sliding layers; pass num_frames for the ideal "
            "count (the executed one does not depend on it)."
        )
    if layer is not None:
        config = config.replace(layer=layer)
    if budget is None:
        budget = config.budget(num_visual)
    after_video = seq_len - prompt_len - num_visual
    query_rows = {"none": 0, "last": 1, "text": after_video}[config.query]
    if config.query == "text" and after_video < 1:
        raise ConfigError("text-query scoring needs at least one text token after the video; lower prompt_len.")
    layout = PrefillLayout.synthetic(
        seq_len,
        num_visual,
        budget,
        prompt_len=prompt_len,
        query_rows=query_rows,
        num_segments=num_segments if num_segments is not None else config.expected_segments,
        batch=batch,
        num_frames=num_frames,
    )
    return count_flops(dims, layout, config, convention=convention, kv_shared_sliced=kv_shared_sliced, vision=vision)
