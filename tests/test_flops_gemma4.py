"""The FLOPs model on Gemma 4's text stack: exact against torch's FlopCounterMode on tiny random `Gemma4ForCausalLM`
stacks (per-layer head sizes, keys as values, KV-sharing layers, double-wide MLPs, a mixture of experts beside the
dense MLP, per-layer inputs) and the tiny VLM, with the KV-sharing layers on the last row (`generate`'s prefill) or on
every row (a plain forward); the ideal convention's pairs exact against the masks the layers apply (the VLM's frames
attend to themselves both ways in sliding layers)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from gemma4_release import requires_gemma4
from test_sliding_window import GEMMA4_FEATURES, _gemma4_text, _prompt

import sharp_prune as sp
from sharp_prune.errors import ConfigError, UnsupportedModelError
from sharp_prune.measure.flops import (
    PrefillLayout,
    SampleLayout,
    TextDims,
    count_flops,
    estimate,
    measure_prefill_flops,
    prefill_flops,
)
from sharp_prune.testing import tiny_inputs, tiny_model

pytestmark = requires_gemma4


METHODS = [("none", 3), ("fastv", 3), ("random", 2), ("sharp", 3)]  # K <= 3: layers 5, 6 share KV of 3, 4
VARIANTS = {
    "plain": {},
    # full layers: head size 32, one key/value head, no v_proj (values are the keys)
    "k_eq_v": dict(attention_k_eq_v=True, global_head_dim=32, num_global_key_value_heads=1),
    # full layers at head size 32 with the sliding layers' key/value heads; the KV-sharing layers' MLPs twice as wide
    "double_wide": dict(global_head_dim=32, use_double_wide_mlp=True),
    # every layer: its dense MLP and, beside it, a router and 2 of 4 experts
    "moe": dict(enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=32),
}
VLM_METHODS = [("none", 2), ("fastv", 2), ("random", 1), ("sharp", 2)]


@pytest.fixture(scope="module")
def text_models():
    return {name: _gemma4_text(**GEMMA4_FEATURES, **overrides) for name, overrides in VARIANTS.items()}


def _padded_batch() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Two samples of 64 tokens, the second left-padded by 5, 40 video tokens in 5 frames from position 8."""
    ids, frame_map = _prompt()
    ids = torch.cat([ids, ids.flip(1)])
    mask = torch.ones_like(ids)
    mask[1, :5], ids[1, :5] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}, frame_map.repeat(2, 1)


