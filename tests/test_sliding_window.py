"""Models with sliding-window layers (Gemma 3's layer mix, as Gemma 4 has it): where scores are read, the masks of
layers >= K, decoding from the pruned cache, batches, and every method, through the generic adapter."""

from __future__ import annotations

import pytest
import torch
from gemma4_release import requires_gemma4
from reference import reference_logits_layered
from test_methods import ALL, _name

import sharp_prune as sp
from sharp_prune import hf_protocol as hf
from sharp_prune.errors import ConfigError, UnsupportedModelError
from sharp_prune.steps.sliding import decode_window_mask, score_layer
from sharp_prune.testing import PAD_ID, tiny_sliding_lm

WINDOW = 8
WIDTH, START, FRAMES, PER_FRAME = 64, 8, 5, 8  # 40 video tokens, five windows' worth
FULL = [2, 5]  # the tiny model's full-attention layers (sliding, sliding, full, ...)


@pytest.fixture(scope="module")
def model():
    return tiny_sliding_lm(num_layers=6, window=WINDOW)


def _prompt(seed: int = 1, length: int = WIDTH) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 200, (1, length), generator=torch.Generator().manual_seed(seed))
    return ids, sp.frame_map_for_span(length, start=START, num_frames=FRAMES, tokens_per_frame=PER_FRAME)


def _kept_index(record) -> torch.Tensor:
    visual = set(record.visual_positions[0].tolist())
    kept = set(record.keep_positions[0].tolist())
    return torch.tensor([p for p in range(record.seq_len) if p not in visual or p in kept])


# ------------------------------------------------------------------------------------------------- pure functions
def test_score_layer_is_the_last_full_attention_layer_below_k():
    windows = [WINDOW, WINDOW, None, WINDOW, WINDOW, None]
    assert [score_layer(windows, k) for k in (3, 4, 5)] == [2, 2, 2]
    assert score_layer([None] * 4, 3) == 2  # a model without sliding layers scores at K-1
    for k in (1, 2):
        with pytest.raises(ConfigError, match=r"K >= 3 \(full-attention layers: \[2, 5\]\)"):
            score_layer(windows, k)


def test_layer_windows_reads_layer_types_and_refuses_other_kinds(model):
    assert hf.layer_windows(model.config, 6) == (WINDOW, WINDOW, None, WINDOW, WINDOW, None)

    class Chunked:  # linear-attention layers are supported since (tests/test_hybrid_linear.py)
        layer_types = ["chunked_attention", "full_attention"]

    with pytest.raises(UnsupportedModelError, match="chunked_attention"):
        hf.layer_windows(Chunked(), 2)


def test_decode_window_mask_counts_the_window_in_original_positions():
    kept = torch.tensor([[0, 1, 2, 9, 10]])  # 5 kept of 11 prefill positions
    valid = torch.tensor([[False, True, True, True, True]])  # the first is padding
    like = torch.zeros(1, 1, 1, 99, dtype=torch.bool)
    # window 4, 5 kept + 1 decoded (position 11) seen, the step decodes position 12: the cache holds the last 3
    # (positions 9, 10, 11), then 12; all within 4 positions
    mask = decode_window_mask(like, kept, valid, seq_len=11, cached=6, new=1, window=4)
    assert mask[0, 0].tolist() == [[True, True, True, True]]
    # window 8, the first step (position 11): the cache holds all 5 kept; 0, 1, 2 are more than 7 positions back,
    # and 0 is padding anyway
    mask = decode_window_mask(like, kept, valid, seq_len=11, cached=5, new=1, window=8)
    assert mask[0, 0].tolist() == [[False, False, False, True, True, True]]
    # two new tokens at once (positions 11, 12), window 11: causal among them, padding masked, and position 1 is
    # inside 11's window but outside 12's
    mask = decode_window_mask(like, kept, valid, seq_len=11, cached=5, new=2, window=11)
    assert mask[0, 0].tolist() == [
        [False, True, True, True, True, True, False],
        [False, False, True, True, True, True, True],
    ]
    additive = decode_window_mask(torch.zeros(1, 1, 1, 9), kept, valid, seq_len=11, cached=5, new=1, window=8)
    assert torch.equal(additive == 0, decode_window_mask(like, kept, valid, 11, 5, 1, 8))


