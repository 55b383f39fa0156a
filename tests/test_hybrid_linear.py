"""Hybrid stacks whose decoder mixes Gated DeltaNet (linear-attention) layers with full-attention layers (Qwen3.5's
layer mix): where scores are read, the recurrent state of layers >= K, decoding from the pruned cache, batches,
every method, and the FLOPs model, through the generic adapter."""

from __future__ import annotations

import pytest
import torch
from reference import reference_logits_layered
from test_methods import ALL, _name
from transformers import DynamicCache

import sharp_prune as sp
from sharp_prune import hf_protocol as hf
from sharp_prune.errors import ConfigError, UnsupportedModelError
from sharp_prune.steps.sliding import check_linear_layer_k, score_layer
from sharp_prune.testing import PAD_ID, tiny_hybrid_lm

WIDTH, START, FRAMES, PER_FRAME = 64, 8, 5, 8  # 40 video tokens
KINDS = ("linear_attention", "linear_attention", "full_attention") * 2
FULL = [2, 5]  # the tiny model's full-attention layers (linear, linear, full, ...)


@pytest.fixture(scope="module")
def model():
    return tiny_hybrid_lm(num_layers=6)


def _prompt(seed: int = 1, length: int = WIDTH) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 200, (1, length), generator=torch.Generator().manual_seed(seed))
    return ids, sp.frame_map_for_span(length, start=START, num_frames=FRAMES, tokens_per_frame=PER_FRAME)


def _kept_index(record) -> torch.Tensor:
    visual = set(record.visual_positions[0].tolist())
    kept = set(record.keep_positions[0].tolist())
    return torch.tensor([p for p in range(record.seq_len) if p not in visual or p in kept])


# ------------------------------------------------------------------------------------------------- pure functions
def test_layer_kinds_and_windows_read_linear_layers(model):
    assert hf.layer_kinds(model.config, 6) == KINDS
    assert hf.layer_windows(model.config, 6) == (None,) * 6  # no window: full or linear, `layer_kinds` tells

    class Chunked:
        layer_types = ["chunked_attention", "full_attention"]

    with pytest.raises(UnsupportedModelError, match="chunked_attention"):
        hf.layer_kinds(Chunked(), 2)


def test_score_layer_skips_linear_layers_and_names_the_smallest_legal_k():
    windows = (None,) * 6
    assert [score_layer(windows, k, kinds=KINDS) for k in (3, 4, 5)] == [2, 2, 2]
    assert score_layer(windows, 6, kinds=KINDS) == 5
    for k in (1, 2):
        with pytest.raises(ConfigError, match=r"K >= 3 \(full-attention layers: \[2, 5\]\)"):
            score_layer(windows, k, kinds=KINDS)
        with pytest.raises(ConfigError, match=r"K >= 3 \(full-attention layers: \[2, 5\]\)"):
            check_linear_layer_k(KINDS, k)
    check_linear_layer_k(KINDS, 3)
    check_linear_layer_k(("sliding_attention", "full_attention"), 1)  # only hybrid linear stacks are held to it


def test_the_cache_of_a_linear_layer_has_a_state_not_a_length(model):
    ids, _ = _prompt()
    cache = DynamicCache(config=model.config)
    assert not hf.cache_started(cache, 0) and not hf.cache_started(cache, 2)
    with torch.no_grad():
        model(input_ids=ids, **{hf.cache_argument(model): cache}, use_cache=True)  # `cache` since 5.24
    assert hf.is_linear_cache_layer(cache, 0) and not hf.is_linear_cache_layer(cache, 2)
    assert hf.cache_started(cache, 0) and hf.cache_started(cache, 2)
    assert hf.cache_length(cache, 2) == WIDTH
    with pytest.raises(sp.ProtocolError, match="linear-attention layer"):
        hf.cache_length(cache, 0)
    # keys and values of the two full layers, plus the conv and recurrent states of the four linear ones
    states = sum(
        t.numel() * t.element_size()
        for layer in cache.layers
        if hasattr(layer, "conv_states")
        for t in (*layer.conv_states.values(), *layer.recurrent_states.values())
    )
    keys = sum(layer.keys.numel() * 2 * 4 for layer in cache.layers if hasattr(layer, "keys"))
    assert states > 0 and hf.cache_bytes(cache) == states + keys