@pytest.mark.parametrize("generate", [True, False], ids=["last_row", "every_row"])
@pytest.mark.parametrize("method,k", METHODS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gemma4_text_stacks_match_the_counter_exactly(text_models, variant, method, k, generate):
    """`generate`'s prefill (logits_to_keep=1: the KV-sharing layers and the LM head on the last row), the default,
    and a plain forward (logits_to_keep=0: every row through them)."""
    model = text_models[variant]
    inputs, frame_map = _padded_batch()
    with sp.apply(model, method=method, retention=0.3, layer=k) as handle, handle.visual_frames(frame_map):
        measured = measure_prefill_flops(model, inputs, logits_to_keep=1 if generate else 0)
        record = handle.last
        if generate:
            report = prefill_flops(model, record)
        else:
            report = prefill_flops(model, record, lm_head_tokens=record.kept_len, kv_shared_sliced=False)
    # every term is a matmul the counter sees; the selection term is approximate by design and bounds the rest
    assert abs(report.total - measured.text) <= report.breakdown["selection"], (report.breakdown, measured)
    if method == "none":
        assert report.total == report.unpruned == measured.text
    assert report.summary["kv_shared_rows"] == (1 if generate else None)
    assert report.breakdown["per_layer_inputs"] > 0 and report.breakdown["after_k.per_layer"] > 0
    if method in ("fastv", "sharp"):
        assert report.summary["score_layer"] == 1  # the last full-attention layer below K
    if method == "sharp":  # the blank pass projects its own per-layer inputs and reruns layers 0..1
        assert report.breakdown["posc_pass.per_layer_inputs"] == report.breakdown["per_layer_inputs"]
        assert report.breakdown["posc_pass.mlp"] * 3 == report.breakdown["before_k.mlp"] * 2
    ideal = prefill_flops(model, record, convention="ideal")
    assert ideal.total < report.total


@pytest.fixture(scope="module")
def vlms():
    models = {}
    for layers in (4, 6):  # 6: the last two layers share KV
        model = tiny_model("gemma4", num_layers=layers)
        models[layers] = (model, tiny_inputs(model, [3, 6], [5, 2], padding_side="left"))
    return models


@pytest.mark.parametrize("method,k", VLM_METHODS)
@pytest.mark.parametrize("layers", [4, 6])
def test_the_gemma4_vlm_matches_the_counter_exactly(vlms, layers, method, k):
    model, inputs = vlms[layers]
    with sp.apply(model, method=method, retention=0.3, layer=k) as handle:
        with torch.no_grad():
            model(**inputs)  # PosC's first prefill of a video size also encodes its black frame: cached after
        measured = measure_prefill_flops(model, inputs)
        report = prefill_flops(model, handle.last)
    assert handle.last.attention_mask is not None  # a left-padded batch
    assert abs(report.total - measured.text) <= report.breakdown["selection"], (report.breakdown, measured)
    if method == "none":
        assert report.total == report.unpruned == measured.text
    assert report.summary.get("kv_shared_rows") == (1 if layers == 6 else None)
    assert prefill_flops(model, handle.last, convention="ideal").total < report.total


def test_a_pruned_output_reaches_the_lm_head_as_the_rows_asked_for(vlms):
    """Gemma 4 takes the last `logits_to_keep` rows only of a decoder output as long as the input; the engine cuts a
    pruned output (L' rows, no KV-sharing layer to cut it to the last row) to those rows itself, so the LM head
    projects one row, as unpruned, and both conventions count one."""
    model, inputs = vlms[4]
    with sp.apply(model, method="fastv", retention=0.3, layer=2) as handle, torch.no_grad():
        last = model(**inputs, logits_to_keep=1).logits
        every = model(**inputs).logits
    record = handle.last
    assert last.shape[1] == 1 and every.shape[1] == record.kept_len < record.seq_len
    torch.testing.assert_close(last[:, 0], every[:, -1])
    dims = TextDims.from_config(model)
    executed, ideal = prefill_flops(model, record), prefill_flops(model, record, convention="ideal")
    assert executed.breakdown["lm_head"] == ideal.breakdown["lm_head"] == 2 * dims.lm_head_per_token  # 2 samples
    with sp.apply(model, method="fastv", retention=0.3, layer=2) as handle:
        measured = measure_prefill_flops(model, inputs)  # generate's prefill: logits_to_keep=1
    report = prefill_flops(model, handle.last)
    assert abs(report.total - measured.text) <= report.breakdown["selection"]


def _attention_weights(model, layers, call) -> dict[int, torch.Tensor]:
    """Each layer's first attention weights in `call()` (eager attention returns them to the attention module)."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        layer.self_attn.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, seen.get(i, out[1])))
        for i, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            call()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _ideal_less_mask_pairs(dims, record, mask, weights, ideal, k) -> dict[bool, int]:
    """The ideal attention FLOPs before and after K less the pairs each layer's weights allow (a pair the mask allows
    has a positive weight, one it masks exactly 0), counted over real query rows and keys."""
    left = {False: ideal.breakdown["before_k.attention"], True: ideal.breakdown["after_k.attention"]}
    batch, length = mask.shape
    for layer, w in weights.items():
        after = layer >= k
        positions = torch.arange(length).expand(batch, length)
        if after and record.output_positions is not None:
            positions = torch.stack(list(record.output_positions))
        keys = torch.stack([mask[b, positions[b]] for b in range(batch)])
        rows = keys[:, -w.shape[2] :]  # the KV-sharing layers run on the last rows
        left[after] -= int(((w[:, 0] > 0) & rows[:, :, None] & keys[:, None, :]).sum()) * dims.attention_flops_per_pair(
            layer
        )
    return left


@pytest.mark.parametrize("method,k", VLM_METHODS)
def test_ideal_pairs_are_the_pairs_the_vlm_masks_allow(method, k):
    """Layer by layer, on the KV-sharing layers' last rows too: a frame's tokens see each other both ways in sliding
    layers, after K among the kept ones."""
    model = tiny_model("gemma4", num_layers=6, attn_implementation="eager")
    dims = TextDims.from_config(model)
    inputs = tiny_inputs(model, [3, 6], [5, 2], padding_side="left")
    layers = model.model.language_model.layers
    with sp.apply(model, method=method, retention=0.3, layer=k) as handle:
        with torch.no_grad():
            model(**inputs)  # the black frame, once
        weights = _attention_weights(model, layers, lambda: model(**inputs, logits_to_keep=1))
        record = handle.last
        ideal = prefill_flops(model, record, convention="ideal")
    assert weights[4].shape[2] == weights[5].shape[2] == 1  # the KV-sharing layers ran on the last row
    left = _ideal_less_mask_pairs(dims, record, inputs["attention_mask"].bool(), weights, ideal, k)
    assert left == {False: 0, True: 0}  # ShaRP's layers < K included: SegM leaves the sliding ones alone
    # without the frames' backward pairs the count is smaller
    causal = count_flops(
        dataclasses.replace(dims, vision_bidirectional=False),
        PrefillLayout.from_record(record),
        sp.PruneConfig.from_dict(record.config),
        convention="ideal",
    )
    assert causal.total < ideal.total


@pytest.mark.parametrize("method,k", METHODS)
def test_ideal_pairs_are_the_pairs_the_text_stack_masks_allow(method, k):
    model = _gemma4_text(**GEMMA4_FEATURES, global_head_dim=32)
    model.set_attn_implementation("eager")
    dims = TextDims.from_config(model)
    assert not dims.vision_bidirectional
    inputs, frame_map = _padded_batch()
    with sp.apply(model, method=method, retention=0.3, layer=k) as handle, handle.visual_frames(frame_map):
        weights = _attention_weights(model, model.model.layers, lambda: model(**inputs, logits_to_keep=1))
        record = handle.last
        ideal = prefill_flops(model, record, convention="ideal")
    left = _ideal_less_mask_pairs(dims, record, inputs["attention_mask"].bool(), weights, ideal, k)
    assert left == {False: 0, True: 0}


def test_the_shapes_are_read_per_layer(text_models):
    """Each layer's projections from its own modules: twice the weights of its q/k/v/o, MLP and per-layer
    projections (one multiply-add per weight and token)."""
    for name, model in text_models.items():
        dims = TextDims.from_config(model)
        assert dims.kv_sources == (0, 1, 2, 3, 4, 3, 4) and dims.first_kv_shared_layer == 5
        assert dims.per_layer_inputs_per_token == 2 * model.model.per_layer_model_projection.weight.numel()
        for i, layer in enumerate(model.model.layers):
            attention = sum(m.weight.numel() for m in layer.self_attn.modules() if isinstance(m, torch.nn.Linear))
            assert dims.qkvo_flops_per_token(i) == 2 * attention, (name, i)
            assert dims.attention_flops_per_pair(i) == 4 * 4 * layer.self_attn.head_dim
            mlp = 2 * sum(p.numel() for p in layer.mlp.parameters())
            if name == "moe":
                experts = layer.experts
                per_expert = (experts.gate_up_proj.numel() + experts.down_proj.numel()) // experts.num_experts
                mlp += 2 * layer.router.proj.weight.numel() + 2 * 2 * per_expert  # router, 2 experts
            assert dims.mlp_flops_per_token(i) == mlp, (name, i)
            gate = layer.per_layer_input_gate.weight.numel() + layer.per_layer_projection.weight.numel()
            assert dims.per_layer_flops_per_token == 2 * gate
    k_eq_v = TextDims.from_config(text_models["k_eq_v"])
    assert k_eq_v.layer_head_dims == (16, 32, 16, 16, 32, 16, 32)
    assert k_eq_v.layer_kv_heads == (2, 1, 2, 2, 1, 2, 1)
    assert k_eq_v.layer_kv_projections == (2, 1, 2, 2, 1, 0, 0)  # full layers: keys only; sharing layers: none
    assert TextDims.from_config(text_models["double_wide"]).layer_intermediate_sizes == (128,) * 5 + (256,) * 2


def test_a_flash_attention_model_runs_the_kv_sharing_layers_on_every_row():
    """Flash and flex attention cannot slice a mask, so transformers runs every row through the KV-sharing layers
    there; the count follows the config's attention implementation, and `kv_shared_sliced` overrides it."""
    from test_sliding_window import GEMMA4_KINDS
    from transformers import Gemma4TextConfig

    config = Gemma4TextConfig(num_hidden_layers=7, layer_types=list(GEMMA4_KINDS), num_kv_shared_layers=2)
    prune = sp.PruneConfig(method="fastv", retention=0.25, layer=3)
    sliced = estimate(config, 4000, 3136, config=prune, prompt_len=20)
    config._attn_implementation = "flash_attention_2"
    every = estimate(config, 4000, 3136, config=prune, prompt_len=20)
    assert sliced.summary["kv_shared_rows"] == 1 and every.summary["kv_shared_rows"] is None
    assert every.breakdown["after_k.mlp"] > sliced.breakdown["after_k.mlp"]
    assert estimate(config, 4000, 3136, config=prune, prompt_len=20, kv_shared_sliced=True).total == sliced.total
    # the unpruned prefill's KV-sharing layers run on the same rows: 2 of 7 layers on one row
    dims = TextDims.from_config(config)
    mlp = sum(dims.mlp_flops_per_token(i) for i in range(7))
    assert sliced.unpruned_breakdown["before_k.mlp"] + sliced.unpruned_breakdown["after_k.mlp"] == (
        4000 * (mlp - 2 * dims.mlp_per_token) + 2 * dims.mlp_per_token
    )


