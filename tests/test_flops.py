"""Analytic prefill FLOPs (`sharp_prune.measure.flops`) against torch's FlopCounterMode, and their properties."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Qwen2Config

import sharp_prune as sp
from sharp_prune.measure.flops import (
    PrefillLayout,
    SampleLayout,
    TextDims,
    count_flops,
    estimate,
    measure_prefill_flops,
    prefill_flops,
    vision_flops,
)
from sharp_prune.testing import TinyVideo, tiny_causal_lm, tiny_inputs, tiny_model

TOLERANCE = 0.02  # the acceptance bar: analytic within 2% of the counter
METHODS = ["none", "fastv", "sharp"]


def _relative(analytic: int, counted: int) -> float:
    return abs(analytic - counted) / counted


def _check(report, measured, extra: int = 0) -> None:
    """Analytic vs counted text-decoder FLOPs; `extra`: work the counter sees inside the decoder's call."""
    counted = measured.text - extra
    assert _relative(report.total, counted) <= TOLERANCE, (report.total, counted)
    # Everything but the selection term (approximate by design) is exact in the executed convention.
    assert abs(report.total - counted) <= report.breakdown["selection"], (report.breakdown, counted)


def _scenes_lm_inputs(separators: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt, 6 frames of 8 tokens in two scenes of 3 identical frames (optionally a separator token after
    each frame: text inside a SegM segment), then a 10-token question."""
    gen = torch.Generator().manual_seed(seed)
    scenes = [torch.randint(3, 200, (8,), generator=gen) for _ in range(2)]
    pieces, frame_map = [torch.randint(3, 200, (6,), generator=gen)], [torch.full((6,), -1)]
    for frame in range(6):
        pieces.append(scenes[frame // 3])
        frame_map.append(torch.full((8,), frame))
        if separators:
            pieces.append(torch.tensor([5]))
            frame_map.append(torch.tensor([-1]))
    pieces.append(torch.randint(3, 200, (10,), generator=gen))
    frame_map.append(torch.full((10,), -1))
    return torch.cat(pieces)[None], torch.cat(frame_map)[None]


@pytest.fixture(scope="module")
def tiny_lm():
    return tiny_causal_lm()


@pytest.mark.parametrize("separators", [False, True], ids=["contiguous", "separators"])
@pytest.mark.parametrize("method", METHODS)
def test_tiny_lm_matches_counter(tiny_lm, method, separators):
    input_ids, frame_map = _scenes_lm_inputs(separators)
    with sp.apply(tiny_lm, method=method, retention=0.3, layer=2) as handle, handle.visual_frames(frame_map):
        measured = measure_prefill_flops(tiny_lm, {"input_ids": input_ids})
        report = prefill_flops(tiny_lm, handle.last)
    _check(report, measured)
    if not separators:
        # The no-record estimate of the same layout (6 prompt tokens, 48 video tokens in 2 segments) agrees.
        config = sp.PruneConfig(method=method, retention=0.3, layer=2)
        guess = estimate(tiny_lm.config, input_ids.shape[1], 48, config=config, prompt_len=6, num_segments=2)
        assert guess.breakdown == report.breakdown and guess.unpruned == report.unpruned
    if method == "sharp":
        assert int(handle.last.segment_ids[0].max()) + 1 == 2  # SegM ran with two segments
        assert report.breakdown["posc_pass.attention"] == report.breakdown["before_k.attention"] > 0
    if method == "none":
        assert report.total == report.unpruned == measured.text


def test_tiny_lm_pre_stage_matches_counter(tiny_lm):
    input_ids, frame_map = _scenes_lm_inputs(separators=False)
    config = sp.PruneConfig(method="fastv", retention=0.5, layer=1, pre="temporal_merge")
    with sp.apply(tiny_lm, config) as handle, handle.visual_frames(frame_map):
        measured = measure_prefill_flops(tiny_lm, {"input_ids": input_ids})
        report = prefill_flops(tiny_lm, handle.last)
    assert handle.last.pre_kept == [16]  # repeated frames dropped before layer 0
    assert report.summary["seq_len"] == input_ids.shape[1] - 32
    _check(report, measured)


@pytest.mark.parametrize(
    ("family", "method"),
    [("qwen2_vl", "none"), ("qwen2_vl", "fastv"), ("qwen2_vl", "sharp"), ("llava_onevision", "fastv")],
)
def test_tiny_vlm_padded_batch_matches_counter(family, method):
    model = tiny_model(family)
    inputs = tiny_inputs(model, [3, 6], [5, 2], padding_side="left", video=TinyVideo(frames=4))
    with sp.apply(model, method=method, retention=0.3, layer=2) as handle:
        measured = measure_prefill_flops(model, inputs)
        report = prefill_flops(model, handle.last)
    # PosC's first prefill encodes one blank temporal patch inside the decoder's call (cached after).
    blank = vision_flops(model, video_grid_thw=(1, 8, 8)) if method == "sharp" else 0
    _check(report, measured, extra=blank)
    if method == "sharp":
        assert handle.last.num_query_rows == [5, 2]  # the widest sample sets the executed scoring width
        assert int(handle.last.segment_ids[0].max()) > 0  # several segments: the stacked-block path ran
    # The vision tower is outside the count (in-LLM pruning leaves it as it is); its own estimate is exact.
    assert measured.total - measured.text == 2 * vision_flops(model, num_frames=4, video_grid_thw=(4, 8, 8))


def test_qwen2_5_vl_vision_estimate_matches_counter():
    model = tiny_model("qwen2_5_vl")
    inputs = tiny_inputs(model, [3], [4], video=TinyVideo(frames=4, grid=4))
    measured = measure_prefill_flops(model, inputs)
    assert measured.total - measured.text == vision_flops(model, video_grid_thw=(4, 8, 8))


@pytest.fixture(scope="module")
def smollm2_prompt(smollm2):
    """A caption "video" for SmolLM2: prompt, 8 frames x 14 tokens in 3 scenes (each frame its scene's caption,
    so SegM cuts between scenes), question."""
    _, tokenizer = smollm2
    scenes = ["a dog running in a park", "a red car on the road", "ocean waves at sunset"]
    frames = []
    for frame in range(8):
        caption = tokenizer(scenes[frame * 3 // 8]).input_ids
        frames.append(torch.tensor((caption * 14)[:14]))
    prompt = tokenizer("Describe the video.").input_ids
    question = tokenizer(" What happens after the dog runs, and where does the car go?").input_ids
    input_ids = torch.cat([torch.tensor(prompt), *frames, torch.tensor(question)])[None]
    frame_map = sp.frame_map_for_span(input_ids.shape[1], start=len(prompt), num_frames=8, tokens_per_frame=14)
    return input_ids, frame_map


@pytest.mark.parametrize("method", METHODS)
def test_smollm2_matches_counter(smollm2, smollm2_prompt, method):
    model, _ = smollm2
    input_ids, frame_map = smollm2_prompt
    with sp.apply(model, method=method, retention=0.25, layer=2) as handle, handle.visual_frames(frame_map):
        measured = measure_prefill_flops(model, {"input_ids": input_ids})
        report = prefill_flops(model, handle.last)
    assert _relative(report.total, measured.text) <= TOLERANCE, (report.to_dict(), measured)
    if method == "sharp":
        assert int(handle.last.segment_ids[0].max()) + 1 == 3
    if method != "none":
        assert report.reduction > 0.3


# ------------------------------------------------------------------------------------------- pure formulas
LLAVA_OV_7B_TEXT = Qwen2Config(
    hidden_size=3584,
    intermediate_size=18944,
    num_attention_heads=28,
    num_key_value_heads=4,
    num_hidden_layers=28,
    vocab_size=152064,
)


@pytest.mark.parametrize("method", ["fastv", "sharp", "divprune"])
def test_reduction_grows_as_retention_shrinks(method):
    seq_len, num_visual = 32 * 196 + 60, 32 * 196
    reductions = []
    for retention in (1.0, 0.5, 0.25, 0.1):
        config = sp.PruneConfig(method=method, retention=retention, layer=2)
        report = estimate(LLAVA_OV_7B_TEXT, seq_len, num_visual, config=config, prompt_len=20)
        reductions.append(report.reduction)
    assert reductions == sorted(reductions) and len(set(reductions)) == 4
    assert reductions[-1] > 0.75
    none = estimate(LLAVA_OV_7B_TEXT, seq_len, num_visual, config=sp.PruneConfig(method="none"), prompt_len=20)
    assert none.total == none.unpruned and none.reduction == 0.0


@pytest.mark.parametrize("convention", ["executed", "ideal"])
def test_breakdown_sums_to_total_and_serialises(convention):
    config = sp.PruneConfig(method="sharp", retention=0.2, layer=3)
    report = estimate(LLAVA_OV_7B_TEXT, 2000, 1568, config=config, prompt_len=14, convention=convention, vision=123)
    assert report.total == sum(report.breakdown.values())
    assert report.unpruned == sum(report.unpruned_breakdown.values())
    assert report.reduction == pytest.approx(1 - report.ratio)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["total"] == report.total and data["vision"] == 123 and data["convention"] == convention
    assert all(value >= 0 for value in report.breakdown.values())


def test_ideal_is_at_most_executed_and_halves_long_attention():
    config = sp.PruneConfig(method="sharp", retention=0.2, layer=2)
    executed = estimate(LLAVA_OV_7B_TEXT, 6400, 6272, config=config, prompt_len=28)
    ideal = estimate(LLAVA_OV_7B_TEXT, 6400, 6272, config=config, prompt_len=28, convention="ideal")
    for key, value in executed.breakdown.items():
        assert ideal.breakdown[key] <= value, key
    plain = executed.unpruned_breakdown["after_k.attention"] / ideal.unpruned_breakdown["after_k.attention"]
    assert plain == pytest.approx(2.0, rel=1e-3)  # causal triangle: about half the full product


def test_posc_cached_prior_counts_no_blank_pass():
    per_input = estimate(LLAVA_OV_7B_TEXT, 2000, 1568, config=sp.PruneConfig(method="sharp"), prompt_len=14)
    cached = estimate(
        LLAVA_OV_7B_TEXT, 2000, 1568, config=sp.PruneConfig(method="sharp", posc_prior="cached"), prompt_len=14
    )
    assert per_input.breakdown["posc_pass.mlp"] > 0 and cached.breakdown["posc_pass.mlp"] == 0
    assert cached.breakdown["scoring"] * 2 == per_input.breakdown["scoring"]


def _dense_segm_pairs(sample: SampleLayout, within: str) -> int:
    """Allowed (row, key) pairs of the SegM mask, real rows and keys only, counted one by one."""
    length = sample.valid.numel()
    segment = torch.full((length,), -1)
    segment[sample.visual] = sample.segments
    pairs = 0
    for q in range(length):
        for k in range(length):
            if not (sample.valid[q] and sample.valid[k]):
                continue
            if segment[q] < 0 or segment[k] < 0:
                pairs += k <= q
            else:
                pairs += bool(segment[q] == segment[k] and (k <= q or within == "bidirectional"))
    return pairs


@pytest.mark.parametrize("within", ["causal", "bidirectional"])
def test_ideal_segm_pairs_match_a_dense_mask(within):
    # left padding (2), prompt (3), segment 0 with a separator inside it, segment 1, question (4)
    valid = torch.tensor([False, False] + [True] * 18)
    visual = torch.tensor([5, 6, 7, 9, 10, 11, 12, 13, 14, 15])
    segments = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    sample = SampleLayout(valid=valid, visual=visual, kept_visual=3, query_rows=4, segments=segments)
    layout = PrefillLayout(samples=(sample,), input_len=20)
    config = sp.PruneConfig(method="sharp", layer=1, segm_within=within)
    dims = TextDims.from_config(tiny_causal_lm(num_layers=2).config)
    report = count_flops(dims, layout, config, convention="ideal")
    pairs = report.breakdown["before_k.attention"] // dims.attention_per_pair
    assert pairs == _dense_segm_pairs(sample, within)