# ------------------------------------------------------------------------------------------------- the engine
def test_a_k_with_only_sliding_layers_below_it_is_refused_for_scoring_methods(model):
    before = hf.attention_implementation(model.config)
    with pytest.raises(ConfigError, match="sliding window"):
        sp.apply(model, method="fastv", layer=2)
    assert hf.attention_implementation(model.config) == before and not model._forward_pre_hooks
    sp.apply(model, method="random", layer=2).remove()  # a method without scores may drop anywhere


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


@pytest.mark.parametrize("method,k", [("fastv", 1), ("random", 2), ("fastv", 3)])
def test_keep_all_equals_the_unpruned_model(model, method, k):
    if method == "fastv" and k < FULL[0] + 1:
        k = FULL[0] + 1
    ids, frame_map = _prompt()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        handle = sp.apply(model, method=method, retention=1.0, layer=k)
        with handle, handle.visual_frames(frame_map):
            logits = model(input_ids=ids).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("method,k", [("fastv", 3), ("random", 1), ("divprune", 4), ("fastv", 5)])
def test_pruned_forward_equals_the_kept_sequence_run_directly(method, k, attn):
    model = tiny_sliding_lm(num_layers=6, window=WINDOW, attn_implementation=attn)
    ids, frame_map = _prompt()
    handle = sp.apply(model, method=method, retention=0.3, layer=k)
    with handle, handle.visual_frames(frame_map), torch.no_grad():
        logits = model(input_ids=ids).logits
    keep = _kept_index(handle.last)
    assert logits.shape[1] == keep.numel() < WIDTH
    torch.testing.assert_close(logits, reference_logits_layered(model, ids, keep, k), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("method", "k"), [("fastv", 3), ("random", 1)], ids=["scored", "below-the-first-full-layer"])
@pytest.mark.parametrize("length", [WIDTH, START + FRAMES * PER_FRAME + 3], ids=["long-suffix", "short-suffix"])
def test_generate_continues_from_the_pruned_cache_as_the_reference_does(model, length, method, k):
    # short-suffix: the window of the first decoded tokens reaches back into the pruned video, where kept tokens are
    # several positions apart; more steps than the window: the sliding cache of layers >= K drops old tokens.
    # below-the-first-full-layer: a method that reads no scores may prune at K = 1, before any full-attention layer
    # (unlike a linear-attention stack, where that K is refused): decoding must still be right.
    ids, frame_map = _prompt(length=length)
    steps = 12
    handle = sp.apply(model, method=method, retention=0.3, layer=k)
    with handle, handle.visual_frames(frame_map), torch.no_grad():
        generated = model.generate(input_ids=ids, max_new_tokens=steps, do_sample=False)
    keep = _kept_index(handle.last)
    tokens = ids
    for _ in range(steps):
        full_keep = torch.cat([keep, torch.arange(length, tokens.shape[1])])
        logits = reference_logits_layered(model, tokens, full_keep, k)
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
    handle = sp.apply(model, method="fastv", retention=0.3, layer=3)
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


def test_the_flops_model_counts_sliding_layers_as_the_counter_does(model):
    """Sliding layers are counted (tests/test_flops_sliding.py has the rest), and Gemma 4's text stack with them
    (tests/test_flops_gemma4.py)."""
    from sharp_prune.measure.flops import measure_prefill_flops, prefill_flops

    ids, frame_map = _prompt()
    with sp.apply(model, method="fastv", retention=0.3, layer=4) as handle, handle.visual_frames(frame_map):
        measured = measure_prefill_flops(model, {"input_ids": ids})
        report = prefill_flops(model, handle.last)
    assert report.total == measured.text and report.summary["score_layer"] == 2
    assert prefill_flops(model, handle.last, convention="ideal").total < report.total
    if not hf.gemma4_supported():
        return  # Gemma 4 is refused before its floor release (tests/test_model_table.py)
    gemma4 = _gemma4_text(**GEMMA4_FEATURES)
    with sp.apply(gemma4, method="fastv", retention=0.3, layer=3) as handle, handle.visual_frames(frame_map):
        measured = measure_prefill_flops(gemma4, {"input_ids": ids})
        report = prefill_flops(gemma4, handle.last)
    assert report.total == measured.text and report.summary["kv_shared_rows"] == 1


