"""Qwen3-VL (and Qwen3-VL-MoE): one span per frame between timestamps, and DeepStack after the pruning layer.

The family battery (identity, drop equivalence, generate, padded batches, every method, lifecycle) runs Qwen3-VL
through `TINY_FAMILIES`; this file holds what is Qwen3-VL's own: the layout, DeepStack at every K around its
levels, the MoE class on the same engine path, the vision FLOPs and the blank frame.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_logits

import sharp_prune as sp
from sharp_prune.hf_protocol import read_model_call
from sharp_prune.measure.flops import measure_prefill_flops, prefill_flops, vision_flops
from sharp_prune.models import resolve_adapter
from sharp_prune.models.qwen3_vl import QWEN3_VL_MOE, TIMESTAMP_TOKENS, tiny_qwen3_vl
from sharp_prune.models.qwen_vl import locate_qwen_vl
from sharp_prune.testing import TinyVideo, tiny_inputs, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen3_vl")


def _keep_index(record, seq_len: int) -> torch.Tensor:
    visual = set(record.visual_positions[0].tolist())
    kept = set(record.keep_positions[0].tolist())
    return torch.tensor([p for p in range(seq_len) if p not in visual or p in kept])


def test_each_frame_is_its_own_span_and_timestamps_stay_text(model):
    inputs = tiny_inputs(model, [3, 5], [4, 2], padding_side="left")
    layout = locate_qwen_vl(model, read_model_call([], (), inputs), None)
    assert layout.frames == 4 and layout.grid == (4, 4)
    for row in range(2):
        positions = layout.positions[row]
        assert torch.equal(layout.frame_ids[row], torch.arange(4).repeat_interleave(16))
        # 4 runs of 16 consecutive positions, each run 16 + <|vision_end|> + timestamp + <|vision_start|> apart
        starts = positions[::16]
        assert torch.equal(positions.view(4, 16) - starts[:, None], torch.arange(16).expand(4, 16))
        assert starts.diff().tolist() == [16 + 2 + TIMESTAMP_TOKENS] * 3


def test_frames_from_positions_equal_frames_from_grids(model):
    """Under generate the model passes 3-D positions instead of grids: the same frames are found."""
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
    assert torch.equal(from_grids.positions, from_positions.positions)


@pytest.mark.parametrize("layer", [1, 2, 3])
@pytest.mark.parametrize("method", ["fastv", "random"])
def test_deepstack_levels_after_k_reach_the_kept_tokens(model, layer, method):
    """Levels 0..2 feed layers 0..2: K = 1 adds two levels after pruning, K = 2 one, K = 3 none."""
    inputs = tiny_inputs(model, [5], [6])
    with sp.apply(model, method=method, retention=0.25, layer=layer) as handle, torch.no_grad():
        pruned = model(**inputs).logits
    keep = _keep_index(handle.last, inputs["input_ids"].shape[1])
    expected = reference_logits(model, handle.adapter.decoder(model), inputs, keep, layer)
    torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=1e-5)


def test_deepstack_changes_the_logits_it_is_tested_with(model):
    """The reference's DeepStack term matters: without it the pruned logits differ (the test above can fail)."""
    inputs = tiny_inputs(model, [5], [6])
    with sp.apply(model, method="fastv", retention=0.25, layer=1) as handle, torch.no_grad():
        pruned = model(**inputs).logits
    keep = _keep_index(handle.last, inputs["input_ids"].shape[1])
    decoder = handle.adapter.decoder(model)
    levels = model.config.vision_config.deepstack_visual_indexes
    model.config.vision_config.deepstack_visual_indexes = []  # the decoder then gets no DeepStack features
    try:
        model.model.visual.deepstack_visual_indexes = []
        without = reference_logits(model, decoder, inputs, keep, 1)
    finally:
        model.config.vision_config.deepstack_visual_indexes = levels
        model.model.visual.deepstack_visual_indexes = levels
    assert not torch.allclose(pruned, without, atol=1e-3)


def test_generate_after_deepstack_prefill_matches_unpruned_at_full_retention(model):
    inputs = tiny_inputs(model, [3, 6], [5, 2], padding_side="left")
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        with sp.apply(model, method="fastv", retention=1.0, layer=1):
            kept_all = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(kept_all, expected)