# ------------------------------------------------------------------------------------------------- the engine
@pytest.mark.parametrize("method", ["fastv", "random"])
def test_a_k_without_a_full_attention_layer_below_it_is_refused(model, method):
    before = hf.attention_implementation(model.config)
    for k in (1, 2):
        with pytest.raises(ConfigError, match=r"K >= 3 \(full-attention layers: \[2, 5\]\)"):
            sp.apply(model, method=method, layer=k)
    assert hf.attention_implementation(model.config) == before and not model._forward_pre_hooks


@pytest.mark.parametrize("k", [3, 4, 5])
def test_scores_come_from_the_last_full_attention_layer_below_k(model, k):
    ids, frame_map = _prompt()
    scores = []
    for layer in (3, k):
        handle = sp.apply(model, method="fastv", retention=0.3, layer=layer, record_scores=True)
        with handle, handle.visual_frames(frame_map), torch.no_grad():
            model(input_ids=ids)
        scores.append(handle.last.raw_scores)
        assert handle.score_layer == 2
    torch.testing.assert_close(scores[0], scores[1])  # K = 3, 4, 5 all read layer 2


@pytest.mark.parametrize("method,k", [("fastv", 3), ("random", 4), ("fastv", 5)])
def test_keep_all_equals_the_unpruned_model(model, method, k):
    ids, frame_map = _prompt()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        handle = sp.apply(model, method=method, retention=1.0, layer=k)
        with handle, handle.visual_frames(frame_map):
            logits = model(input_ids=ids).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("method,k", [("fastv", 3), ("random", 4), ("divprune", 4), ("fastv", 5)])
def test_pruned_forward_equals_the_kept_sequence_run_directly(method, k, attn):
    # K = 3, 4: layer K is a linear layer, whose recurrent state starts from the kept tokens; K = 5: a full one
    model = tiny_hybrid_lm(num_layers=6, attn_implementation=attn)
    ids, frame_map = _prompt()
    handle = sp.apply(model, method=method, retention=0.3, layer=k)
    with handle, handle.visual_frames(frame_map), torch.no_grad():
        logits = model(input_ids=ids).logits
    keep = _kept_index(handle.last)
    assert logits.shape[1] == keep.numel() < WIDTH
    torch.testing.assert_close(logits, reference_logits_layered(model, ids, keep, k), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [3, 5])
def test_generate_continues_from_the_pruned_cache_as_the_reference_does(model, k):
    ids, frame_map = _prompt()
    steps = 8
    handle = sp.apply(model, method="fastv", retention=0.3, layer=k)
    with handle, handle.visual_frames(frame_map), torch.no_grad():
        generated = model.generate(input_ids=ids, max_new_tokens=steps, do_sample=False)
    keep = _kept_index(handle.last)
    tokens = ids
    for _ in range(steps):
        full_keep = torch.cat([keep, torch.arange(WIDTH, tokens.shape[1])])
        logits = reference_logits_layered(model, tokens, full_keep, k, last_only=True)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, tokens)


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_batch_equals_its_samples_one_by_one(model, side):
    lengths = [WIDTH, WIDTH - 7]
    rows = [_prompt(seed=i, length=n)[0][0] for i, n in enumerate(lengths)]
    ids = torch.full((2, WIDTH), PAD_ID)
    mask = torch.zeros(2, WIDTH, dtype=torch.long)
    frame_map = torch.full((2, WIDTH), -1)
    for i, row in enumerate(rows):
        offset = WIDTH - len(row) if side == "left" else 0
        ids[i, offset : offset + len(row)] = row
        mask[i, offset : offset + len(row)] = 1
        frame_map[i, offset : offset + len(row)] = sp.frame_map_for_span(len(row), START, FRAMES, PER_FRAME)[0]
    handle = sp.apply(model, method="fastv", retention=0.3, layer=4)  # layer K is a linear layer
    with handle, torch.no_grad():
        with handle.visual_frames(frame_map):
            batch = model(input_ids=ids, attention_mask=mask).logits
            record = handle.last
            batch_tokens = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
        for i, row in enumerate(rows):
            with handle.visual_frames(sp.frame_map_for_span(len(row), START, FRAMES, PER_FRAME)):
                single = model(input_ids=row[None]).logits
                tokens = model.generate(input_ids=row[None], max_new_tokens=10, do_sample=False)
            # the batch row's slot of the prompt's last token, among its kept positions
            dropped = set(record.visual_positions[i].tolist()) - set(record.keep_positions[i].tolist())
            last_real = WIDTH - 1 if side == "left" else len(row) - 1
            slot = sum(1 for p in range(last_real + 1) if p not in dropped) - 1
            torch.testing.assert_close(batch[i, slot], single[0, -1], atol=1e-5, rtol=1e-5)
            if side == "left":  # generate appends after the padded width: right padding would put pads in between
                assert torch.equal(tokens[0, -10:], batch_tokens[i, -10:])


