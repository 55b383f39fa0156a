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
- the LM head on the last token of each sample (`logits_to_keep=1`, as `generate` runs the prefill).

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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..config import PruneConfig
from ..errors import ConfigError
from ..methods import build_selector
from ..models import vision_flops  # noqa: F401  (re-exported: FLOPs of the vision tower, per family)
from ..record import PruneRecord

CONVENTIONS = ("executed", "ideal")
VISION_NOTE = "vision tower FLOPs are not reduced by in-LLM pruning and are not included in total/unpruned"


# ---------------------------------------------------------------------------------------------- model shape
@dataclass(frozen=True)
class TextDims:
    """Shape of a decoder-only text model (Llama / Qwen2 style: GQA attention, gated MLP).

    Attributes:
        hidden_size: D.
        intermediate_size: I, the MLP width.
        num_heads: H, query heads.
        num_kv_heads: key/value heads.
        head_dim: size of one head.
        num_layers: decoder layers.
        vocab_size: V, rows of the LM head.
    """

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_layers: int
    vocab_size: int

    @classmethod
    def from_config(cls, config: Any) -> TextDims:
        """Read the text config of `config` (a model config, a VLM config or a model instance)."""
        if isinstance(config, nn.Module):
            config = config.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return cls(
            hidden_size=text.hidden_size,
            intermediate_size=text.intermediate_size,
            num_heads=heads,
            num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            num_layers=text.num_hidden_layers,
            vocab_size=text.vocab_size,
        )

    @property
    def qkvo_per_token(self) -> int:
        """q, k, v and o projections of one token in one layer."""
        d, hd = self.hidden_size, self.head_dim
        return 2 * d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)

    @property
    def mlp_per_token(self) -> int:
        """gate, up and down projections of one token in one layer."""
        return 2 * 3 * self.hidden_size * self.intermediate_size

    @property
    def attention_per_pair(self) -> int:
        """QK^T and AV for one (query row, key) pair in one layer, all heads."""
        return 4 * self.num_heads * self.head_dim

    @property
    def score_per_pair(self) -> int:
        """QK^T only (the scoring rows at layer K-1)."""
        return 2 * self.num_heads * self.head_dim

    @property
    def lm_head_per_token(self) -> int:
        return 2 * self.hidden_size * self.vocab_size


# ---------------------------------------------------------------------------------------------- prefill layout
@dataclass(frozen=True)
class SampleLayout:
    """One sample of a prefill, in the coordinates of the sequence entering the decoder.

    Attributes:
        valid: [L] bool, False at padding.
        visual: [N] long, sorted positions of the prunable visual tokens.
        kept_visual: B, visual slots that continue past layer K.
        query_rows: |Q|, rows that scored the visual tokens at layer K-1 (0: no scoring). They are the
            last |Q| real tokens (the text after the video, or the last token).
        segments: [N] segment id of each visual token (ShaRP), or None.
        pre_dropped: visual tokens the pre-LLM stage removed before layer 0 (all real tokens).
    """

    valid: torch.Tensor
    visual: torch.Tensor
    kept_visual: int
    query_rows: int = 0
    segments: torch.Tensor | None = None
    pre_dropped: int = 0

    @property
    def real(self) -> int:
        return int(self.valid.sum())

    @property
    def real_kept(self) -> int:
        return self.real - self.visual.numel() + self.kept_visual

    @property
    def num_segments(self) -> int:
        return int(self.segments.max()) + 1 if self.segments is not None and self.segments.numel() else 1