def test_moe_variant_runs_the_same_engine_path():
    moe = tiny_qwen3_vl(moe=True)(4, "sdpa", torch.float32, 0)
    assert resolve_adapter(moe) is QWEN3_VL_MOE
    inputs = _moe_inputs(moe)
    with torch.no_grad():
        unpruned = moe(**inputs).logits
        with sp.apply(moe, method="fastv", retention=1.0, layer=2):
            assert torch.equal(moe(**inputs).logits, unpruned)
        with sp.apply(moe, method="fastv", retention=0.25, layer=1) as handle:
            pruned = moe(**inputs).logits
            tokens = moe.generate(**inputs, max_new_tokens=3, do_sample=False)
    keep = _keep_index(handle.last, inputs["input_ids"].shape[1])
    expected = reference_logits(moe, handle.adapter.decoder(moe), inputs, keep, 1)
    torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=1e-5)
    assert tokens.shape[1] == inputs["input_ids"].shape[1] + 3


def _moe_inputs(moe):
    from sharp_prune.models.qwen3_vl import tiny_inputs_qwen3_vl

    return tiny_inputs_qwen3_vl(moe, [5], [6], TinyVideo(), "left", 0)


def test_vision_estimate_matches_counter(model):
    inputs = tiny_inputs(model, [3], [4], video=TinyVideo(frames=4, grid=4))
    measured = measure_prefill_flops(model, inputs)
    assert measured.total - measured.text == vision_flops(model, video_grid_thw=(4, 8, 8))


def test_text_flops_match_counter_with_deepstack_after_k(model):
    inputs = tiny_inputs(model, [3, 6], [5, 2], padding_side="left")
    with sp.apply(model, method="fastv", retention=0.3, layer=1) as handle:
        measured = measure_prefill_flops(model, inputs)
        report = prefill_flops(model, handle.last)
    counted = measured.text
    assert abs(report.total - counted) <= report.breakdown["selection"], (report.breakdown, counted)


def test_blank_frame_is_a_black_frame_through_the_models_own_video_path(model):
    """The blank frame equals what the model's forward puts at a frame of an all-black video (pixel value -1:
    Qwen3-VL's processors normalise with ImageNet-standard mean = std = 0.5)."""
    from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD

    from sharp_prune.models.qwen3_vl import _BLACK, blank_frame_qwen3_vl

    black = -torch.tensor(IMAGENET_STANDARD_MEAN) / torch.tensor(IMAGENET_STANDARD_STD)
    assert torch.equal(_BLACK, black)
    inputs = tiny_inputs(model, [2], [2])
    inputs["pixel_values_videos"] = torch.full_like(inputs["pixel_values_videos"], -1.0)
    layout = locate_qwen_vl(model, read_model_call([], (), inputs), None)
    captured = {}
    decoder = model.model.language_model
    hook = decoder.register_forward_pre_hook(lambda m, a, k: captured.update(k), with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    first_frame = captured["inputs_embeds"][0, layout.positions[0, :16]]
    torch.testing.assert_close(blank_frame_qwen3_vl(model, layout, None), first_frame)


@pytest.mark.parametrize("layer", [2, 3])
def test_posc_prior_is_the_scores_of_a_black_video_deepstack_included(model, layer):
    """PosC's blank pass is the model on the same prompt with every frame black: its prior equals the scores a real
    forward on black pixels reads (each frame goes through the vision tower alone, so every black frame is the
    black frame). DeepStack's levels below the scoring layer must be the black frame's too, or they differ."""
    inputs = tiny_inputs(model, [5], [6])
    black = dict(inputs, pixel_values_videos=torch.full_like(inputs["pixel_values_videos"], -1.0))
    config = sp.PruneConfig(method="sharp", retention=0.25, layer=layer, segm=False, regd=False, record_scores=True)
    with sp.apply(model, config) as handle, torch.no_grad():
        model(**inputs)
        prior = handle.last.prior[0]
        model(**black)
        black_scores = handle.last.raw_scores[0]
    torch.testing.assert_close(prior, black_scores, atol=1e-5, rtol=1e-4)
