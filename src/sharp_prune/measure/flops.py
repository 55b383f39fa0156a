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
  K. Gemma 4's text stack is refused (`TextDims.from_config`).

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
from .flop_counter import MeasuredFlops, flop_counter_mode, measure_prefill_flops  # noqa: F401  (re-exported)
from .prefill_shape import PrefillLayout, SampleLayout, TextDims  # noqa: F401  (SampleLayout re-exported)

CONVENTIONS = ("executed", "ideal")
VISION_NOTE = "vision tower FLOPs are not reduced by in-LLM pruning and are not included in total/unpruned"


# ---------------------------------------------------------------------------------------------- pair counts
def _triangle(n: int) -> int:
    return n * (n + 1) // 2


def _causal_pairs(layout: PrefillLayout, ideal: bool) -> int:
    """Attention pairs of one plain causal layer over the decoder's input."""
    if ideal:
        return sum(_triangle(s.real) for s in layout.samples)
    return layout.batch * layout.seq_len**2


def _window_pairs(positions: torch.Tensor, window: int) -> int:
    """Causal pairs within a sliding window among tokens at sorted `positions`: each query sees the tokens at most
    `window - 1` positions before it, itself included."""
    if not positions.numel():
        return 0
    first = torch.searchsorted(positions, positions - window, right=True)
    return int((torch.arange(1, positions.numel() + 1) - first).sum())


def _window_triangle(n: int, window: int) -> int:
    """`_window_pairs` of n consecutive tokens: sum over i < n of min(i + 1, W)."""
    full = min(n, window)
    return _triangle(full) + (n - full) * window


def _sliding_pairs(dims: TextDims, layout: PrefillLayout, ideal: bool, kept: bool) -> int:
    """Attention pairs of one sliding-window layer (0 on a stack without them). Executed: the kernels compute the
    whole q_len x kv_len product and mask the rest, as for a causal layer. Ideal: the pairs within the window, in
    the positions of the decoder's input; layers >= K (`kept`) keep the window in these original positions (a kept
    token sees the kept tokens at most W - 1 positions before it: `steps.sliding`)."""
    if not dims.has_sliding:
        return 0
    if not ideal:
        return _kept_pairs(layout, ideal) if kept else _causal_pairs(layout, ideal)
    window = dims.sliding_window
    if kept:
        return sum(_window_pairs(s.kept_positions, window) for s in layout.samples)
    return sum(_window_pairs(s.valid.nonzero().flatten(), window) for s in layout.samples)


def _kept_pairs(layout: PrefillLayout, ideal: bool) -> int:
    if ideal:
        return sum(_triangle(s.real_kept) for s in layout.samples)
    return layout.batch * layout.kept_len**2


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
            ``attention``, ``mlp``, and ``linear`` on a hybrid stack), ``scoring``, ``selection``, ``lm_head``.
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
    dims: TextDims,
    name: str,
    layers: range,
    lengths: list[int],
    pairs: int,
    ideal: bool,
    sliding_pairs: int = 0,
) -> dict[str, int]:
    """FLOPs of decoder layers `layers` over samples of `lengths` tokens (`pairs` attention pairs per full-attention
    layer, `sliding_pairs` per sliding-window layer)."""
    tokens = sum(lengths)
    linear = sum(1 for i in layers if dims.is_linear(i))
    sliding = sum(1 for i in layers if dims.is_sliding(i))
    attention = len(layers) - linear
    stage = {
        f"{name}.qkvo": attention * tokens * dims.qkvo_per_token,
        f"{name}.attention": ((attention - sliding) * pairs + sliding * sliding_pairs) * dims.attention_per_pair,
        f"{name}.mlp": tokens * sum(dims.mlp_flops_per_token(i) for i in layers),
    }
    if dims.has_linear:
        stage[f"{name}.linear"] = linear * sum(dims.linear_mixer_flops(n, ideal) for n in lengths)
    return stage