def test_a_multi_token_step_after_a_padded_prefill_keeps_its_local_mask(model):
    # A step of several tokens hands the linear layers the trailing [b, new] of the padding mask (not None): it is
    # local already and must not be cut to the pruned columns, while the full layers' mask is.
    lengths = [WIDTH, WIDTH - 5]
    rows = [_prompt(seed=10 + i, length=n)[0][0] for i, n in enumerate(lengths)]
    ids, mask = torch.full((2, WIDTH), PAD_ID), torch.zeros(2, WIDTH, dtype=torch.long)
    frame_map = torch.full((2, WIDTH), -1)
    for i, row in enumerate(rows):
        ids[i, WIDTH - len(row) :], mask[i, WIDTH - len(row) :] = row, 1
        frame_map[i, WIDTH - len(row) :] = sp.frame_map_for_span(len(row), START, FRAMES, PER_FRAME)[0]
    step = torch.randint(3, 200, (2, 3), generator=torch.Generator().manual_seed(5))
    handle = sp.apply(model, method="fastv", retention=0.3, layer=3)
    with handle, torch.no_grad():
        with handle.visual_frames(frame_map):
            out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        # positions continue from the cache's length (WIDTH, read at full-attention layer 2 < K); RoPE is relative,
        # so the padded row's shift does not matter
        full_mask = torch.cat([mask, torch.ones(2, 3, dtype=torch.long)], dim=1)
        cached = {hf.cache_argument(model): hf.output_cache(out)}
        batch = model(input_ids=step, attention_mask=full_mask, **cached, use_cache=True).logits
        for i, row in enumerate(rows):
            with handle.visual_frames(sp.frame_map_for_span(len(row), START, FRAMES, PER_FRAME)):
                single_out = model(input_ids=row[None], use_cache=True)
            cached = {hf.cache_argument(model): hf.output_cache(single_out)}
            single = model(input_ids=step[i : i + 1], **cached, use_cache=True).logits
            torch.testing.assert_close(batch[i], single[0], atol=1e-5, rtol=1e-5)


def test_remove_restores_the_model(model):
    ids, frame_map = _prompt()
    before = hf.attention_implementation(model.config)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        handle = sp.apply(model, method="sharp", retention=0.3, layer=4)
        with handle.visual_frames(frame_map):
            assert model(input_ids=ids).logits.shape[1] < WIDTH
        handle.remove()
        assert torch.equal(model(input_ids=ids).logits, expected)
    assert hf.attention_implementation(model.config) == before
    assert not model._forward_pre_hooks and not any(layer._forward_pre_hooks for layer in model.model.layers)


