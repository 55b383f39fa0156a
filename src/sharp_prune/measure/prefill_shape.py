"""What a prefill looks like to the FLOP count: the text model's shape (`TextDims`) and the token layout
(`PrefillLayout`, rebuilt from a `PruneRecord` or made up for an estimate)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, UnsupportedModelError
from ..hf_protocol import kv_sources
from ..record import PruneRecord

# ---------------------------------------------------------------------------------------------- model shape
# The chunk length of the chunked gated delta rule (transformers' `torch_chunk_gated_delta_rule` and the fla kernels).
DELTA_RULE_CHUNK = 64
# Text configs whose linear-attention layers the count models (Qwen3.5's Gated DeltaNet; a dense MLP in every layer of
# qwen3_5_text, a mixture of experts with a gated shared expert in every layer of qwen3_5_moe_text).
LINEAR_MODEL_TYPES = ("qwen3_5_text", "qwen3_5_moe_text")
# Text configs whose mixture-of-experts MLPs the count models (their modeling files read for the exact structure):
# Qwen3-MoE / Qwen3-VL-MoE (a router, top-k experts; dense layers by `mlp_only_layers` / `decoder_sparse_step`),
# Qwen3.5-MoE (the same in every layer, plus a shared expert with a sigmoid gate) and GLM-4.5V (a router, top-k
# experts and `n_shared_experts` shared ones; layers below `first_k_dense_replace` dense).
MOE_MODEL_TYPES = ("qwen3_moe", "qwen3_vl_moe_text", "qwen3_5_moe_text", "glm4v_moe_text")
SLIDING = "sliding_attention"
LINEAR = "linear_attention"
GEMMA4_TEXT = "gemma4_text"


def _moe_fields(text: Any) -> dict[str, Any]:
    """The mixture-of-experts fields of `TextDims` for a text config (empty without experts); refuses a routed MLP
    of a family the count does not model."""
    experts = next(
        (getattr(text, n) for n in ("n_routed_experts", "num_experts", "num_local_experts") if getattr(text, n, None)),
        0,
    )
    model_type = getattr(text, "model_type", None)
    if model_type == GEMMA4_TEXT:
        # Gemma 4 (26B-A4B): with `enable_moe_block`, every layer runs its dense MLP and, beside it, a router and
        # top-k experts on the same input; `num_experts` alone builds nothing.
        if not text.enable_moe_block:
            return {}
        return dict(
            moe_layers=(True,) * text.num_hidden_layers,
            num_experts=text.num_experts,
            experts_per_token=text.top_k_experts,
            moe_intermediate_size=text.moe_intermediate_size,
            moe_with_dense_mlp=True,
        )
    if not experts:
        return {}
    if model_type not in MOE_MODEL_TYPES:
        # A routed MLP runs top-k of the experts (plus shared ones) per token, not `intermediate_size`.
        raise UnsupportedModelError(
            f"the FLOPs model counts the mixture-of-experts MLPs of {MOE_MODEL_TYPES} only, not "
            f"{type(text).__name__} (model_type {model_type!r}, routing among {experts} experts); its figures would "
            "be wrong, so none are given. Time the prefill instead (sharp_prune.measure.timing)."
        )
    layers = text.num_hidden_layers
    shared, gate = 0, False
    if model_type == "glm4v_moe_text":
        moe = tuple(i >= text.first_k_dense_replace for i in range(layers))
        shared = text.moe_intermediate_size * (text.n_shared_experts or 0)
    elif model_type == "qwen3_5_moe_text":
        moe = (True,) * layers
        shared, gate = text.shared_expert_intermediate_size, True
    else:  # qwen3_moe, qwen3_vl_moe_text
        step, dense = text.decoder_sparse_step, set(text.mlp_only_layers or ())
        moe = tuple(i not in dense and (i + 1) % step == 0 for i in range(layers))
    return dict(
        moe_layers=moe,
        num_experts=experts,
        experts_per_token=text.num_experts_per_tok,
        moe_intermediate_size=text.moe_intermediate_size,
        shared_expert_size=shared,
        shared_expert_gate=gate,
    )


def _gemma4_fields(text: Any, vlm: bool) -> dict[str, Any]:
    """The Gemma 4 fields of `TextDims` for a `Gemma4TextConfig` (modeling_gemma4.py read for the structure).

    - each layer's attention shape (`config.per_layer_config[i]`: full-attention layers at `global_head_dim`, with
      `num_global_key_value_heads` when `attention_k_eq_v`), and its key/value projections: 2, 1 (a full layer
      under `attention_k_eq_v` has no `v_proj`: values are the keys) or 0 (a KV-sharing layer, "reuse" in
      `config.kv_sharing_modes`, attends to its source layer's keys);
    - the dense MLP of each layer, twice as wide in the KV-sharing layers under `use_double_wide_mlp`;
    - per-layer inputs (`hidden_size_per_layer_input`);
    - whether transformers can run the KV-sharing layers on the last `logits_to_keep` rows
      (`Gemma4TextModel._maybe_slice_kv_shared_inputs`: not under flash or flex attention, which cannot slice a
      mask);
    - in-frame bidirectional attention in sliding layers (`use_bidirectional_attention="vision"`), which only the
      VLM's forward applies (`Gemma4Model` builds it from `mm_token_type_ids`; `Gemma4ForCausalLM` stays causal).
    """
    layers = text.num_hidden_layers
    shared = int(text.num_kv_shared_layers or 0)
    sources = kv_sources(text, layers, type(text).__name__)  # refuses sharing layers with no source in the model
    reuse = tuple(source != index for index, source in enumerate(sources))
    kinds = tuple(text.layer_types[:layers])
    views = [text.per_layer_config[i] for i in range(layers)]
    k_eq_v = bool(text.attention_k_eq_v)
    implementation = str(getattr(text, "_attn_implementation", None) or "sdpa")
    return dict(
        layer_head_dims=tuple(int(view.head_dim) for view in views),
        layer_kv_heads=tuple(int(view.num_key_value_heads) for view in views),
        layer_kv_projections=tuple(
            0 if reuse[i] else 1 if k_eq_v and kinds[i] != SLIDING else 2 for i in range(layers)
        ),
        kv_sources=sources if shared else (),
        num_kv_shared_layers=shared,
        layer_intermediate_sizes=tuple(
            text.intermediate_size * (2 if text.use_double_wide_mlp and reuse[i] else 1) for i in range(layers)
        ),
        per_layer_input_size=int(text.hidden_size_per_layer_input or 0),
        kv_shared_sliceable=bool(shared) and "flash" not in implementation and "flex" not in implementation,
        vision_bidirectional=vlm and text.use_bidirectional_attention == "vision",
    )


@dataclass(frozen=True)
class TextDims:
    """Shape of a decoder-only text model (Llama / Qwen2 style: GQA attention, gated MLP), optionally hybrid
    (linear-attention layers), with sliding-window layers, with mixture-of-experts MLPs, or Gemma 4's text stack
    (per-layer attention shapes, KV-sharing layers, per-layer inputs).

    Attributes:
        hidden_size: D.
        intermediate_size: I, the width of the dense MLP (of the dense layers of a mixture-of-experts stack).
        num_heads: H, query heads.
        num_kv_heads: key/value heads.
        head_dim: size of one head.
        num_layers: decoder layers.
        vocab_size: V, rows of the LM head.
        layer_kinds: each layer's kind (`config.layer_types`) on a stack with linear-attention or sliding-window
            layers; empty: full attention everywhere.
        attn_output_gate: the query projection also produces a sigmoid gate of the attention output (Qwen3.5:
            `q_proj` is 2 H head_dim wide).
        linear_key_heads, linear_value_heads, linear_key_dim, linear_value_dim, linear_conv_kernel: the Gated
            DeltaNet layers' Hk, Hv, dk, dv and short-convolution width kc (0 without linear layers).
        sliding_window: W of the sliding-window layers (0 without them): a query attends to the keys at most
            W - 1 positions before it (transformers' `sliding_window_overlay`).
        moe_layers: per layer, whether its MLP is a mixture of experts (empty: dense everywhere).
        num_experts: E, routed experts (the router's width).
        experts_per_token: k, experts each token runs.
        moe_intermediate_size: Ie, the width of one expert.
        shared_expert_size: Is, the width of the shared expert(s) every token runs in a MoE layer (0: none).
        shared_expert_gate: the shared expert's output is gated by a D -> 1 projection (Qwen3.5-MoE).
        moe_with_dense_mlp: a mixture-of-experts layer also runs its dense MLP (Gemma 4's `enable_moe_block`).
        layer_head_dims, layer_kv_heads: each layer's head size and key/value heads (Gemma 4: full-attention layers
            at `global_head_dim`); empty: `head_dim` and `num_kv_heads` everywhere.
        layer_kv_projections: each layer's key and value projections: 2, 1 (keys only, values = keys: Gemma 4's
            `attention_k_eq_v`) or 0 (a KV-sharing layer); empty: 2 everywhere.
        kv_sources: the layer whose keys each layer attends to (itself, or a KV-sharing layer's source); empty:
            itself everywhere.
        num_kv_shared_layers: the last layers, KV-sharing ones (Gemma 4's `num_kv_shared_layers`).
        layer_intermediate_sizes: each layer's dense MLP width (Gemma 4's `use_double_wide_mlp` doubles it in the
            KV-sharing layers); empty: `intermediate_size` everywhere.
        per_layer_input_size: d of Gemma 4's per-layer inputs (`hidden_size_per_layer_input`; 0: none).
        kv_shared_sliceable: transformers runs the KV-sharing layers on the last `logits_to_keep` rows of a forward
            with an integer `logits_to_keep` (Gemma 4 under eager or sdpa attention, not flash or flex).
        vision_bidirectional: in sliding layers the tokens of one frame (one run of video tokens) also attend to the
            later tokens of the frame (Gemma 4's VLM with `use_bidirectional_attention="vision"`).
    """

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_layers: int
    vocab_size: int
    layer_kinds: tuple[str, ...] = ()
    attn_output_gate: bool = False
    linear_key_heads: int = 0
    linear_value_heads: int = 0
    linear_key_dim: int = 0
    linear_value_dim: int = 0
    linear_conv_kernel: int = 0
    sliding_window: int = 0
    moe_layers: tuple[bool, ...] = ()
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_expert_size: int = 0
    shared_expert_gate: bool = False
    moe_with_dense_mlp: bool = False
    layer_head_dims: tuple[int, ...] = ()
    layer_kv_heads: tuple[int, ...] = ()
    layer_kv_projections: tuple[int, ...] = ()
    kv_sources: tuple[int, ...] = ()
    num_kv_shared_layers: int = 0
    layer_intermediate_sizes: tuple[int, ...] = ()
    per_layer_input_size: int = 0
    kv_shared_sliceable: bool = False
    vision_bidirectional: bool = False

    @classmethod
    def from_config(cls, config: Any) -> TextDims:
        """Read the text config of `config` (a model config, a VLM config or a model instance).

        Gemma 4: pass the VLM (or its config) for a VLM, not its text config: only the VLM's forward lets the tokens
        of a frame attend to each other both ways in sliding layers (`vision_bidirectional`), which the ideal
        convention counts.
        """
        if isinstance(config, nn.Module):
            config = config.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        model_type = getattr(text, "model_type", None)
        layers = text.num_hidden_layers
        kinds = tuple(getattr(text, "layer_types", None) or ())[:layers]
        unknown = sorted(set(kinds) - {"full_attention", SLIDING, LINEAR})
        if unknown:
            raise UnsupportedModelError(
                f"the FLOPs model does not count decoder layers of kind {unknown} ({type(text).__name__}); its "
                "figures would be wrong, so none are given."
            )
        bidirectional = getattr(text, "use_bidirectional_attention", None)
        if bidirectional and not (model_type == GEMMA4_TEXT and bidirectional == "vision"):
            raise UnsupportedModelError(
                f"the FLOPs model counts causal decoders only ({type(text).__name__} has "
                f"use_bidirectional_attention={text.use_bidirectional_attention!r}); its figures would be wrong, so "
                "none are given."
            )
        moe = _moe_fields(text)
        gemma4 = _gemma4_fields(text, vlm=text is not config) if model_type == GEMMA4_TEXT else {}
        hybrid = LINEAR in kinds
        if hybrid and model_type not in LINEAR_MODEL_TYPES:
            raise UnsupportedModelError(
                f"the FLOPs model counts the linear-attention layers of {LINEAR_MODEL_TYPES} only, not "
                f"{type(text).__name__} (model_type {model_type!r}: other projections); its figures would be wrong, "
                "so none are given."
            )
        sliding = SLIDING in kinds
        heads = text.num_attention_heads
        # a config whose head sizes differ by layer (Gemma 4) refuses the global value: read a sliding layer's
        shape = text.per_layer_config[kinds.index(SLIDING) if sliding else 0] if gemma4 else text
        head_dim = getattr(shape, "head_dim", None) or text.hidden_size // heads
        return cls(
            hidden_size=text.hidden_size,
            intermediate_size=getattr(text, "intermediate_size", None) or 0,
            num_heads=heads,
            num_kv_heads=getattr(shape, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            num_layers=layers,
            vocab_size=text.vocab_size,
            layer_kinds=kinds if hybrid or sliding else (),
            attn_output_gate=hybrid,  # Qwen3.5's attention layers always gate their output
            linear_key_heads=text.linear_num_key_heads if hybrid else 0,
            linear_value_heads=text.linear_num_value_heads if hybrid else 0,
            linear_key_dim=text.linear_key_head_dim if hybrid else 0,
            linear_value_dim=text.linear_value_head_dim if hybrid else 0,
            linear_conv_kernel=text.linear_conv_kernel_dim if hybrid else 0,
            sliding_window=int(text.sliding_window) if sliding else 0,
            **moe,
            **gemma4,
        )

    @property
    def qkvo_per_token(self) -> int:
        """q, k, v and o projections of one token in one attention layer of `head_dim` (and the output gate's, when
        gated); `qkvo_flops_per_token` for a given layer."""
        d, hd = self.hidden_size, self.head_dim
        query_heads = self.num_heads * (2 if self.attn_output_gate else 1)
        return 2 * d * hd * (query_heads + self.num_heads + 2 * self.num_kv_heads)

    @property
    def mlp_per_token(self) -> int:
        """gate, up and down projections of one token in one dense layer of `intermediate_size`."""
        return 2 * 3 * self.hidden_size * self.intermediate_size

    # ------------------------------------------------------------------ per layer (Gemma 4's shapes differ by layer)
    def layer_head_dim(self, layer: int) -> int:
        return self.layer_head_dims[layer] if self.layer_head_dims else self.head_dim

    def layer_num_kv_heads(self, layer: int) -> int:
        return self.layer_kv_heads[layer] if self.layer_kv_heads else self.num_kv_heads

    def kv_projections(self, layer: int) -> int:
        """How many of k_proj and v_proj `layer` runs: 2, 1 (values = keys) or 0 (a KV-sharing layer)."""
        return self.layer_kv_projections[layer] if self.layer_kv_projections else 2

    def qkvo_flops_per_token(self, layer: int) -> int:
        """The projections of one token in attention layer `layer`: q and o (H heads), the key and value
        projections it has (`kv_projections`, each of its own key/value heads), all at its head size."""
        d, hd = self.hidden_size, self.layer_head_dim(layer)
        query_heads = self.num_heads * (2 if self.attn_output_gate else 1)
        kv = self.kv_projections(layer) * self.layer_num_kv_heads(layer)
        return 2 * d * hd * (query_heads + self.num_heads + kv)

    def attention_flops_per_pair(self, layer: int) -> int:
        """QK^T and AV for one (query row, key) pair in `layer`, all heads: 4 H head_dim (its head size)."""
        return 4 * self.num_heads * self.layer_head_dim(layer)

    def score_flops_per_pair(self, layer: int) -> int:
        """QK^T only, at scoring layer `layer`."""
        return 2 * self.num_heads * self.layer_head_dim(layer)

    def dense_mlp_flops_per_token(self, layer: int) -> int:
        """gate, up and down projections of one token in the dense MLP of `layer` (its own width)."""
        width = self.layer_intermediate_sizes[layer] if self.layer_intermediate_sizes else self.intermediate_size
        return 2 * 3 * self.hidden_size * width

    @property
    def first_kv_shared_layer(self) -> int:
        """The first KV-sharing layer (`num_layers` without any): transformers' `first_kv_shared_layer_idx`."""
        return self.num_layers - self.num_kv_shared_layers

    @property
    def per_layer_flops_per_token(self) -> int:
        """Gemma 4's per-layer input in one decoder layer, one token: `per_layer_input_gate` (D -> d) and
        `per_layer_projection` (d -> D), 4 D d; the activation, the product with the per-layer input and the norm are
        elementwise (0)."""
        return 4 * self.hidden_size * self.per_layer_input_size

    @property
    def per_layer_inputs_per_token(self) -> int:
        """Gemma 4's `per_layer_model_projection` of one token's input embedding to every layer's per-layer input
        (D -> layers x d: 2 D layers d), run once per forward before layer 0 (the token part is a lookup: 0)."""
        return 2 * self.hidden_size * self.num_layers * self.per_layer_input_size

    # ------------------------------------------------------------------ mixture of experts
    @property
    def has_moe(self) -> bool:
        return any(self.moe_layers)

    def is_moe(self, layer: int) -> bool:
        return layer < len(self.moe_layers) and self.moe_layers[layer]

    @property
    def moe_per_token(self) -> int:
        """One token through one mixture-of-experts MLP: the router (D -> E, 2 D E), the k experts it picks (gate,
        up and down at Ie: 2 k 3 D Ie) and the shared expert (2 3 D Is, and its D -> 1 gate: 2 D). Softmax, top-k,
        the routing weights and the sums are elementwise (0).

        Both conventions count these k experts per token. transformers runs them so (`experts_implementation`
        "grouped_mm", its default: one grouped matmul over the token-expert pairs; "batched_mm"; "eager": a loop over
        the experts hit, each on its tokens), so the executed count is what the kernels run; `FlopCounterMode` sees
        it once `flop_counter_mode` adds the grouped matmul it has no formula for. Executed counts padding tokens
        (routed like any other), ideal does not.
        """
        d = self.hidden_size
        routed = 2 * 3 * d * self.moe_intermediate_size * self.experts_per_token
        shared = 2 * 3 * d * self.shared_expert_size + (2 * d if self.shared_expert_gate else 0)
        return 2 * d * self.num_experts + routed + shared

    def mlp_flops_per_token(self, layer: int) -> int:
        """The MLP of one token in `layer`: `moe_per_token` in a mixture-of-experts layer (plus the dense MLP beside
        it under `moe_with_dense_mlp`: Gemma 4), else the dense MLP (`dense_mlp_flops_per_token`)."""
        if not self.is_moe(layer):
            return self.dense_mlp_flops_per_token(layer)
        return self.moe_per_token + (self.dense_mlp_flops_per_token(layer) if self.moe_with_dense_mlp else 0)

    # ------------------------------------------------------------------ sliding-window layers
    @property
    def has_sliding(self) -> bool:
        return SLIDING in self.layer_kinds

    def is_sliding(self, layer: int) -> bool:
        return layer < len(self.layer_kinds) and self.layer_kinds[layer] == SLIDING

    @property
    def attention_per_pair(self) -> int:
        """QK^T and AV for one (query row, key) pair in one layer of `head_dim`, all heads
        (`attention_flops_per_pair` for a given layer)."""
        return 4 * self.num_heads * self.head_dim

    @property
    def score_per_pair(self) -> int:
        """QK^T only (the scoring rows at layer K-1), at `head_dim` (`score_flops_per_pair` for a given layer)."""
        return 2 * self.num_heads * self.head_dim

    @property
    def lm_head_per_token(self) -> int:
        return 2 * self.hidden_size * self.vocab_size

    # ------------------------------------------------------------------ hybrid stacks (linear attention)
    @property
    def has_linear(self) -> bool:
        return LINEAR in self.layer_kinds

    def is_linear(self, layer: int) -> bool:
        return layer < len(self.layer_kinds) and self.layer_kinds[layer] == LINEAR

    def score_layer(self, k: int) -> int:
        """The layer that scores for a prune at K: K-1, or the last full-attention layer below K (neither linear nor
        sliding: `steps.sliding.score_layer`); the blank pass runs layers 0..score_layer."""
        full = [i for i in range(k) if not self.is_linear(i) and not self.is_sliding(i)]
        return full[-1] if full else k - 1

    @property
    def linear_proj_per_token(self) -> int:
        """A Gated DeltaNet layer's projections of one token: qkv (D -> 2 Hk dk + Hv dv), z (D -> Hv dv), the
        decay and step inputs a, b (D -> Hv each) and out (Hv dv -> D): 2 D (2 Hk dk + 3 Hv dv + 2 Hv)."""
        d = self.hidden_size
        key, value = self.linear_key_heads * self.linear_key_dim, self.linear_value_heads * self.linear_value_dim
        return 2 * d * (2 * key + 3 * value + 2 * self.linear_value_heads)

    @property
    def linear_conv_channels(self) -> int:
        """Channels of the depthwise short convolution over q, k and v: 2 Hk dk + Hv dv."""
        return 2 * self.linear_key_heads * self.linear_key_dim + self.linear_value_heads * self.linear_value_dim

    def linear_mixer_flops(self, length: int, ideal: bool) -> int:
        """FLOPs of one Gated DeltaNet layer over one sample of `length` tokens (projections, conv, delta rule).

        Per token, with Hk key heads of size dk, Hv value heads of size dv, conv width kc, C = 64:

        - projections: 2 D (2 Hk dk + 3 Hv dv + 2 Hv) (`linear_proj_per_token`);
        - short conv (depthwise, kc taps): 2 kc (2 Hk dk + Hv dv) per output. Executed: the kernel pads kc - 1 on
          both sides, so L + kc - 1 outputs (as torch counts `aten.convolution`); ideal: L;
        - gated delta rule, per value head. Ideal (the recurrent form, state S of dk x dv): read S^T k, write
          S += k (beta (v - S^T k))^T, read S^T q: three dk x dv multiply-adds, 6 dk dv FLOPs per token (the decay
          S * exp(g) is elementwise and counts 0, as everywhere here). Executed (the chunked form transformers runs,
          sequence padded to a multiple of C): per chunk, k_beta k^T and q k^T (2 C^2 dk each), two unit-triangular
          solves for the values and decayed keys (C^2 dv and C^2 dk, `flop_counter._solve_triangular_flop`'s
          n^2 m), the intra-chunk attention times the corrected values (2 C^2 dv), and three C x dk x dv products
          with the state (read by keys and by queries, write): C^2 (5 dk + 3 dv) + 6 C dk dv per chunk.

        The gated RMSNorm, SiLU, sigmoid, softplus and L2 norms are elementwise (0).
        """
        heads, dk, dv, kc = self.linear_value_heads, self.linear_key_dim, self.linear_value_dim, self.linear_conv_kernel
        projections = length * self.linear_proj_per_token
        conv_outputs = length if ideal else length + kc - 1
        conv = 2 * kc * self.linear_conv_channels * conv_outputs
        if ideal:
            delta = length * heads * 6 * dk * dv
        else:
            c = DELTA_RULE_CHUNK
            chunks = -(-length // c)
            delta = chunks * heads * (c * c * (5 * dk + 3 * dv) + 6 * c * dk * dv)
        return projections + conv + delta


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
        kept: [B] sorted positions of the visual tokens that continue past layer K (the sliding-window layers >= K
            count their window in these positions), or None: B of them spread evenly over the video
            (`kept_positions`).
        blocks: [L] the frame (block) of each position, -1 outside the video, or None: each run of consecutive
            visual positions is one (as Gemma 4 finds its frames, `<eoi>` / timestamp / `<boi>` between them;
            `vision_blocks`).
    """

    valid: torch.Tensor
    visual: torch.Tensor
    kept_visual: int
    query_rows: int = 0
    segments: torch.Tensor | None = None
    pre_dropped: int = 0
    kept: torch.Tensor | None = None
    blocks: torch.Tensor | None = None

    @property
    def real(self) -> int:
        return int(self.valid.sum())

    @property
    def real_kept(self) -> int:
        return self.real - self.visual.numel() + self.kept_visual

    @property
    def num_segments(self) -> int:
        return int(self.segments.max()) + 1 if self.segments is not None and self.segments.numel() else 1

    @property
    def kept_positions(self) -> torch.Tensor:
        """Sorted positions of the real tokens of layers >= K: every real text token and the kept visual tokens
        (`kept`, or, when not known, B visual tokens spread evenly over the video: the i-th of B at visual index
        floor(i N / B))."""
        n, b = self.visual.numel(), self.kept_visual
        kept = self.kept if self.kept is not None else self.visual[(torch.arange(b) * n) // max(n, 1)]
        text = self.valid.clone()
        text[self.visual] = False
        text[kept] = True
        return text.nonzero().flatten()

    @property
    def vision_blocks(self) -> torch.Tensor:
        """[L] long: the block of each position (-1 outside the video), `blocks` or else the runs of consecutive
        visual positions (what `Gemma4Model`'s `get_block_sequence_ids_for_mask` finds in `mm_token_type_ids`)."""
        if self.blocks is not None:
            return self.blocks
        blocks = torch.full((self.valid.numel(),), -1, dtype=torch.long)
        if self.visual.numel():
            starts = torch.ones(self.visual.numel(), dtype=torch.long)
            starts[1:] = (self.visual[1:] != self.visual[:-1] + 1).long()
            blocks[self.visual] = starts.cumsum(0) - 1
        return blocks


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
            kept = record.keep_positions[i].cpu()
            if record.pre_keep_positions is not None:
                # The decoder sees every position but the visual tokens the pre-stage dropped.
                survivors = record.pre_keep_positions[i].cpu()
                keep = torch.ones(record.seq_len, dtype=torch.bool)
                keep[visual] = False
                keep[survivors] = True
                index = keep.nonzero().flatten()
                pre_dropped = visual.numel() - survivors.numel()
                valid, visual = valid[index], torch.searchsorted(index, survivors)
                kept = torch.searchsorted(index, kept)
            samples.append(
                SampleLayout(
                    valid=valid,
                    visual=visual,
                    kept_visual=record.budget[i],
                    query_rows=record.num_query_rows[i] if record.num_query_rows is not None else 0,
                    segments=record.segment_ids[i].cpu() if record.segment_ids is not None else None,
                    pre_dropped=pre_dropped,
                    kept=kept,
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
        num_frames: int | None = None,
    ) -> PrefillLayout:
        """Unpadded samples: `prompt_len` text tokens, `num_visual` video tokens in `num_segments`
        near-equal segments, then the rest of the text; the `kept_visual` kept video tokens spread evenly over the
        video (what the sliding-window layers >= K see; `SampleLayout.kept_positions`). `num_frames`: the video's
        frames, near-equal consecutive blocks (`SampleLayout.blocks`; None: the video is one block)."""
        if not 0 <= prompt_len <= seq_len - num_visual:
            raise ConfigError(f"a video of {num_visual} tokens after {prompt_len} prompt tokens exceeds L={seq_len}.")
        visual = torch.arange(prompt_len, prompt_len + num_visual)
        segments = (torch.arange(num_visual) * max(1, num_segments)) // max(1, num_visual)
        blocks = None
        if num_frames is not None:
            if not 1 <= num_frames <= max(1, num_visual):
                raise ConfigError(f"num_frames={num_frames} must be in [1, {max(1, num_visual)}] (the video tokens).")
            blocks = torch.full((seq_len,), -1, dtype=torch.long)
            blocks[visual] = (torch.arange(num_visual) * num_frames) // max(1, num_visual)
        sample = SampleLayout(
            valid=torch.ones(seq_len, dtype=torch.bool),
            visual=visual,
            kept_visual=kept_visual,
            query_rows=query_rows,
            segments=segments,
            blocks=blocks,
        )
        return cls(samples=(sample,) * batch, input_len=seq_len)