@dataclass(frozen=True)
class PrefillLayout:
    """The token layout of one prefill, all that the FLOP count depends on besides the model and config.

    Attributes:
        samples: one `SampleLayout` per sample (same length and visual count in a batch).
        input_len: the prefill length before any pre-LLM stage (the unpruned model's L).
    """

    samples: tuple[SampleLayout, ...]
    input_len: int

    @property
    def batch(self) -> int:
        return len(self.samples)

    @property
    def seq_len(self) -> int:
        """L, the padded length entering the decoder."""
        return self.samples[0].valid.numel()

    @property
    def num_visual(self) -> int:
        return self.samples[0].visual.numel()

    @property
    def kept_len(self) -> int:
        """L', the padded length of layers >= K."""
        return self.seq_len - self.num_visual + self.samples[0].kept_visual

    @classmethod
    def from_record(cls, record: PruneRecord) -> PrefillLayout:
        """Rebuild the decoder-side layout of the prefill a `PruneRecord` describes."""
        batch = len(record.keep_positions)
        samples = []
        for i in range(batch):
            valid = torch.ones(record.seq_len, dtype=torch.bool)
            if record.attention_mask is not None:
                valid = record.attention_mask[i].bool().cpu()
            visual = record.visual_positions[i].cpu() if record.visual_positions else torch.empty(0, dtype=torch.long)
            pre_dropped = 0
            if record.pre_keep_positions is not None:
                # The decoder sees every position but the visual tokens the pre-stage dropped.
                survivors = record.pre_keep_positions[i].cpu()
                keep = torch.ones(record.seq_len, dtype=torch.bool)
                keep[visual] = False
                keep[survivors] = True
                index = keep.nonzero().flatten()
                pre_dropped = visual.numel() - survivors.numel()
                valid, visual = valid[index], torch.searchsorted(index, survivors)
            samples.append(
                SampleLayout(
                    valid=valid,
                    visual=visual,
                    kept_visual=record.budget[i],
                    query_rows=record.num_query_rows[i] if record.num_query_rows is not None else 0,
                    segments=record.segment_ids[i].cpu() if record.segment_ids is not None else None,
                    pre_dropped=pre_dropped,
                )
            )
        return cls(samples=tuple(samples), input_len=record.seq_len)

    @classmethod
    def synthetic(
        cls,
        seq_len: int,
        num_visual: int,
        kept_visual: int,
        prompt_len: int = 0,
        query_rows: int = 0,
        num_segments: int = 1,
        batch: int = 1,
    ) -> PrefillLayout:
        """Unpadded samples: `prompt_len` text tokens, `num_visual` video tokens in `num_segments`
        near-equal segments, then the rest of the text."""
        if not 0 <= prompt_len <= seq_len - num_visual:
            raise ConfigError(f"a video of {num_visual} tokens after {prompt_len} prompt tokens exceeds L={seq_len}.")
        visual = torch.arange(prompt_len, prompt_len + num_visual)
        segments = (torch.arange(num_visual) * max(1, num_segments)) // max(1, num_visual)
        sample = SampleLayout(
            valid=torch.ones(seq_len, dtype=torch.bool),
            visual=visual,
            kept_visual=kept_visual,
            query_rows=query_rows,
            segments=segments,
        )
        return cls(samples=(sample,) * batch, input_len=seq_len)


# ---------------------------------------------------------------------------------------------- pair counts
def _triangle(n: int) -> int:
    return n * (n + 1) // 2


def _causal_pairs(layout: PrefillLayout, ideal: bool) -> int:
    """Attention pairs of one plain causal layer over the decoder's input."""
    if ideal:
        return sum(_triangle(s.real) for s in layout.samples)
    return layout.batch * layout.seq_len**2


def _kept_pairs(layout: PrefillLayout, ideal: bool) -> int:
    if ideal:
        return sum(_triangle(s.real_kept) for s in layout.samples)
    return layout.batch * layout.kept_len**2


def _segm_pairs(sample: SampleLayout, within: str, ideal: bool) -> int:
    """Attention pairs of one layer under SegM's mask, for one sample (see `segm.segment_attention`)."""
    length, n = sample.valid.numel(), sample.visual.numel()
    is_text = torch.ones(length, dtype=torch.bool)
    is_text[sample.visual] = False
    text_valid = is_text & sample.valid
    text_upto = text_valid.long().cumsum(0)  # real non-visual tokens at positions <= p
    segments = sample.segments if sample.segments is not None else torch.zeros(n, dtype=torch.long)
    sizes = torch.unique_consecutive(segments, return_counts=True)[1].tolist()
    if ideal:
        # text rows: every real key up to themselves; visual rows: the real text before them plus their
        # segment (up to themselves when causal).
        real_upto = sample.valid.long().cumsum(0)
        pairs = int(real_upto[text_valid].sum())
        pairs += int(text_upto[sample.visual].sum())
        if within == "causal":
            return pairs + sum(_triangle(size) for size in sizes)
        return pairs + sum(size * size for size in sizes)
    pairs = (length - n) * length  # text (and padding) rows against every key, through a small mask
    start = 0
    for size in sizes:
        first, last = int(sample.visual[start]), int(sample.visual[start + size - 1])
        start += size
        if int(text_upto[last] - text_upto[first]) > 0:
            # text inside the segment: its rows against [text up to its end; the segment], masked
            pairs += size * (int(text_upto[last]) + size)
        else:
            # the usual layout: one stacked [prompt; segment] block, square
            pairs += (int(text_upto[first]) + size) ** 2
    return pairs