def test_bidirectional_frames_by_hand():
    """12 tokens, window 4, two frames of 3 video tokens at 3..5 and 7..9: every token sees itself and the 3
    positions before it (1 + 2 + 3 + 9 x 4 = 42 pairs), and a frame's token also its frame's later tokens
    (2 + 1 per frame)."""
    model_config = tiny_model("gemma4", num_layers=4).config
    model_config.text_config.sliding_window = 4
    dims = TextDims.from_config(model_config)
    assert dims.vision_bidirectional and dims.layer_kinds[1] == "sliding_attention"
    visual = torch.tensor([3, 4, 5, 7, 8, 9])
    sample = SampleLayout(valid=torch.ones(12, dtype=torch.bool), visual=visual, kept_visual=6)
    assert sample.vision_blocks.tolist() == [-1, -1, -1, 0, 0, 0, -1, 1, 1, 1, -1, -1]
    report = count_flops(dims, PrefillLayout((sample,), 12), sp.PruneConfig(method="none", layer=2), convention="ideal")
    full, sliding = 12 * 13 // 2, 42 + 2 * 3
    # layers 0 (full) and 1 (sliding) before K
    per_pair = [dims.attention_flops_per_pair(i) for i in range(2)]
    assert report.breakdown["before_k.attention"] == full * per_pair[0] + sliding * per_pair[1]
    # keeping 3 of them (4, 8, 9) after K: 4 sees 3 kept keys back (1, 2, 4; 3 and 0 are beyond reach or pruned),
    # and 8 sees 9 in its frame
    kept = dataclasses.replace(sample, kept_visual=3, kept=torch.tensor([4, 8, 9]))
    layout = PrefillLayout((kept,), 12)
    report = count_flops(dims, layout, sp.PruneConfig(method="random", layer=2), convention="ideal")
    positions = kept.kept_positions.tolist()
    assert positions == [0, 1, 2, 4, 6, 8, 9, 10, 11]
    window = sum(sum(1 for p in positions if q - 4 < p <= q) for q in positions)
    assert report.breakdown["after_k.attention"] == (window + 1) * dims.attention_flops_per_pair(2) + 45 * (
        dims.attention_flops_per_pair(3)
    )


