"""The FLOPs model on sliding-window stacks (Gemma 3's layer mix): executed exact against torch's FlopCounterMode,
and the ideal convention's window pairs exact against the masks the layers apply, before and after K."""

from __future__ import annotations

import pytest
import torch

import sharp_prune as sp
from sharp_prune.errors import UnsupportedModelError
from sharp_prune.measure.flops import (
    PrefillLayout,
    SampleLayout,
    TextDims,
    count_flops,
    estimate,
    measure_prefill_flops,
    prefill_flops,
)
from sharp_prune.testing import tiny_sliding_lm

WINDOW = 8
METHODS = [("none", 3), ("fastv", 3), ("sharp", 4), ("random", 2), ("divprune", 5)]


@pytest.fixture(scope="module")
def model():
    return tiny_sliding_lm(num_layers=6, window=WINDOW)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two samples of 64 (the second left-padded by 5), 40 video tokens in 5 frames from position 8."""
    ids = torch.randint(3, 200, (2, 64), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 64, dtype=torch.long)
    mask[1, :5], ids[1, :5] = 0, 0
    frame_map = sp.frame_map_for_span(64, start=8, num_frames=5, tokens_per_frame=8).repeat(2, 1)
    return ids, mask, frame_map


@pytest.mark.parametrize("method,k", METHODS)
def test_sliding_layers_match_the_counter_exactly(model, method, k):
    ids, mask, frame_map = _batch()
    with sp.apply(model, method=method, retention=0.3, layer=k) as handle, handle.visual_frames(frame_map):
        measured = measure_prefill_flops(model, {"input_ids": ids, "attention_mask": mask})
        report = prefill_flops(model, handle.last)
    # The kernels compute a sliding layer's whole q_len x kv_len product and mask it, as for a causal layer.
    assert abs(report.total - measured.text) <= report.breakdown["selection"], (report.breakdown, measured)
    if method == "none":
        assert report.total == report.unpruned == measured.text
    if method in ("fastv", "sharp"):
        assert report.summary["score_layer"] == 2  # the last full-attention layer below K
    if method == "sharp":
        assert report.breakdown["posc_pass.qkvo"] * 4 == report.breakdown["before_k.qkvo"] * 3  # layers 0..2 of 0..3


@pytest.mark.parametrize("method,k", METHODS)
def test_ideal_window_pairs_are_the_pairs_the_masks_allow(method, k):
    """Eager attention returns each layer's weights: a pair the mask allows has a positive weight, one it masks has
    exactly 0. Counted over real query rows and keys, they are the ideal convention's pairs, layer by layer: the
    window before K, and after K the window in original positions among the kept tokens."""
    model = tiny_sliding_lm(num_layers=6, window=WINDOW, attn_implementation="eager")
    dims = TextDims.from_config(model)
    ids, mask, frame_map = _batch()
    with sp.apply(model, method=method, retention=0.3, layer=k) as handle, handle.visual_frames(frame_map):
        with torch.no_grad():
            attentions = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
        record = handle.last
        ideal = prefill_flops(model, record, convention="ideal")
    full_pairs = {False: ideal.breakdown["before_k.attention"], True: ideal.breakdown["after_k.attention"]}
    for layer, weights in enumerate(attentions):
        after = layer >= k
        real = mask.bool()
        if after and weights.shape[-1] < ids.shape[1]:
            real = torch.stack([real[b, record.output_positions[b]] for b in range(2)])
        pairs = int(((weights[:, 0] > 0) & real[:, :, None] & real[:, None, :]).sum())
        full_pairs[after] -= pairs * dims.attention_per_pair
    # the full-attention layers (2, 5; SegM for ShaRP's layers < K) are what is left: not sliding, checked elsewhere
    if method != "sharp":
        assert full_pairs == {False: 0, True: 0}
    else:
        assert full_pairs[True] == 0


def test_sliding_window_pairs_by_hand():
    dims = TextDims.from_config(tiny_sliding_lm(num_layers=3, window=4))
    assert dims.layer_kinds == ("sliding_attention", "sliding_attention", "full_attention")
    assert dims.sliding_window == 4 and dims.score_layer(3) == 2
    # 10 tokens, video at 2..7 (6 tokens), keep 7 and 3 of them at positions 2, 5, 7: layers >= K see 0, 1, 2, 5,
    # 7, 8, 9; with W = 4 each sees itself and the kept tokens at most 3 positions back: 1, 2, 3, 2, 2, 3, 3
    sample = SampleLayout(
        valid=torch.ones(10, dtype=torch.bool), visual=torch.arange(2, 8), kept_visual=3, kept=torch.tensor([2, 5, 7])
    )
    layout = PrefillLayout(samples=(sample,), input_len=10)
    report = count_flops(dims, layout, sp.PruneConfig(method="random", layer=1), convention="ideal")
    per_pair = dims.attention_per_pair
    # before K (layer 0, sliding): sum of min(i + 1, 4) over 10 tokens; after K: 1 sliding + 1 full layer
    assert report.breakdown["before_k.attention"] == (1 + 2 + 3 + 4 * 7) * per_pair
    assert report.breakdown["after_k.attention"] == ((1 + 2 + 3 + 2 + 2 + 3 + 3) + 7 * 8 // 2) * per_pair
    assert report.unpruned_breakdown["after_k.attention"] == (34 + 55) * per_pair


def test_the_estimate_spreads_the_kept_tokens_evenly_over_the_video():
    from transformers import Gemma3TextConfig

    config = Gemma3TextConfig(num_hidden_layers=12, sliding_window=512)  # Gemma 3's 5:1 mix, real width
    prune = sp.PruneConfig(method="fastv", retention=0.25, layer=6)
    executed = estimate(config, 4000, 3136, config=prune, prompt_len=20)
    ideal = estimate(config, 4000, 3136, config=prune, prompt_len=20, convention="ideal")
    assert executed.summary["score_layer"] == 5 and 0 < executed.ratio < 1 and 0 < ideal.ratio < 1
    assert ideal.total < executed.total
    # the kept tokens spread evenly: 784 of 3136 video tokens, one in four, so a window of 512 positions holds
    # about 128 kept video tokens where the unpruned layer has 512
    dims = TextDims.from_config(config)
    kept = ideal.breakdown["after_k.attention"] / ideal.unpruned_breakdown["after_k.attention"]
    assert kept < 0.5
    # before K: five sliding layers (a window of 512 over 4000 tokens) and one full causal layer
    ideal_before = ideal.unpruned_breakdown["before_k.attention"] // dims.attention_per_pair
    causal = 4000 * 4001 // 2
    assert ideal_before == 5 * (512 * 513 // 2 + (4000 - 512) * 512) + causal


def test_bidirectional_and_unknown_layer_kinds_are_refused():
    from transformers import Gemma3TextConfig

    with pytest.raises(UnsupportedModelError, match="causal"):
        TextDims.from_config(Gemma3TextConfig(num_hidden_layers=2, use_bidirectional_attention=True))

    class Chunked:
        model_type = "llama4_text"
        layer_types = ["chunked_attention", "full_attention"]
        num_hidden_layers, hidden_size, intermediate_size, num_attention_heads, vocab_size = 2, 64, 128, 4, 256

    with pytest.raises(UnsupportedModelError, match="chunked_attention"):
        TextDims.from_config(Chunked())