def _score_pairs(layout: PrefillLayout, ideal: bool) -> int:
    """Scoring pairs at layer K-1 (one pass): query rows x keys."""
    if ideal:
        # the query rows are the last |Q| real tokens: row k from the end sees real - k keys
        return sum(s.query_rows * s.real - _triangle(s.query_rows - 1) for s in layout.samples)
    width = max(s.query_rows for s in layout.samples)  # rows are padded to the widest sample
    return layout.batch * width * layout.seq_len


def _selection_flops(dims: TextDims, layout: PrefillLayout, config: PruneConfig) -> int:
    """Similarity work of the selector (approximate; see the module docstring)."""
    total = 0
    for s in layout.samples:
        n, budget = s.visual.numel(), s.kept_visual
        if config.method == "sharp" and config.regd and budget < n:
            registers = config.regd_registers if config.regd_registers is not None else s.num_segments
            selected = budget - min(registers, budget // 8)
            greedy = selected - round(config.regd_rho * selected)
            # dedup-greedy in blocks of up to 256 candidates, assuming few duplicates (about `greedy` visited):
            # each block's own block x block product, and the block against the tokens accepted before it
            block = min(256, n)
            blocks = -(-greedy // block)
            total += 2 * dims.hidden_size * block * block * blocks
            total += 2 * dims.hidden_size * block * sum(min(greedy, b * block) for b in range(1, blocks))
            # farthest-point sampling starts from one N x accepted product (its per-pick N x D products
            # are matrix-vector products, which FlopCounterMode does not count)
            total += 2 * n * dims.hidden_size * greedy
        elif config.method == "divprune":
            total += 2 * n * dims.hidden_size * budget
    return total


# ---------------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class FlopsReport:
    """Prefill FLOPs of the text decoder, pruned and unpruned (same input).

    Attributes:
        total: FLOPs of the pruned prefill (sum of `breakdown`).
        unpruned: FLOPs of the same prefill without pruning (no pre-stage either).
        breakdown: FLOPs by component: ``before_k.*``, ``posc_pass.*``, ``after_k.*`` (each ``qkvo``,
            ``attention``, ``mlp``), ``scoring``, ``selection``, ``lm_head``.
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


def _stage(dims: TextDims, name: str, layers: int, tokens: int, pairs: int) -> dict[str, int]:
    return {
        f"{name}.qkvo": layers * tokens * dims.qkvo_per_token,
        f"{name}.attention": layers * pairs * dims.attention_per_pair,
        f"{name}.mlp": layers * tokens * dims.mlp_per_token,
    }


def _unpruned(dims: TextDims, layout: PrefillLayout, config: PruneConfig, ideal: bool, lm_rows: int) -> dict[str, int]:
    """Every layer over the original input (before any pre-stage), plain causal."""
    if ideal:
        reals = [s.real + s.pre_dropped for s in layout.samples]
        tokens, pairs = sum(reals), sum(_triangle(r) for r in reals)
    else:
        tokens, pairs = layout.batch * layout.input_len, layout.batch * layout.input_len**2
    k = config.layer
    return {
        **_stage(dims, "before_k", k, tokens, pairs),
        **_stage(dims, "after_k", dims.num_layers - k, tokens, pairs),
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
    if not 1 <= config.layer <= dims.num_layers - 1:
        raise ConfigError(f"PruneConfig.layer={config.layer} is outside [1, {dims.num_layers - 1}] for this model.")
    ideal = convention == "ideal"
    k, rest = config.layer, dims.num_layers - config.layer
    lm_rows = layout.batch * lm_head_tokens
    unpruned = _unpruned(dims, layout, config, ideal, lm_rows)
    selector = build_selector(config)
    pruned_any = layout.num_visual > 0  # the engine does nothing on a prefill without visual tokens

    if ideal:
        tokens = sum(s.real for s in layout.samples)
        kept_tokens = sum(s.real_kept for s in layout.samples)
    else:
        tokens, kept_tokens = layout.batch * layout.seq_len, layout.batch * layout.kept_len
    segm = pruned_any and selector.segment_mask
    if segm:
        pairs = sum(_segm_pairs(s, config.segm_within, ideal) for s in layout.samples)
    else:
        pairs = _causal_pairs(layout, ideal)
    if posc_pass is None:
        posc_pass = selector.needs_prior and config.posc_prior == "per_input"
    posc_pass = bool(posc_pass and pruned_any)
    score_passes = (1 + int(posc_pass)) if pruned_any and selector.query != "none" else 0

    breakdown = {
        **_stage(dims, "before_k", k, tokens, pairs),
        **_stage(dims, "posc_pass", k if posc_pass else 0, tokens, pairs),
        "scoring": score_passes * _score_pairs(layout, ideal) * dims.score_per_pair,
        "selection": _selection_flops(dims, layout, config) if pruned_any else 0,
        **_stage(dims, "after_k", rest, kept_tokens, _kept_pairs(layout, ideal)),
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
        num_segments: SegM segments, equal-sized (default: `config.segm_max_segments`, the cap).
        batch: samples.
        convention, vision: as in `count_flops`.
    """
    config = config if config is not None else PruneConfig()
    if layer is not None:
        config = config.replace(layer=layer)
    if budget is None:
        budget = num_visual if config.method == "none" else config.budget(num_visual)
    selector = build_selector(config)
    after_video = seq_len - prompt_len - num_visual
    query_rows = {"none": 0, "last": 1, "text": after_video}[selector.query]
    if selector.query == "text" and after_video < 1:
        raise ConfigError("text-query scoring needs at least one text token after the video; lower prompt_len.")
    layout = PrefillLayout.synthetic(
        seq_len,
        num_visual,
        budget,
        prompt_len=prompt_len,
        query_rows=query_rows,
        num_segments=num_segments if num_segments is not None else config.segm_max_segments,
        batch=batch,
    )
    return count_flops(TextDims.from_config(model_config), layout, config, convention=convention, vision=vision)


# ---------------------------------------------------------------------------------------------- vision tower
# ---------------------------------------------------------------------------------------------- measuring
def _sdpa_flop(
    query_shape: tuple[int, ...], key_shape: tuple[int, ...], value_shape: tuple[int, ...], *args: Any, **kwargs: Any
) -> int:
    """QK^T and AV at full q_len x kv_len, as torch counts its GPU sdpa kernels (GQA: query heads)."""
    b, heads, q_len, dim = query_shape
    kv_len, v_dim = key_shape[2], value_shape[3]
    return 2 * b * heads * q_len * kv_len * (dim + v_dim)


def flop_counter_mode(display: bool = False) -> FlopCounterMode:
    """A `FlopCounterMode` that also counts CPU attention.

    torch registers FLOP formulas for its GPU sdpa kernels only: on CPU, `scaled_dot_product_attention`
    runs `aten._scaled_dot_product_flash_attention_for_cpu`, which a plain `FlopCounterMode` counts as 0.
    This one counts it like the GPU kernels (full q_len x kv_len, causality not discounted).
    """
    mapping = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _sdpa_flop
    return FlopCounterMode(display=display, custom_mapping=mapping)


@dataclass(frozen=True)
class MeasuredFlops:
    """FLOPs counted by `FlopCounterMode` over one forward.

    Attributes:
        total: everything the forward ran.
        text: the text decoder and the LM head (what `count_flops` models).
    """

    total: int
    text: int


def measure_prefill_flops(model: nn.Module, inputs: Mapping[str, Any], logits_to_keep: int = 1) -> MeasuredFlops:
    """Count one prefill forward of `model` with `FlopCounterMode` (under `torch.no_grad()`).

    Wrap the call in `handle.visual_frames(...)` for the generic adapter. On a VLM with PosC the first
    prefill of a video size also encodes one blank frame inside the decoder's call (it is cached after),
    so `text` includes it then: measure a second call for the decoder alone.
    """
    from ..models import resolve_adapter

    decoder = resolve_adapter(model).decoder(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {module: name for name, module in model.named_modules()}
    counter = flop_counter_mode()
    with torch.no_grad(), counter:
        model(**inputs, logits_to_keep=logits_to_keep)
    counts = counter.get_flop_counts()
    root = type(model).__name__

    def counted(module: nn.Module | None) -> int:
        if module is None or module not in names:
            return 0
        key = f"{root}.{names[module]}" if names[module] else root
        return sum(counts.get(key, {}).values())

    text = counted(decoder) + (counted(head) if head is not None and head not in decoder.modules() else 0)
    return MeasuredFlops(total=counter.get_total_flops(), text=text)