def _gemma4_text(**overrides) -> torch.nn.Module:
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    torch.manual_seed(0)
    config = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=7,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=16,
        vocab_size=256,
        vocab_size_per_layer_input=256,
        sliding_window=WINDOW,
        layer_types=GEMMA4_KINDS,
        pad_token_id=0,
    )
    config.update(overrides)
    return Gemma4ForCausalLM(Gemma4TextConfig(**config)).eval()


# per-layer inputs, and layers 5 and 6 reusing the keys and values of layers 3 (sliding) and 4 (full)
GEMMA4_KINDS = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention"]
GEMMA4_KINDS += ["sliding_attention", "full_attention"]
GEMMA4_FEATURES = {"hidden_size_per_layer_input": 8, "num_kv_shared_layers": 2}


@requires_gemma4
def test_kv_sources_name_the_layer_whose_keys_each_layer_reads():
    from transformers import Gemma4TextConfig

    config = Gemma4TextConfig(num_hidden_layers=7, layer_types=list(GEMMA4_KINDS), num_kv_shared_layers=2)
    assert hf.kv_sources(config, 7) == (0, 1, 2, 3, 4, 3, 4)  # the last unshared of each kind stores
    assert hf.kv_sources(Gemma4TextConfig(num_hidden_layers=7, layer_types=list(GEMMA4_KINDS)), 7) == tuple(range(7))


