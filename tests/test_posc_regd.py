"""PosC and RegD: pure functions, and their behaviour inside a real forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sharp_prune as sp
from sharp_prune.methods.diversity import farthest_point_sampling
from sharp_prune.methods.sharp.posc import calibrate, frame_local_index, tile_blank_frame
from sharp_prune.methods.sharp.regd import dedup_greedy, segment_registers
from sharp_prune.testing import tiny_causal_lm, tiny_inputs, tiny_model


def test_calibration_of_pure_prior_is_flat_or_constant():
    prior = torch.rand(3, 50) + 0.01
    torch.testing.assert_close(calibrate(prior, prior, "subtract", 1.0), torch.zeros(3, 50))
    divided = calibrate(prior, prior, "divide")
    torch.testing.assert_close(divided, torch.ones(3, 50), atol=1e-3, rtol=1e-3)
    assert float(divided.std()) < 1e-3
    with pytest.raises(ValueError):
        calibrate(prior, prior, "multiply")


def test_blank_frame_is_tiled_frame_by_frame():
    frame_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 2]])
    assert frame_local_index(frame_ids).tolist() == [[0, 1, 2, 0, 1, 2, 0, 1, 2]]
    blank = torch.arange(3.0)[:, None].expand(3, 4)
    tiled = tile_blank_frame(blank, frame_ids)
    assert tiled[0, :, 0].tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2]


def _count_layer_calls(model, decoder_layers):
    calls = []
    hooks = [
        layer.register_forward_pre_hook(lambda m, a, i=i: calls.append(i)) for i, layer in enumerate(decoder_layers)
    ]
    return calls, hooks


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl"])
def test_blank_pass_runs_only_the_first_k_layers(family):
    model = tiny_model(family, num_layers=5)
    inputs = tiny_inputs(model, [3], [4])
    layers = model.model.language_model.layers
    calls, hooks = _count_layer_calls(model, layers)
    cfg = sp.PruneConfig(method="sharp", retention=0.25, layer=2, segm=False, regd=False, record_scores=True)
    with sp.apply(model, cfg) as handle, torch.no_grad():
        model(**inputs)
    for hook in hooks:
        hook.remove()
    # real forward: layers 0..4 once each; blank pass: layers 0 and 1 once more
    assert sorted(calls) == [0, 0, 1, 1, 2, 3, 4]
    record = handle.last
    # the prior is a real, different score; calibration subtracted it
    torch.testing.assert_close(record.scores[0], record.raw_scores[0] - record.prior[0])
    assert not torch.allclose(record.prior[0], record.raw_scores[0])


def test_cached_prior_is_reused_on_the_same_layout():
    model = tiny_model("llava_onevision", num_layers=4)
    first = tiny_inputs(model, [3], [4], seed=1)
    second = dict(first, pixel_values_videos=torch.randn_like(first["pixel_values_videos"]))  # other video
    layers = model.model.language_model.layers
    cfg = sp.PruneConfig(method="sharp", retention=0.25, segm=False, posc_prior="cached", record_scores=True)
    with sp.apply(model, cfg) as handle, torch.no_grad():
        model(**first)
        calls, hooks = _count_layer_calls(model, layers)
        model(**second)
        cached_prior = handle.last.prior[0]
        for hook in hooks:
            hook.remove()
    assert sorted(calls) == [0, 1, 2, 3]  # no blank pass the second time
    per_input = sp.PruneConfig(method="sharp", retention=0.25, segm=False, record_scores=True)
    with sp.apply(model, per_input) as handle, torch.no_grad():
        model(**second)
    # same text and layout, segm off: the prior does not depend on the video, so the cache is exact
    torch.testing.assert_close(cached_prior, handle.last.prior[0])


def test_generic_adapter_needs_a_blank_token_when_the_model_has_no_pad():
    model = tiny_causal_lm()
    model.config.pad_token_id = None
    frame_map = sp.frame_map_for_span(30, start=2, num_frames=4, tokens_per_frame=5)
    handle = sp.apply(model, method="sharp", retention=0.5)
    with pytest.raises(sp.InputError, match="posc_blank_token_id"), handle.visual_frames(frame_map):
        model(input_ids=torch.randint(3, 100, (1, 30)))
    handle.remove()
    handle = sp.apply(model, method="sharp", retention=0.5, posc_blank_token_id=5)
    with handle, handle.visual_frames(frame_map):
        model(input_ids=torch.randint(3, 100, (1, 30)))
    assert handle.last.budget == [10]


def test_dedup_greedy_skips_near_duplicates():
    base = F.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    unit = torch.cat([base, base[:2] + 1e-3])  # tokens 5, 6 duplicate tokens 0, 1
    unit = F.normalize(unit, dim=-1)
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.8])
    accepted, duplicate_of = dedup_greedy(scores, unit, count=4, delta=0.9)
    assert accepted.tolist() == [5, 6, 4, 3]
    assert duplicate_of.tolist() == [-1] * 7  # 0 and 1 were never visited: count reached first
    accepted, duplicate_of = dedup_greedy(scores, unit, count=7, delta=0.9)
    assert accepted.tolist() == [5, 6, 4, 3, 2]
    assert duplicate_of[1] == 6 and duplicate_of[0] == 5


def test_farthest_point_sampling_spreads_out():
    unit = F.normalize(torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [-1.0, 0.0]]), dim=-1)
    kept = torch.tensor([True, False, False, False])
    picks = farthest_point_sampling(unit, 2, kept=kept, candidates=~kept)
    assert picks.tolist() == [3, 2]


def test_registers_sit_in_their_segment_and_average_it():
    segments = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2])
    dropped = torch.tensor([True, False, True, True, True, True, False, False, False])
    hidden = torch.arange(9.0)[:, None].expand(9, 3)
    slots, states = segment_registers(segments, dropped, hidden, max_registers=5)
    assert slots.tolist() == [2, 4]  # middle dropped token of segments 0 and 1; segment 2 has none
    torch.testing.assert_close(states[:, 0], torch.tensor([(0 + 2 + 3) / 3, (4 + 5) / 2]))
    slots, _ = segment_registers(segments, dropped, hidden, max_registers=1)
    assert slots.tolist() == [2]  # the segment with most dropped tokens


def _hidden_entering(model, layer_index: int):
    captured = {}

    def grab(module, args, kwargs):
        captured["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    return captured, model.model.language_model.layers[layer_index].register_forward_pre_hook(grab, with_kwargs=True)


@pytest.mark.parametrize("merge", [True, False])
def test_regd_in_a_forward(merge):
    model = tiny_model("qwen2_vl", num_layers=4)
    inputs = tiny_inputs(model, [3], [4])
    delta = 0.5
    captured, hook = _hidden_entering(model, 2)  # registered first: sees layer 2's unsliced input
    kept_states = {}
    cfg = sp.PruneConfig(method="sharp", retention=0.5, layer=2, regd_delta=delta, regd_merge=merge, posc=False)
    with sp.apply(model, cfg) as handle, torch.no_grad():
        after = model.model.language_model.layers[2].register_forward_pre_hook(
            lambda m, a, k: kept_states.update(h=(a[0] if a else k["hidden_states"]).clone()), with_kwargs=True
        )
        model(**inputs)
        after.remove()
    hook.remove()
    record = handle.last
    keep = record.keep_positions[0]
    registers = record.is_register[0]
    segments = record.segment_ids[0]
    visual = record.visual_positions[0]
    assert keep.numel() == record.budget[0] == 32  # exact budget, registers included
    assert 1 <= int(registers.sum()) <= 32 // 8
    hidden = captured["hidden"][0]
    tokens = keep[~registers]
    unit = F.normalize(hidden[tokens], dim=-1)
    similarity = unit @ unit.T - 2 * torch.eye(len(tokens))
    assert float(similarity.max()) <= delta + 1e-6
    # each register sits at a dropped position inside its own segment, holding a mean of that segment
    local = torch.searchsorted(visual, keep[registers])
    for slot, position in zip(local.tolist(), keep[registers].tolist(), strict=True):
        assert position in visual.tolist()
        members = segments == segments[slot]
        assert bool(members[slot])
    # kept (non-register) slots carry their own state when merge is off
    index = [p for p in range(hidden.shape[0]) if p not in set(visual.tolist()) or p in set(keep.tolist())]
    sliced = kept_states["h"][0]
    slot_of = {p: i for i, p in enumerate(index)}
    own = torch.stack([hidden[p] for p in tokens.tolist()])
    placed = torch.stack([sliced[slot_of[p]] for p in tokens.tolist()])
    if merge:
        assert not torch.allclose(own, placed)  # some kept tokens absorbed duplicates
    else:
        torch.testing.assert_close(own, placed)
