"""Qwen3.5 (and Qwen3.5-MoE): Qwen3-VL's video layout on a hybrid stack of linear- and full-attention layers.

The family battery runs Qwen3.5 through `TINY_FAMILIES` (its tiny stack alternates linear and full layers, so the
battery's K = 2 prunes at a linear layer and scores at the full layer 1); this file holds the rest: K at a
full-attention layer, the K that has no full-attention layer below it, the MoE class, the vision FLOPs.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_logits

import sharp_prune as sp
from sharp_prune.measure.flops import measure_prefill_flops, vision_flops
from sharp_prune.models import resolve_adapter
from sharp_prune.models.qwen3_5 import QWEN3_5_MOE, tiny_qwen3_5
from sharp_prune.models.qwen3_vl import tiny_inputs_qwen3_vl
from sharp_prune.testing import TinyVideo, tiny_inputs, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen3_5")


def _keep_index(record, seq_len: int) -> torch.Tensor:
    visual = set(record.visual_positions[0].tolist())
    kept = set(record.keep_positions[0].tolist())
    return torch.tensor([p for p in range(seq_len) if p not in visual or p in kept])


@pytest.mark.parametrize(("layer", "scored_at"), [(2, 1), (3, 1)])
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


def test_a_k_with_no_full_attention_layer_below_is_refused_before_anything_is_attached(model):
    with pytest.raises(sp.ConfigError, match="K >= 2"):
        sp.apply(model, method="fastv", retention=0.25, layer=1)
    assert not any(layer._forward_pre_hooks for layer in model.model.language_model.layers)


def test_moe_variant_runs_the_same_engine_path():
    moe = tiny_qwen3_5(moe=True)(4, "sdpa", torch.float32, 0)
    assert resolve_adapter(moe) is QWEN3_5_MOE
    inputs = tiny_inputs_qwen3_vl(moe, [5], [6], TinyVideo(), "left", 0)
    with torch.no_grad():
        unpruned = moe(**inputs).logits
        with sp.apply(moe, method="fastv", retention=1.0, layer=2):
            assert torch.equal(moe(**inputs).logits, unpruned)
        with sp.apply(moe, method="sharp", retention=0.25, layer=2) as handle:
            moe(**inputs)
            assert handle.last.budget == [16]
        with sp.apply(moe, method="fastv", retention=0.25, layer=2) as handle:
            pruned = moe(**inputs).logits
    keep = _keep_index(handle.last, inputs["input_ids"].shape[1])
    expected = reference_logits(moe, handle.adapter.decoder(moe), inputs, keep, 2)
    torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=1e-5)


def test_vision_estimate_matches_counter(model):
    inputs = tiny_inputs(model, [3], [4], video=TinyVideo(frames=4, grid=4))
    measured = measure_prefill_flops(model, inputs)
    assert measured.total - measured.text == vision_flops(model, video_grid_thw=(4, 8, 8))