@requires_gemma4
@pytest.mark.parametrize("k", [2, 3])
def test_a_gemma4_text_stack_with_per_layer_inputs_and_shared_kv_prunes_like_the_kept_sequence(k):
    """Per-layer inputs follow the keep plan; the KV-sharing layers read the kept keys of their sources; generate
    (whose prefill runs the sharing layers on the last row only) continues from the pruned cache."""
    model = _gemma4_text(**GEMMA4_FEATURES)
    ids, frame_map = _prompt()
    handle = sp.apply(model, method="fastv", retention=0.3, layer=k)
    with handle, handle.visual_frames(frame_map), torch.no_grad():
        logits = model(input_ids=ids).logits
        record = handle.last
        tokens = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    assert record.kept_len < record.seq_len
    keep = _kept_index(record)
    torch.testing.assert_close(
        logits, reference_logits_layered(model, ids, keep, k, shared_kv_states={}), atol=1e-5, rtol=1e-5
    )
    # greedy decoding from the pruned cache equals greedy decoding of the kept-sequence reference
    expected = ids
    with torch.no_grad():
        for _ in range(6):
            full_keep = torch.cat([keep, torch.arange(ids.shape[1], expected.shape[1])])
            step = reference_logits_layered(model, expected, full_keep, k, last_only=True, shared_kv_states={})
            expected = torch.cat([expected, step[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(tokens, expected)


@requires_gemma4
def test_posc_on_a_gemma4_text_stack_projects_the_blank_copys_per_layer_inputs():
    """The blank pass hands every rerun layer a per-layer input built from the blank copy's embeddings (the
    decoder's own projection), not the real pass's (which would leak the video into the prior)."""
    model = _gemma4_text(**GEMMA4_FEATURES)
    ids, frame_map = _prompt()
    seen: dict[int, list] = {i: [] for i in range(2)}  # layers 0..1: the scoring layer is 1
    hooks = [
        model.model.layers[i].register_forward_pre_hook(
            lambda m, a, kw, i=i: seen[i].append(a[1] if len(a) > 1 else kw["per_layer_input"]), with_kwargs=True
        )
        for i in range(2)
    ]
    config = sp.PruneConfig(method="sharp", retention=0.3, layer=3, segm=False, regd=False)
    handle = sp.apply(model, config)
    try:
        with handle.visual_frames(frame_map), torch.no_grad():
            model(input_ids=ids)
            blank = ids.clone()
            blank[0, START : START + FRAMES * PER_FRAME] = model.config.pad_token_id
            embeds = model.model.embed_tokens(blank)
            tokens = model.model.get_per_layer_inputs(ids)  # a text LM's token part: its real tokens'
            expected = model.model.project_per_layer_inputs(embeds, tokens)
    finally:
        handle.remove()
        for hook in hooks:
            hook.remove()
    for layer in range(2):
        real, rerun = seen[layer]
        torch.testing.assert_close(rerun, expected[:, :, layer])
        assert not torch.allclose(rerun, real)


@requires_gemma4
def test_k_after_a_shared_kv_source_is_refused_before_anything_is_attached():
    model = _gemma4_text(**GEMMA4_FEATURES)
    with pytest.raises(ConfigError, match=r"layer 5 .* reuses the keys and values of layer 3.*K <= 3"):
        sp.apply(model, method="random", retention=0.3, layer=4)
    assert not any(layer._forward_pre_hooks for layer in model.model.layers)


@requires_gemma4
def test_bidirectional_attention_over_everything_is_refused():
    from transformers import Gemma4TextConfig

    config = Gemma4TextConfig(num_hidden_layers=6, use_bidirectional_attention="all")
    with pytest.raises(UnsupportedModelError, match="bidirectionally"):
        hf.layer_windows(config, 6)


@requires_gemma4
def test_a_gemma4_text_stack_without_them_prunes_like_the_kept_sequence():
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    torch.manual_seed(0)
    kinds = ["sliding_attention", "sliding_attention", "full_attention"] * 2
    config = Gemma4TextConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=256,
        sliding_window=WINDOW,
        layer_types=kinds,
        hidden_size_per_layer_input=0,
        num_kv_shared_layers=0,
        pad_token_id=0,
    )
    model = Gemma4ForCausalLM(config).eval()
    ids, frame_map = _prompt()
    handle = sp.apply(model, method="fastv", retention=0.3, layer=3)
    with handle, handle.visual_frames(frame_map), torch.no_grad():
        logits = model(input_ids=ids).logits
        tokens = model.generate(input_ids=ids, max_new_tokens=10, do_sample=False)
    assert handle.score_layer == 2 and tokens.shape == (1, WIDTH + 10)
    torch.testing.assert_close(
        logits,
        reference_logits_layered(model, ids, _kept_index(handle.last), 3, shared_kv_states={}),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("k", [3, 4])
def test_the_blank_pass_runs_each_layer_under_its_own_kinds_mask(model, k):
    """PosC's blank pass reruns layers 0..score layer: each must get the mask it had in the real pass (a sliding
    layer its window, the full-attention scoring layer the whole causal mask), not layer K's for all of them, and
    its own RoPE (Gemma rotates sliding and full layers at different bases)."""
    ids, frame_map = _prompt()
    seen: dict[int, list] = {i: [] for i in range(len(model.model.layers))}
    rope: dict[int, list] = {i: [] for i in range(len(model.model.layers))}

    def record(m, a, kw, i):
        seen[i].append(kw.get("attention_mask"))
        rope[i].append(kw.get("position_embeddings"))

    hooks = [
        layer.register_forward_pre_hook(lambda m, a, kw, i=i: record(m, a, kw, i), with_kwargs=True)
        for i, layer in enumerate(model.model.layers)
    ]
    config = sp.PruneConfig(method="sharp", retention=0.3, layer=k, segm=False, regd=False)
    handle = sp.apply(model, config)
    try:
        with handle.visual_frames(frame_map), torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
        for hook in hooks:
            hook.remove()
    assert handle.score_layer == 2
    for layer in range(3):  # real pass, then the blank pass, for layers 0..2
        real, blank = seen[layer]
        assert blank is real, layer
        assert rope[layer][1] is rope[layer][0], layer  # and its own RoPE
    assert seen[0][0] is not seen[2][0]  # the sliding layer's window and the full layer's causal mask differ