def _unpruned(dims: TextDims, layout: PrefillLayout, config: PruneConfig, ideal: bool, lm_rows: int) -> dict[str, int]:
    """Every layer over the original input (before any pre-stage), plain causal."""
    if ideal:
        lengths = [s.real + s.pre_dropped for s in layout.samples]
        pairs = sum(_triangle(r) for r in lengths)
        sliding = sum(_window_triangle(r, dims.sliding_window) for r in lengths) if dims.has_sliding else 0
    else:
        lengths, pairs = [layout.input_len] * layout.batch, layout.batch * layout.input_len**2
        sliding = pairs
    k = config.layer
    return {
        **_stage(dims, "before_k", range(k), lengths, pairs, ideal, sliding),
        **_stage(dims, "after_k", range(k, dims.num_layers), lengths, pairs, ideal, sliding),
        "lm_head": lm_rows * dims.lm_head_per_token,
    }


def count_flops(
    dims: TextDims,
    layout: PrefillLayout,
    config: PruneConfig,
    *,
    convention: str = "executed",
    posc_pass: bool | None = None,
    lm_head_tokens: int = 1,
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
        vision: vision tower FLOPs to carry in the report (not added to the totals).
    """
    if convention not in CONVENTIONS:
        raise ConfigError(f"convention={convention!r} is not one of {CONVENTIONS}.")
    check_layer(config.layer, dims.num_layers)
    ideal = convention == "ideal"
    k = config.layer
    lm_rows = layout.batch * lm_head_tokens
    unpruned = _unpruned(dims, layout, config, ideal, lm_rows)
    pruned_any = layout.num_visual > 0  # the engine does nothing on a prefill without visual tokens

    if ideal:
        lengths = [s.real for s in layout.samples]
        kept_lengths = [s.real_kept for s in layout.samples]
    else:
        lengths, kept_lengths = [layout.seq_len] * layout.batch, [layout.kept_len] * layout.batch
    segm = pruned_any and config.segment_mask
    if segm:
        pairs = sum(config.attention_pairs_before_k(s.valid, s.visual, s.segments, ideal) for s in layout.samples)
    else:
        pairs = _causal_pairs(layout, ideal)
    if posc_pass is None:
        posc_pass = config.blank_pass_each_prefill
    posc_pass = bool(posc_pass and pruned_any)
    score_passes = (1 + int(posc_pass)) if pruned_any and config.query != "none" else 0

    blank_layers = range(dims.score_layer(k) + 1 if posc_pass else 0)  # the blank pass stops at the scoring layer
    # A sliding-window layer keeps its own window under SegM (it is local already); layers >= K keep it in the
    # original positions of the kept tokens.
    sliding, kept_sliding = _sliding_pairs(dims, layout, ideal, False), _sliding_pairs(dims, layout, ideal, True)
    after = range(k, dims.num_layers)
    breakdown = {
        **_stage(dims, "before_k", range(k), lengths, pairs, ideal, sliding),
        **_stage(dims, "posc_pass", blank_layers, lengths, pairs, ideal, sliding),
        "scoring": score_passes * _score_pairs(layout, ideal) * dims.score_per_pair,
        "selection": _selection_flops(dims, layout, config) if pruned_any else 0,
        **_stage(dims, "after_k", after, kept_lengths, _kept_pairs(layout, ideal), ideal, kept_sliding),
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
        "score_layer": dims.score_layer(k) if config.query != "none" else None,
    }
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
    vision: int | None = None,
) -> FlopsReport:
    """FLOPs of the prefill `record` describes (`handle.last`), on `model` (or its config).

    Args:
        model: the pruned model, or its config.
        record: `handle.last` after the prefill.
        config: the `PruneConfig` that ran (default: the one echoed in the record).
        convention, posc_pass, lm_head_tokens, vision: as in `count_flops`.
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
    convention: str = "executed",
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
        convention, vision: as in `count_flops`.
    """
    config = config if config is not None else PruneConfig()
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
    )
    return count_flops(TextDims.from_config(model_config), layout, config, convention=convention, vision=vision)