def test_the_estimate_needs_the_frames_for_the_ideal_count_of_a_bidirectional_vlm():
    config = tiny_model("gemma4", num_layers=6).config
    prune = sp.PruneConfig(method="fastv", retention=0.25, layer=2)
    with pytest.raises(ConfigError, match="num_frames"):
        estimate(config, 400, 320, config=prune, prompt_len=20, convention="ideal")
    by_frames = [
        estimate(config, 400, 320, config=prune, prompt_len=20, convention="ideal", num_frames=f) for f in (4, 8)
    ]
    assert by_frames[0].total > by_frames[1].total  # longer frames, more pairs both ways
    executed = {estimate(config, 400, 320, config=prune, prompt_len=20, num_frames=f).total for f in (None, 4, 8)}
    assert len(executed) == 1


def test_gemma4_configs_the_count_refuses():
    from test_sliding_window import GEMMA4_KINDS
    from transformers import Gemma4TextConfig

    with pytest.raises(UnsupportedModelError, match="causal"):
        TextDims.from_config(Gemma4TextConfig(num_hidden_layers=6, use_bidirectional_attention="all"))
    # every full-attention layer sharing KV: their keys come from outside the model
    with pytest.raises(UnsupportedModelError, match="outside the model"):
        TextDims.from_config(
            Gemma4TextConfig(num_hidden_layers=3, layer_types=["full_attention"] * 3, num_kv_shared_layers=3)
        )
    # a K after a layer whose keys later layers share: the engine refuses it, so does the count
    config = Gemma4TextConfig(num_hidden_layers=7, layer_types=list(GEMMA4_KINDS), num_kv_shared_layers=2)
    with pytest.raises(ConfigError, match="K <= 3"):
        estimate(config, 400, 320, config=sp.PruneConfig(method="random", retention=0.3, layer=4))
