"""`remove()` restores the model exactly; two models in one process keep their own configs."""

from __future__ import annotations

import torch

import sharp_prune as sp
from sharp_prune.testing import tiny_inputs, tiny_model


def _state(model):
    text_config = model.config.text_config
    return (
        text_config._attn_implementation,
        sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()),
    )


def test_remove_restores_outputs_and_state(family):
    model = tiny_model(family)
    inputs = tiny_inputs(model, [4], [3])
    with torch.no_grad():
        ref = model(**inputs).logits  # first call: transformers adds its own output-capture hooks
    before = _state(model)
    with torch.no_grad():
        handle = sp.apply(model, method="fastv", retention=0.2, layer=1)
        pruned = model(**inputs).logits
        assert pruned.shape[1] < ref.shape[1]
        assert _state(model) != before
        handle.remove()
        handle.remove()  # twice is harmless
        after = model(**inputs).logits
    assert _state(model) == before
    assert torch.equal(after, ref)
    assert not handle.active


def test_two_models_keep_their_own_configs():
    a = tiny_model("llava_onevision", seed=0)
    b = tiny_model("qwen2_vl", seed=1)
    inputs_a = tiny_inputs(a, [3], [4])
    inputs_b = tiny_inputs(b, [2], [5])
    handle_a = sp.apply(a, method="fastv", retention=0.25, layer=2)
    handle_b = sp.apply(b, method="uniform", retention=0.5, layer=1)
    with torch.no_grad():
        for _ in range(2):  # alternate
            a(**inputs_a)
            b(**inputs_b)
    assert handle_a.last.budget == [16] and handle_a.last.method == "fastv"
    assert handle_b.last.budget == [32] and handle_b.last.method == "uniform"
    handle_a.remove()
    with torch.no_grad():
        b(**inputs_b)
    assert handle_b.last.budget == [32]
    handle_b.remove()


def test_apply_twice_is_refused_and_reapply_after_remove_works():
    model = tiny_model("qwen2_5_vl")
    handle = sp.apply(model, method="random", retention=0.5)
    try:
        sp.apply(model, method="fastv")
        raise AssertionError("second apply should fail")
    except sp.AlreadyAppliedError as err:
        assert "remove" in str(err)
    handle.remove()
    second = sp.apply(model, method="fastv", retention=0.5)
    second.remove()
