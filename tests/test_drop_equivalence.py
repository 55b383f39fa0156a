"""A pruned forward equals the hand-written reference; the cache holds what it should; decoding is right."""

from __future__ import annotations

import pytest
import torch
from reference import reference_logits
from transformers import DynamicCache

import sharp_prune as sp
from sharp_prune.testing import TINY_FAMILIES, tiny_causal_lm, tiny_inputs, tiny_model

LAYER = 2


def _keep_index(record, seq_len: int) -> torch.Tensor:
    """Full kept index (text + kept visual) rebuilt from the record alone."""
    visual = set(record.visual_positions[0].tolist())
    kept = set(record.keep_positions[0].tolist())
    return torch.tensor([p for p in range(seq_len) if p not in visual or p in kept])


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("method", ["fastv", "uniform", "random"])
def test_vlm_pruned_forward_matches_reference(family, method):
    model = tiny_model(family)
    inputs = tiny_inputs(model, prefix_lens=[5], suffix_lens=[6])
    with sp.apply(model, method=method, retention=0.25, layer=LAYER) as handle, torch.no_grad():
        pruned = model(**inputs).logits
    record = handle.last
    seq_len = inputs["input_ids"].shape[1]
    assert record.budget == [16] and record.num_visual == [64]
    keep = _keep_index(record, seq_len)
    assert pruned.shape[1] == keep.numel() == record.kept_len
    expected = reference_logits(model, handle.adapter.decoder(model), inputs, keep, LAYER)
    torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=1e-5)


def test_generic_pruned_forward_matches_reference():
    model = tiny_causal_lm(num_layers=5)
    input_ids = torch.randint(3, 200, (1, 90), generator=torch.Generator().manual_seed(1))
    frame_map = sp.frame_map_for_span(90, start=10, num_frames=6, tokens_per_frame=12)
    handle = sp.apply(model, method="fastv", retention=0.3, layer=3)
    with handle, handle.visual_frames(frame_map), torch.no_grad():
        pruned = model(input_ids=input_ids).logits
    keep = _keep_index(handle.last, 90)
    expected = reference_logits(model, model.model, {"input_ids": input_ids}, keep, 3)
    torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_cache_lengths_and_decoding_match_reference(family):
    model = tiny_model(family)
    inputs = tiny_inputs(model, prefix_lens=[4], suffix_lens=[5])
    seq_len = inputs["input_ids"].shape[1]
    steps = 4
    with sp.apply(model, method="fastv", retention=0.2, layer=LAYER) as handle, torch.no_grad():
        # Cache: layers < K hold the whole prefill, layers >= K only text + kept.
        cache = DynamicCache(config=model.config.text_config)
        model(**inputs, past_key_values=cache, use_cache=True)
        kept_len = handle.last.kept_len
        # (a linear-attention layer, Qwen3.5's, holds a recurrent state instead: no length to check; a sliding
        # layer, Gemma 4's, holds the last window - 1 of its tokens; a KV-sharing layer holds none)
        layers = {i: layer for i, layer in enumerate(cache.layers) if getattr(layer, "keys", None) is not None}

        def held(layer, tokens: int) -> int:
            return min(tokens, layer.sliding_window - 1) if getattr(layer, "is_sliding", False) else tokens

        for i, layer in layers.items():
            assert layer.keys.shape[2] == held(layer, seq_len if i < LAYER else kept_len), i
        assert any(i >= LAYER and held(layer, seq_len) > held(layer, kept_len) for i, layer in layers.items())
        assert kept_len == seq_len - 64 + handle.last.budget[0]
        generated = model.generate(**inputs, max_new_tokens=steps, do_sample=False)
        record = handle.last
    keep = _keep_index(record, seq_len)
    # Reference decoding: recompute from scratch, layers >= K seeing kept prompt tokens + every new token.
    tokens = inputs["input_ids"]
    decoder = handle.adapter.decoder(model)
    for _ in range(steps):
        extended = dict(inputs, input_ids=tokens, attention_mask=torch.ones_like(tokens))
        if "mm_token_type_ids" in inputs:
            pad = tokens.shape[1] - inputs["mm_token_type_ids"].shape[1]
            extended["mm_token_type_ids"] = torch.nn.functional.pad(inputs["mm_token_type_ids"], (0, pad))
        full_keep = torch.cat([keep, torch.arange(seq_len, tokens.shape[1])])
        logits = reference_logits(model, decoder, extended, full_keep, LAYER)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, tokens)
    # The cache of layers >= K grows from kept_len, and never held the dropped tokens.
    assert kept_len < seq_len
