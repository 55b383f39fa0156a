"""Hand-written reference of a pruned forward, independent of the engine.

Layers 0..K-1 run at full length, hidden states and position embeddings are gathered by the keep
index, layers K..end run on what is left. It reuses the model's own embedding and vision path (by
capturing the decoder's inputs in an unpruned call) but none of sharp-prune's code.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn


def decoder_inputs(model: nn.Module, decoder: nn.Module, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs_embeds and RoPE position ids the decoder receives in an unpruned forward of `inputs`."""
    embeds, positions, _ = decoder_inputs_and_deepstack(model, decoder, inputs)
    return embeds, positions


def decoder_inputs_and_deepstack(
    model: nn.Module, decoder: nn.Module, inputs: dict
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """`decoder_inputs`, plus DeepStack's additions (Qwen3-VL): per level j, the [b, L, D] tensor the decoder adds
    to the hidden states after layer j (zeros outside the visual positions); [] for other models."""
    captured: dict = {}

    def grab(module, args, kwargs):
        captured.update(kwargs)
        if args:
            captured.setdefault("input_ids", args[0])

    hook = decoder.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        hook.remove()
    embeds = captured.get("inputs_embeds")
    if embeds is None:
        embeds = decoder.embed_tokens(captured["input_ids"])
    positions = captured.get("position_ids")
    if positions is None:
        positions = torch.arange(embeds.shape[1])[None]
    if positions.ndim == 3 and positions.shape[0] == 4:  # Qwen-VL: text row + 3-D rows
        positions = positions[1:]
    additions = []
    mask = captured.get("visual_pos_masks")
    for features in captured.get("deepstack_visual_embeds") or []:
        added = torch.zeros_like(embeds)
        added[mask] = features.to(embeds.dtype)
        additions.append(added)
    return embeds, positions, additions


@torch.no_grad()
def reference_logits(
    model: nn.Module,
    decoder: nn.Module,
    inputs: dict,
    keep_index: torch.Tensor,
    layer: int,
    pre_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of the kept positions for a batch of one unpadded sample (causal sdpa, no mask).

    `keep_index` holds the original positions that continue past `layer`; `pre_index`, when given, the
    original positions that enter layer 0 (a pre-LLM stage). Both keep original RoPE positions. A decoder whose
    layers differ in kind, or take per-layer inputs (Gemma 4), runs through `_gemma4_reference`.
    """
    if "per_layer_input" in inspect.signature(decoder.layers[0].forward).parameters:
        return _gemma4_reference(model, decoder, inputs, keep_index.view(-1), layer)
    embeds, positions, deepstack = decoder_inputs_and_deepstack(model, decoder, inputs)
    cos, sin = decoder.rotary_emb(embeds, positions)
    entering = pre_index.view(-1) if pre_index is not None else torch.arange(embeds.shape[1])
    hidden = embeds[:, entering]
    for j, block in enumerate(decoder.layers[:layer]):
        hidden = block(hidden, attention_mask=None, position_embeddings=(cos[:, entering], sin[:, entering]))
        if j < len(deepstack):
            hidden = hidden + deepstack[j][:, entering]
    keep = keep_index.view(-1)
    hidden = hidden[:, torch.searchsorted(entering, keep)]
    kept_embeddings = (cos[:, keep], sin[:, keep])
    for j, block in enumerate(decoder.layers[layer:], start=layer):
        hidden = block(hidden, attention_mask=None, position_embeddings=kept_embeddings)
        if j < len(deepstack):
            hidden = hidden + deepstack[j][:, keep]
    return model.lm_head(decoder.norm(hidden))


def _vision_blocks(inputs: dict, length: int) -> torch.Tensor | None:
    """[L] id of the run of consecutive image/video tokens each position is in (-1 for text), from the processor's
    `mm_token_type_ids` (Gemma 4's sliding layers attend both ways inside one run); None without them."""
    types = inputs.get("mm_token_type_ids")
    if types is None:
        return None
    types = torch.nn.functional.pad(types[0], (0, length - types.shape[1]))
    vision = types > 0
    starts = vision & ~torch.cat([torch.tensor([False]), vision[:-1]])
    return torch.where(vision, torch.cumsum(starts.long(), 0) - 1, -1)


def _gemma4_reference(
    model: nn.Module, decoder: nn.Module, inputs: dict, keep: torch.Tensor, layer: int
) -> torch.Tensor:
    """Gemma 4: RoPE per layer kind; full layers causal, sliding layers causal inside the window (in original
    positions) or both ways inside one frame; per-layer inputs projected from the decoder's input embeddings and
    token part; KV-sharing layers read their source's keys (`shared_kv_states`); layers >= `layer` see kept rows."""
    captured: dict = {}
    hook = decoder.register_forward_pre_hook(lambda m, a, kw: captured.update(kw), with_kwargs=True)
    try:
        model(**inputs, use_cache=False)
    finally:
        hook.remove()
    config = decoder.config
    embeds = captured.get("inputs_embeds")
    if embeds is None:
        embeds = decoder.embed_tokens(inputs["input_ids"])
    length = embeds.shape[1]
    positions = torch.arange(length)[None]
    rope = {kind: decoder.rotary_emb(embeds, positions, kind) for kind in set(config.layer_types)}
    tokens = captured.get("per_layer_inputs")
    if tokens is None:
        tokens = decoder.get_per_layer_inputs(inputs["input_ids"])
    per_layer = decoder.project_per_layer_inputs(embeds, tokens)
    blocks = _vision_blocks(inputs, length) if config.use_bidirectional_attention == "vision" else None
    shared: dict = {}
    hidden, current = embeds, torch.arange(length)
    for index, block in enumerate(decoder.layers):
        if index == layer:
            current = keep
            hidden = hidden[:, current]
        kind = config.layer_types[index]
        distance = current[:, None] - current[None, :]
        allowed = distance >= 0
        if kind == "sliding_attention":
            if blocks is not None:
                rows = blocks[current]
                allowed = allowed | ((rows[:, None] == rows[None, :]) & (rows[:, None] >= 0))
            allowed = allowed & (distance < config.sliding_window)  # kv > q - W; a frame reaches forward
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
        cos, sin = rope[kind]
        hidden = block(
            hidden,
            per_layer[:, current, index],
            shared_kv_states=shared,
            attention_mask=mask.to(hidden.dtype),
            position_embeddings=(cos[:, current], sin[:, current]),
        )
    logits = model.lm_head(decoder.norm(hidden))
    cap = getattr(config, "final_logit_softcapping", None)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def _causal(positions: torch.Tensor, window: int | None) -> torch.Tensor:
    """[1, 1, n, n] additive float mask (what eager and sdpa both read) over tokens at sorted `positions`: causal,
    and inside the last `window` positions when given (counted in positions, not in tokens)."""
    n = positions.numel()
    distance = positions[:, None] - positions[None, :]
    allowed = distance >= 0
    if window is not None:
        allowed &= distance < window
    return torch.zeros(n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]


@torch.no_grad()
def reference_logits_layered(
    model: nn.Module,
    input_ids: torch.Tensor,
    keep_index: torch.Tensor,
    layer: int,
    last_only: bool = False,
    **layer_kwargs: object,
) -> torch.Tensor:
    """The same for a model whose layers differ in kind (Gemma 3: `config.layer_types`, sliding windows): in layers
    >= `layer`, a kept token sees the kept tokens of the last `sliding_window` original positions. A linear-attention
    layer (Qwen3.5) gets no mask (the sample is unpadded) and runs on whatever sequence reaches it: the kept one
    from `layer` on, its recurrent state built from the kept tokens only.
    Gemma 4: each layer gets its per-layer input at the rows it runs on, and `shared_kv_states={}` lets its
    KV-sharing layers read their source layer's keys (the kept ones from `layer` on).
    `last_only`: the last position's logits only; `layer_kwargs`: more arguments every decoder layer takes."""
    decoder = model.model
    config = decoder.config
    embeds = decoder.embed_tokens(input_ids)
    positions = torch.arange(embeds.shape[1])[None]
    per_kind = len(inspect.signature(decoder.rotary_emb.forward).parameters) > 2  # Gemma: RoPE per layer type
    rope = {
        kind: decoder.rotary_emb(embeds, positions, kind) if per_kind else decoder.rotary_emb(embeds, positions)
        for kind in set(config.layer_types)
    }
    per_layer = None  # Gemma 4's per-layer inputs: [1, L, layers, d], layer i reads [:, kept rows, i]
    if getattr(config, "hidden_size_per_layer_input", 0):
        per_layer = decoder.project_per_layer_inputs(embeds, decoder.get_per_layer_inputs(input_ids))
    hidden, current = embeds, torch.arange(embeds.shape[1])
    for index, block in enumerate(decoder.layers):
        if index == layer:
            current = keep_index.view(-1)
            hidden = hidden[:, current]
        kind = config.layer_types[index]
        window = config.sliding_window if kind == "sliding_attention" else None
        cos, sin = rope[kind]
        if per_layer is not None:
            layer_kwargs["per_layer_input"] = per_layer[:, current, index]
        hidden = block(
            hidden,
            attention_mask=None if kind == "linear_attention" else _causal(current, window),
            position_embeddings=(cos[:, current], sin[:, current]),
            **layer_kwargs,
        )
    if last_only:
        hidden = hidden[:, -1:]
    return model.lm_head(decoder.norm(hidden))