@pytest.mark.parametrize("cfg", ALL, ids=_name)
def test_every_method_prunes_and_generates(model, cfg):
    ids, frame_map = _prompt()
    ids = torch.cat([ids, ids.flip(1)])
    frame_map = torch.cat([frame_map, frame_map])
    handle = sp.apply(model, sp.PruneConfig(retention=0.25, layer=4, **cfg))
    with handle, handle.visual_frames(frame_map), torch.no_grad():
        logits = model(input_ids=ids).logits
        tokens = model.generate(input_ids=ids, max_new_tokens=10, do_sample=False)
    expected = FRAMES * PER_FRAME if cfg["method"] == "none" else 10
    assert handle.last.budget == [expected, expected]
    assert torch.isfinite(logits).all() and tokens.shape == (2, WIDTH + 10)
    assert not model._forward_pre_hooks  # remove() detached everything


def test_the_blank_pass_gives_each_layer_kind_its_own_mask(model):
    # PosC's blank pass reruns layers 0..2 with layer K's arguments; layer K = 4 is linear and hands over a 2-D mask,
    # which the full-attention layer 2 must not get (and vice versa at K = 5). A padded batch makes both masks real.
    ids, frame_map = _prompt()
    ids, frame_map = torch.cat([torch.full((1, 4), PAD_ID), ids], 1), torch.cat([torch.full((1, 4), -1), frame_map], 1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, WIDTH, dtype=torch.long)], 1)
    priors = []
    for k in (4, 5):
        handle = sp.apply(model, method="sharp", retention=0.3, layer=k, record_scores=True)
        with handle, handle.visual_frames(frame_map), torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        priors.append(handle.last.prior)
    torch.testing.assert_close(priors[0], priors[1])  # both read layer 2 of the same blank input


def test_the_moe_variant_prunes_like_the_kept_sequence():
    # qwen3_5_moe: the same hybrid decoder with a mixture-of-experts MLP; the engine path is the same
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

    torch.manual_seed(0)
    config = Qwen3_5MoeTextConfig(
        hidden_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        vocab_size=256,
        layer_types=list(KINDS),
        pad_token_id=PAD_ID,
    )
    model = Qwen3_5MoeForCausalLM(config).eval()
    ids, frame_map = _prompt()
    handle = sp.apply(model, method="fastv", retention=0.3, layer=4)
    with handle, handle.visual_frames(frame_map), torch.no_grad():
        logits = model(input_ids=ids).logits
        tokens = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=PAD_ID)
    assert handle.score_layer == 2 and tokens.shape == (1, WIDTH + 4)
    expected = reference_logits_layered(model, ids, _kept_index(handle.last), 4)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("method,k", [("none", 3), ("fastv", 3), ("sharp", 4), ("random", 5)])
def test_the_flops_model_counts_linear_layers_as_the_counter_does(model, method, k):
    from sharp_prune.measure.flops import measure_prefill_flops, prefill_flops

    ids = torch.randint(3, 200, (1, 150), generator=torch.Generator().manual_seed(1))  # 3 chunks of 64, padded
    frame_map = sp.frame_map_for_span(150, start=8, num_frames=8, tokens_per_frame=15)
    with sp.apply(model, method=method, retention=0.3, layer=k) as handle, handle.visual_frames(frame_map):
        measured = measure_prefill_flops(model, {"input_ids": ids})
        report = prefill_flops(model, handle.last)
    # Every term is a matmul, a convolution or a triangular solve the counter sees (`flop_counter_mode` adds the
    # solve); the selection term is approximate by design, so it bounds the difference (0 in practice).
    assert abs(report.total - measured.text) <= report.breakdown["selection"], (report.breakdown, measured.text)
    assert report.breakdown["before_k.linear"] > 0
    assert (report.breakdown["after_k.linear"] > 0) == (k < 5)  # layer 5, the last, is a full-attention layer
    if method == "sharp":  # the blank pass stops at layer 2: two linear layers and one full one
        assert report.summary["score_layer"] == 2
        # layers 0..3 before K: linear, linear, full, linear; the blank pass: linear, linear, full
        assert report.breakdown["posc_pass.attention"] == report.breakdown["before_k.attention"] > 0
        assert report.breakdown["posc_pass.linear"] * 3 == report.breakdown["before_k.linear"] * 2
    ideal = prefill_flops(model, handle.last, convention="ideal")
    assert ideal.total < report.total


