"""The pre-LLM temporal-merge stage, alone and composed with every in-LLM method."""

from __future__ import annotations

import pytest
import torch
from reference import reference_logits

import sharp_prune as sp
from sharp_prune.steps.pre_stage import temporal_merge_keep
from sharp_prune.testing import sample_of, tiny_inputs, tiny_model

METHODS = ["none", "random", "uniform", "fastv", "feather", "divprune", "sharp"]


def test_temporal_merge_drops_tokens_equal_to_the_previous_frame():
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(3, 4, 16, generator=gen)
    frames[1, :2] = frames[0, :2]  # two static patches
    frames[2] = frames[1]  # a frozen frame
    keep = temporal_merge_keep(frames.reshape(12, 16), torch.arange(3).repeat_interleave(4), threshold=0.9)
    assert keep.view(3, 4).tolist() == [[True] * 4, [False, False, True, True], [False] * 4]
    uneven = torch.tensor([0, 0, 1, 1, 1])
    assert temporal_merge_keep(torch.ones(5, 4), uneven, 0.9).all()  # no same-size previous frame


def _static_video(family: str, batch: int = 1):
    """Frames 1..3 repeat frame 0 in every sample: the pre-stage has duplicates to drop."""
    model = tiny_model(family)
    inputs = tiny_inputs(model, [3] * batch, [4] * batch)
    if family == "llava_onevision":
        inputs["pixel_values_videos"][:, 1:] = inputs["pixel_values_videos"][:, :1]
    return model, inputs


@pytest.mark.parametrize("method", METHODS)
def test_pre_stage_composes_with_every_method(method):
    model, inputs = _static_video("llava_onevision", batch=2)
    cfg = sp.PruneConfig(method=method, retention=0.5, pre="temporal_merge", pre_threshold=0.99)
    with sp.apply(model, cfg) as handle, torch.no_grad():
        logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    record = handle.last
    assert record.num_visual == [64, 64]
    assert record.pre_kept == [16, 16]  # only the first frame survives the pre-stage
    expected = 16 if method == "none" else 8
    assert record.budget == [expected, expected]
    assert set(record.keep_positions[0].tolist()) <= set(record.pre_keep_positions[0].tolist())
    assert logits.shape[1] == record.kept_len and tokens.shape[1] == inputs["input_ids"].shape[1] + 3


def test_pre_stage_forward_and_decoding_match_the_reference():
    model, inputs = _static_video("llava_onevision")
    seq_len = inputs["input_ids"].shape[1]
    cfg = sp.PruneConfig(method="fastv", retention=0.5, layer=2, pre="temporal_merge", pre_threshold=0.99)
    with sp.apply(model, cfg) as handle, torch.no_grad():
        pruned = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    record = handle.last
    visual = set(record.visual_positions[0].tolist())
    entered = set(record.pre_keep_positions[0].tolist())
    kept = set(record.keep_positions[0].tolist())
    pre_index = torch.tensor([p for p in range(seq_len) if p not in visual or p in entered])
    keep = torch.tensor([p for p in range(seq_len) if p not in visual or p in kept])
    decoder = handle.adapter.decoder(model)
    torch.testing.assert_close(
        pruned, reference_logits(model, decoder, inputs, keep, 2, pre_index), atol=1e-5, rtol=1e-5
    )
    tokens = inputs["input_ids"]
    for _ in range(3):
        new = torch.arange(seq_len, tokens.shape[1])
        step = dict(inputs, input_ids=tokens, attention_mask=torch.ones_like(tokens))
        logits = reference_logits(model, decoder, step, torch.cat([keep, new]), 2, torch.cat([pre_index, new]))
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, tokens)


def test_pre_stage_batch_equals_single_runs_and_refuses_uneven_batches():
    model, inputs = _static_video("llava_onevision", batch=2)
    cfg = sp.PruneConfig(method="fastv", retention=0.5, pre="temporal_merge", pre_threshold=0.99)
    with sp.apply(model, cfg) as handle, torch.no_grad():
        model(**inputs)
        batch_record = handle.last
        for i in range(2):
            model(**sample_of(inputs, i))
            assert torch.equal(batch_record.keep_positions[i], handle.last.keep_positions[0])
        uneven = dict(inputs, pixel_values_videos=inputs["pixel_values_videos"].clone())
        uneven["pixel_values_videos"][1, 1:] = torch.randn_like(uneven["pixel_values_videos"][1, 1:])
        with pytest.raises(sp.InputError, match="same number"):
            model(**uneven)
