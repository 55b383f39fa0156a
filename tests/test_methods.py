"""Every method and every ShaRP switch combination on every adapter: forward, generate, batches."""

from __future__ import annotations

import itertools

import pytest
import torch
from reference import reference_logits

import sharp_prune as sp
from sharp_prune.steps.score import remove_rope
from sharp_prune.testing import TINY_FAMILIES, tiny_causal_lm, tiny_inputs, tiny_model

BASELINES = [dict(method=m) for m in ("none", "random", "uniform", "fastv", "feather", "divprune")]
SHARP = [
    dict(method="sharp", segm=segm, posc=posc, regd=regd)
    for segm, posc, regd in itertools.product([True, False], repeat=3)
]
ALL = BASELINES + SHARP


def _name(cfg: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in cfg.items())


@pytest.fixture(scope="module")
def models():
    return {family: tiny_model(family) for family in TINY_FAMILIES}


@pytest.mark.parametrize("cfg", ALL, ids=_name)
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_forward_generate_batch_with_padding(models, family, cfg):
    model = models[family]
    inputs = tiny_inputs(model, [3, 6], [5, 2], padding_side="left")
    with sp.apply(model, sp.PruneConfig(retention=0.3, layer=2, **cfg)) as handle, torch.no_grad():
        logits = model(**inputs).logits
        first = handle.last
        tokens = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        second = handle.last
    expected = 64 if cfg["method"] == "none" else round(0.3 * 64)
    assert first.budget == [expected, expected]
    assert logits.shape[1] == first.kept_len == inputs["input_ids"].shape[1] - 64 + expected
    assert torch.isfinite(logits).all()
    assert tokens.shape == (2, inputs["input_ids"].shape[1] + 3)
    # determinism: the generate prefill saw the same input and made the same plan
    for a, b in zip(first.keep_positions, second.keep_positions, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cfg", [c for c in ALL if c["method"] != "sharp" or not c["segm"]], ids=_name)
def test_identity_at_full_retention(models, cfg):
    model = models["qwen2_vl"]
    inputs = tiny_inputs(model, [3, 6], [5, 2], padding_side="right")
    with torch.no_grad():
        ref = model(**inputs).logits
        with sp.apply(model, sp.PruneConfig(retention=1.0, **cfg)):
            out = model(**inputs).logits
    assert torch.equal(out, ref)


def test_segm_changes_the_forward_by_design(models):
    model = models["llava_onevision"]
    inputs = tiny_inputs(model, [3], [4])
    with torch.no_grad():
        ref = model(**inputs).logits
        with sp.apply(model, method="sharp", retention=1.0, segm=True):
            out = model(**inputs).logits
    assert out.shape == ref.shape and not torch.allclose(out, ref)


@pytest.mark.parametrize(
    "cfg", [dict(method="feather"), dict(method="divprune"), dict(method="sharp", segm=False, regd=False)], ids=_name
)
def test_scoring_methods_match_the_reference(models, cfg):
    """Without SegM and RegD's state changes, a pruned forward is exactly a hand-pruned one."""
    model = models["qwen2_5_vl"]
    inputs = tiny_inputs(model, [4], [5])
    with sp.apply(model, sp.PruneConfig(retention=0.25, layer=2, **cfg)) as handle, torch.no_grad():
        pruned = model(**inputs).logits
    record = handle.last
    visual, kept = set(record.visual_positions[0].tolist()), set(record.keep_positions[0].tolist())
    keep = torch.tensor([p for p in range(inputs["input_ids"].shape[1]) if p not in visual or p in kept])
    expected = reference_logits(model, handle.adapter.decoder(model), inputs, keep, 2)
    torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=1e-5)


def test_feather_scores_without_rope():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, 10, 8, generator=gen), torch.randn(1, 2, 10, 8, generator=gen)
    angles = torch.rand(1, 10, 4, generator=gen) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

    def rotate(x):
        rotated = torch.cat((-x[..., 4:], x[..., :4]), dim=-1)
        return x * cos[:, None] + rotated * sin[:, None]

    q_back, k_back = remove_rope(rotate(q), rotate(k), (cos, sin))
    torch.testing.assert_close(q_back, q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_back, k, atol=1e-5, rtol=1e-5)


def test_feather_keeps_a_uniform_share():
    model = tiny_causal_lm()
    frame_map = sp.frame_map_for_span(100, start=10, num_frames=8, tokens_per_frame=10)
    with (
        sp.apply(model, method="feather", retention=0.4, feather_uniform=0.5) as handle,
        handle.visual_frames(frame_map),
    ):
        model(input_ids=torch.randint(3, 200, (1, 100)))
    keep = handle.last.keep_positions[0]
    assert keep.numel() == 32
    per_frame = torch.bincount((keep - 10) // 10, minlength=8)
    assert bool((per_frame >= 2).all())  # the uniform half covers every frame


def test_same_seed_same_plan_and_other_seed_other_plan():
    model = tiny_causal_lm()
    frame_map = sp.frame_map_for_span(200, start=5, num_frames=10, tokens_per_frame=18)
    ids = torch.randint(3, 200, (1, 200), generator=torch.Generator().manual_seed(4))
    plans = []
    for seed in (0, 0, 1):
        with sp.apply(model, method="random", retention=0.3, seed=seed) as handle, handle.visual_frames(frame_map):
            model(input_ids=ids)
        plans.append(handle.last.keep_positions[0])
    assert torch.equal(plans[0], plans[1]) and not torch.equal(plans[0], plans[2])


@pytest.mark.parametrize("cfg", ALL, ids=_name)
def test_generic_adapter_batch_forward_and_generate(cfg):
    model = tiny_causal_lm(seed=2)
    width, video = 60, 40
    ids = torch.randint(3, 200, (2, width), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, width, dtype=torch.long)
    mask[1, :6] = 0  # left padding on sample 1
    frame_map = torch.full((2, width), -1)
    frame_map[0, 8 : 8 + video] = torch.arange(5).repeat_interleave(8)
    frame_map[1, 12 : 12 + video] = torch.arange(5).repeat_interleave(8)
    handle = sp.apply(model, sp.PruneConfig(retention=0.25, **cfg))
    with handle, handle.visual_frames(frame_map), torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        tokens = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    expected = 40 if cfg["method"] == "none" else 10
    assert handle.last.budget == [expected, expected]
    assert torch.isfinite(logits).all() and tokens.shape == (2, width + 3)
