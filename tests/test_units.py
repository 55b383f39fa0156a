"""Pure tensor functions, on random tensors, against independent references."""

from __future__ import annotations

import pytest
import torch

import sharp_prune as sp
from sharp_prune.hf_protocol import read_model_call
from sharp_prune.methods import SelectionInput
from sharp_prune.methods.uniform import uniform_indices
from sharp_prune.models.qwen_vl import locate_qwen_vl
from sharp_prune.steps.keep_plan import build_keep_plan, decode_columns, gather_along, slice_mask
from sharp_prune.steps.locate import VisualLayout
from sharp_prune.steps.score import attention_received
from sharp_prune.testing import tiny_inputs, tiny_model


def _dense_reference(query, key, rows, key_valid, scaling):
    """Full softmax attention matrix (fine at toy sizes), then the chosen rows."""
    b, h, seq_len, _ = query.shape
    k = key.repeat_interleave(h // key.shape[1], dim=1)
    logits = query.double() @ k.double().transpose(-1, -2) * scaling
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    allowed = causal[None, None] & key_valid[:, None, None, :]
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    out = torch.zeros(b, seq_len, dtype=torch.float64)
    for i in range(b):
        out[i] = probs[i, :, rows[i]].mean(dim=(0, 1))
    return out


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (9, 3)])
def test_attention_received_matches_dense_softmax(heads, kv_heads):
    gen = torch.Generator().manual_seed(heads)
    b, seq_len, d = 2, 37, 8
    query = torch.randn(b, heads, seq_len, d, generator=gen)
    key = torch.randn(b, kv_heads, seq_len, d, generator=gen)
    key_valid = torch.ones(b, seq_len, dtype=torch.bool)
    key_valid[1, :5] = False  # left padding on sample 1
    rows = [torch.tensor([30, 33, 36]), torch.tensor([34, 36])]
    index = torch.tensor([[30, 33, 36], [34, 36, 36]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    got = attention_received(query, key, index, valid, key_valid, d**-0.5)
    expected = _dense_reference(query, key, rows, key_valid, d**-0.5)
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-5)
    assert got[1, :5].abs().max() == 0  # padding receives nothing


@pytest.mark.parametrize("n_frames,per_frame,budget", [(8, 16, 32), (8, 16, 5), (3, 10, 29), (4, 9, 1), (5, 7, 35)])
def test_uniform_spreads_over_frames_and_space(n_frames, per_frame, budget):
    frame_ids = torch.arange(n_frames).repeat_interleave(per_frame)
    picked = uniform_indices(frame_ids, budget)
    assert picked.numel() == budget
    assert torch.equal(picked, picked.unique())  # sorted, no repeats
    per = torch.bincount(frame_ids[picked], minlength=n_frames)
    assert int(per.max() - per.min()) <= 1  # as even as the budget allows
    if budget >= n_frames:
        assert bool((per >= 1).all())


def test_uniform_stride_within_a_frame_is_even():
    picked = uniform_indices(torch.zeros(100, dtype=torch.long), 4)
    assert picked.tolist() == [12, 37, 62, 87]


def _layout(b=2, n_frames=4, per_frame=8, prefix=3):
    positions = (torch.arange(n_frames * per_frame) + prefix).expand(b, -1).clone()
    frame_ids = torch.arange(n_frames).repeat_interleave(per_frame).expand(b, -1).clone()
    return VisualLayout(positions=positions, frame_ids=frame_ids)


@pytest.mark.parametrize("method", ["random", "uniform", "fastv", "none"])
def test_selectors_are_deterministic_and_exact(method):
    layout = _layout()
    scores = torch.rand(2, 32, generator=torch.Generator().manual_seed(0))
    config = sp.PruneConfig(method=method, retention=0.25, seed=7)
    selector = config.selector()
    inputs = SelectionInput(layout=layout, budget=8, scores=scores, hidden=None, config=config)
    first, second = selector.select(inputs).keep, selector.select(inputs).keep
    assert torch.equal(first, second)
    expected = 32 if method == "none" else 8
    assert first.shape == (2, expected)
    assert bool((first.diff(dim=1) > 0).all())


def test_fastv_keeps_the_top_scores():
    layout = _layout(b=1)
    scores = torch.rand(1, 32, generator=torch.Generator().manual_seed(1))
    config = sp.PruneConfig(method="fastv")
    keep = config.selector().select(SelectionInput(layout, 5, scores, None, config)).keep
    assert set(keep[0].tolist()) == set(scores[0].argsort(descending=True)[:5].tolist())


def test_random_depends_on_seed():
    layout = _layout(b=1, n_frames=8, per_frame=32)
    picks = []
    for seed in (0, 1):
        config = sp.PruneConfig(method="random", seed=seed)
        picks.append(config.selector().select(SelectionInput(layout, 20, None, None, config)).keep)
    assert not torch.equal(picks[0], picks[1])


def test_keep_plan_keeps_text_and_chosen_visual():
    layout = _layout(b=2, n_frames=2, per_frame=4, prefix=2)  # visual at 2..9
    plan = build_keep_plan(layout, torch.tensor([[0, 5], [7, 1]]), seq_len=12)
    assert plan.index.tolist() == [[0, 1, 2, 7, 10, 11], [0, 1, 3, 9, 10, 11]]
    assert plan.kept_visual.tolist() == [[2, 7], [3, 9]]
    assert decode_columns(plan, 14)[0].tolist() == [0, 1, 2, 7, 10, 11, 12, 13]


def test_slicing_helpers_broadcast_batch_and_keep_order():
    index = torch.tensor([[0, 2], [1, 3]])
    cos = torch.arange(4.0).view(1, 4, 1).expand(1, 4, 3)
    assert gather_along(cos, index, dim=1)[..., 0].tolist() == [[0.0, 2.0], [1.0, 3.0]]
    mask = torch.arange(16).view(1, 1, 4, 4)
    cut = slice_mask(mask, index, index)
    assert cut.shape == (2, 1, 2, 2)
    assert cut[1, 0].tolist() == [[5, 7], [13, 15]]
    assert slice_mask(None, index, index) is None


def test_frame_map_layout_validation():
    frame_map = torch.full((1, 10), -1)
    frame_map[0, 2:8] = torch.tensor([0, 0, 1, 1, 2, 2])
    layout = VisualLayout.from_frame_map(frame_map)
    assert layout.positions.tolist() == [[2, 3, 4, 5, 6, 7]]
    assert layout.num_frames == 3
    assert VisualLayout.from_frame_map(torch.full((2, 5), -1)) is None
    frame_map[0, 2] = 2
    with pytest.raises(sp.InputError, match="non-decreasing"):
        VisualLayout.from_frame_map(frame_map)
    with pytest.raises(sp.InputError, match="does not fit"):
        sp.frame_map_for_span(10, start=5, num_frames=2, tokens_per_frame=4)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_frames_from_positions_equal_frames_from_grids(family):
    model = tiny_model(family)
    inputs = tiny_inputs(model, [3, 5], [4, 2])
    from_grids = locate_qwen_vl(model, read_model_call([], (), inputs), None)
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    without_grid = {k: v for k, v in inputs.items() if k != "video_grid_thw"} | {"position_ids": positions}
    from_positions = locate_qwen_vl(model, read_model_call([], (), without_grid), None)
    assert torch.equal(from_grids.frame_ids, from_positions.frame_ids)
    assert from_grids.grid == from_positions.grid == (4, 4)
    assert from_grids.num_frames == 4
