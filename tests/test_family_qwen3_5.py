"""Qwen3.5 (and Qwen3.5-MoE): Qwen3-VL's video layout on a hybrid stack of linear- and full-attention layers.

The family battery runs Qwen3.5 through `TINY_FAMILIES` (its tiny stack alternates full and linear layers, so the
battery's K = 1 prunes at a linear layer, K = 2 at a full one reading scores at layer 0); this file holds the rest:
both kinds of layer K against the reference, a stack that starts with linear layers as the checkpoints do (and the
K it refuses), the MoE class, the vision FLOPs.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_logits

import sharp_prune as sp
from sharp_prune.models import tiny
from sharp_prune.models.qwen3_5 import tiny_qwen3_5_config
from sharp_prune.testing import tiny_inputs, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen3_5")


def _keep_index(record, seq_len: int) -> torch.Tensor:
    visual = set(record.visual_positions[0].tolist())
    kept = set(record.keep_positions[0].tolist())
    return torch.tensor([p for p in range(seq_len) if p not in visual or p in kept])


@pytest.mark.parametrize(("layer", "scored_at"), [(1, 0), (2, 0), (3, 2)])
def test_pruned_forward_matches_the_kept_sequence_at_a_linear_and_a_full_layer_k(model, layer, scored_at):
    inputs = tiny_inputs(model, [5], [6])
    with sp.apply(model, method="fastv", retention=0.25, layer=layer) as handle, torch.no_grad():
        pruned = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert handle.score_layer == scored_at
    keep = _keep_index(handle.last, inputs["input_ids"].shape[1])
    expected = reference_logits(model, handle.adapter.decoder(model), inputs, keep, layer)
    torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=1e-5)
    assert int(tokens[0, inputs["input_ids"].shape[1]]) == int(pruned[0, -1].argmax())


@pytest.fixture(scope="module")
def linear_first():
    """The checkpoints' order: three linear-attention layers, then a full one (then two more linear ones)."""
    import transformers

    config = tiny_qwen3_5_config(6)
    config.text_config.layer_types = ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 2
    torch.manual_seed(0)
    return tiny.finish(transformers.Qwen3_5ForConditionalGeneration(config), "sdpa", torch.float32)


def test_a_k_with_no_full_attention_layer_below_is_refused_before_anything_is_attached(linear_first):
    for layer in (1, 2, 3):
        with pytest.raises(sp.ConfigError, match="K >= 4"):
            sp.apply(linear_first, method="random", retention=0.25, layer=layer)
    assert not any(layer._forward_pre_hooks for layer in linear_first.model.language_model.layers)


def test_a_stack_that_starts_linear_prunes_after_its_first_full_layer(linear_first):
    model = linear_first
    inputs = tiny_inputs(model, [5], [6])
    with torch.no_grad(), sp.apply(model, method="fastv", retention=0.25, layer=4) as handle:
        pruned = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert handle.score_layer == 3 and handle.last.budget == [16]
    keep = _keep_index(handle.last, inputs["input_ids"].shape[1])
    expected = reference_logits(model, handle.adapter.decoder(model), inputs, keep, 4)
    torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=1e-5)
    assert int(tokens[0, inputs["input_ids"].shape[1]]) == int(pruned[0, -1].argmax())
