"""Identity: `none`, and any method at retention 1.0, change nothing."""

from __future__ import annotations

import pytest
import torch

import sharp_prune as sp
from sharp_prune.testing import tiny_inputs

METHODS = ["none", "random", "uniform", "fastv"]


def _run(model, inputs):
    with torch.no_grad():
        logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    return logits, tokens


@pytest.mark.parametrize("method", METHODS)
def test_vlm_identity(vlm, method):
    inputs = tiny_inputs(vlm, prefix_lens=[3, 6], suffix_lens=[5, 2], padding_side="left")
    ref_logits, ref_tokens = _run(vlm, inputs)
    retention = 0.3 if method == "none" else 1.0
    with sp.apply(vlm, sp.PruneConfig(method=method, retention=retention, layer=2)) as handle:
        logits, tokens = _run(vlm, inputs)
    assert torch.equal(logits, ref_logits)
    assert torch.equal(tokens, ref_tokens)
    record = handle.last
    assert record.num_visual == [64, 64]
    assert record.budget == [64, 64]
    assert [p.numel() for p in record.keep_positions] == [64, 64]


@pytest.mark.parametrize("method", METHODS)
def test_smollm2_identity_generic_adapter(smollm2, method):
    model, tokenizer = smollm2
    text = (
        "Frames: " + " ".join(["a red car drives past a tall green tree"] * 12) + " Question: what colour is the car?"
    )
    inputs = tokenizer(text, return_tensors="pt")
    seq_len = inputs["input_ids"].shape[1]
    frame_map = sp.frame_map_for_span(seq_len, start=3, num_frames=8, tokens_per_frame=10)
    ref_logits, ref_tokens = _run(model, inputs)
    retention = 0.2 if method == "none" else 1.0
    handle = sp.apply(model, sp.PruneConfig(method=method, retention=retention, layer=3))
    try:
        with handle.visual_frames(frame_map):
            logits, tokens = _run(model, inputs)
    finally:
        handle.remove()
    assert handle.adapter.name == "generic"
    assert handle.last.num_visual == [80]
    assert torch.equal(logits, ref_logits)
    assert torch.equal(tokens, ref_tokens)


def test_no_visual_tokens_pass_through(vlm):
    inputs = tiny_inputs(vlm, prefix_lens=[4], suffix_lens=[3])
    text_only = {"input_ids": inputs["input_ids"][:, :4], "attention_mask": inputs["attention_mask"][:, :4]}
    with torch.no_grad():
        ref = vlm(**text_only).logits
    with sp.apply(vlm, method="fastv", retention=0.2) as handle, torch.no_grad():
        out = vlm(**text_only).logits
    assert torch.equal(out, ref)
    assert handle.last.num_visual == [0]
    assert handle.last.keep_positions[0].numel() == 0