def test_the_linear_layer_formula():
    from sharp_prune.measure.flops import TextDims

    dims = TextDims.from_config(tiny_hybrid_lm(num_layers=3).config)
    d, hk, hv, dk, dv, kc = 64, 2, 4, 16, 16, 4
    assert (dims.linear_key_heads, dims.linear_value_heads, dims.linear_key_dim, dims.linear_value_dim) == (
        hk,
        hv,
        dk,
        dv,
    )
    channels = 2 * hk * dk + hv * dv
    per_token = 2 * d * (2 * hk * dk + 3 * hv * dv + 2 * hv)
    assert dims.linear_mixer_flops(10, ideal=True) == 10 * (per_token + 2 * kc * channels + hv * 6 * dk * dv)
    chunk = hv * (64 * 64 * (5 * dk + 3 * dv) + 6 * 64 * dk * dv)
    assert dims.linear_mixer_flops(70, ideal=False) == 70 * per_token + 2 * kc * channels * 73 + 2 * chunk
    assert dims.qkvo_per_token == 2 * d * 16 * (2 * 4 + 4 + 2 * 2)  # the query projection doubles as the gate


def test_the_flops_model_refuses_other_linear_stacks():
    # Qwen3.5-MoE is counted (tests/test_flops_moe.py); a linear-attention stack of another family is not
    from transformers import Qwen3_5MoeTextConfig

    from sharp_prune.measure.flops import TextDims

    assert TextDims.from_config(Qwen3_5MoeTextConfig(num_hidden_layers=4)).has_linear

    class OtherLinear:
        model_type = "other_hybrid"
        layer_types = ["linear_attention", "full_attention"]
        num_hidden_layers, hidden_size, intermediate_size, num_attention_heads, vocab_size = 2, 64, 128, 4, 256

    with pytest.raises(UnsupportedModelError, match="linear-attention"):
        TextDims.from_config(OtherLinear())


# ------------------------------------------------------------------------------------------------- speed shapes
def test_the_speed_shapes_of_qwen3_5():
    from sharp_prune.measure.flops import estimate
    from sharp_prune.measure.shapes import SHAPES
    from sharp_prune.measure.speed import SpeedOptions

    with pytest.raises(ConfigError, match=r"K >= 4"):
        SpeedOptions(shape="qwen3.5-9b", layer=2)
    SpeedOptions(shape="qwen3.5-9b", layer=4)
    from transformers import Qwen3_5TextConfig

    spec = SHAPES["qwen3.5-9b"]
    config = Qwen3_5TextConfig(**spec.config)
    defaults = Qwen3_5TextConfig()
    for name in spec.config:
        if name not in ("pad_token_id",):
            assert getattr(config, name) == getattr(defaults, name), name  # transformers' Qwen3.5-9B defaults
    report = estimate(config, 32 * 196 + 34, 32 * 196, layer=4, config=sp.PruneConfig(method="fastv", retention=0.2))
    assert 0 < report.ratio < 1 and report.breakdown["after_k.linear"] > 0


def test_speed_runs_the_tiny_hybrid_shape_at_32_frames(tmp_path, capsys):
    from sharp_prune.measure.speed import SpeedOptions, run_speed

    options = SpeedOptions(
        shape="tiny-hybrid",
        frames=32,
        tokens_per_frame=2,
        methods=("fastv", "sharp"),
        retentions=(0.2,),
        layer=4,
        warmup=0,
        repeats=1,
        dtype="fp32",
        device="cpu",
        threads=1,
        memory=False,
        plot=False,
        out=str(tmp_path),
    )
    payload = run_speed(options, progress=False)
    assert payload["flops"]["available"] and not payload["flops"]["errors"]
    ratios = {r["method"]: r["flops_ratio"] for r in payload["results"][1:]}
    assert 0 < ratios["fastv"] < 1 and ratios["sharp"] > 0
    assert "FLOPs ratio" in capsys.readouterr().out
