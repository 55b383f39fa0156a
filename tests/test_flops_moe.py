"""The FLOPs model on mixture-of-experts text stacks (Qwen3-VL-MoE, GLM-4.5V, Qwen3.5-MoE): exact against torch's
FlopCounterMode on tiny random models of the real classes, under each of transformers' experts implementations."""

from __future__ import annotations

import pytest
import torch

import sharp_prune as sp
from sharp_prune.errors import UnsupportedModelError
from sharp_prune.measure.flop_counter import _grouped_mm_flop, flop_counter_mode
from sharp_prune.measure.flops import TextDims, estimate, measure_prefill_flops, prefill_flops
from sharp_prune.testing import PAD_ID, TinyVideo, tiny_inputs, tiny_model

EXPERTS = ["grouped_mm", "batched_mm", "eager"]  # transformers' default first


def _qwen3_vl_moe_mixed():
    """Qwen3-VL-MoE with dense layers among the routed ones: `decoder_sparse_step=2` and `mlp_only_layers=[3]` make
    layer 1 the only mixture of experts of four."""
    import transformers

    from sharp_prune.models import tiny
    from sharp_prune.models.qwen3_vl import tiny_qwen3_vl_config

    config = tiny_qwen3_vl_config(4, moe=True)
    config.text_config.decoder_sparse_step = 2
    config.text_config.mlp_only_layers = [3]
    torch.manual_seed(0)
    return tiny.finish(transformers.Qwen3VLMoeForConditionalGeneration(config), "sdpa", torch.float32)


def _qwen3_vl_moe_inputs(model):
    from sharp_prune.models.qwen3_vl import tiny_inputs_qwen3_vl

    return tiny_inputs_qwen3_vl(model, [3, 6], [5, 2], TinyVideo(), "left", 0)


@pytest.fixture(scope="module")
def vlms():
    qwen = _qwen3_vl_moe_mixed()
    glm = tiny_model("glm4v_moe")
    return {
        "qwen3_vl_moe": (qwen, _qwen3_vl_moe_inputs(qwen)),
        "glm4v_moe": (glm, tiny_inputs(glm, [3, 6], [5, 2], padding_side="left")),
    }


@pytest.mark.parametrize("experts", EXPERTS)
@pytest.mark.parametrize("method", ["none", "fastv", "sharp"])
@pytest.mark.parametrize("family", ["qwen3_vl_moe", "glm4v_moe"])
def test_moe_vlms_match_the_counter_exactly(vlms, family, method, experts):
    model, inputs = vlms[family]
    model.set_experts_implementation(experts)
    try:
        with sp.apply(model, method=method, retention=0.3, layer=2) as handle:
            with torch.no_grad():
                model(**inputs)  # PosC's first prefill of a video size also encodes its black frame: cached after
            measured = measure_prefill_flops(model, inputs)
            report = prefill_flops(model, handle.last)
    finally:
        model.set_experts_implementation("grouped_mm")
    # Every term is a matmul the counter sees; the selection term is approximate by design and bounds the rest.
    assert abs(report.total - measured.text) <= report.breakdown["selection"], (report.breakdown, measured)
    if method == "none":
        assert report.total == measured.text
    assert handle.last.attention_mask is not None  # a padded batch: the executed count routes the padding too
    ideal = prefill_flops(model, handle.last, convention="ideal")
    assert ideal.total < report.total


def test_the_dense_and_routed_layers_are_read_from_each_config(vlms):
    qwen = TextDims.from_config(vlms["qwen3_vl_moe"][0])
    assert qwen.moe_layers == (False, True, False, False)
    assert [type(layer.mlp).__name__ for layer in vlms["qwen3_vl_moe"][0].model.language_model.layers] == [
        "Qwen3VLMoeTextMLP",
        "Qwen3VLMoeTextSparseMoeBlock",
        "Qwen3VLMoeTextMLP",
        "Qwen3VLMoeTextMLP",
    ]
    glm = TextDims.from_config(vlms["glm4v_moe"][0])
    assert glm.moe_layers == (False, True, True, True) and glm.shared_expert_size == 32 and not glm.shared_expert_gate
    d, e, k, ie = 64, 4, 2, 32
    assert glm.moe_per_token == 2 * d * e + 2 * k * 3 * d * ie + 2 * 3 * d * 32  # router, 2 experts, 1 shared
    assert glm.mlp_flops_per_token(0) == glm.mlp_per_token


def test_qwen3_5_moe_hybrid_stack_matches_the_counter_exactly():
    """Gated DeltaNet and full-attention layers, each with routed experts and a gated shared expert."""
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

    torch.manual_seed(0)
    kinds = ["linear_attention", "linear_attention", "full_attention"] * 2
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
        shared_expert_intermediate_size=48,
        vocab_size=256,
        layer_types=kinds,
        pad_token_id=PAD_ID,
    )
    model = Qwen3_5MoeForCausalLM(config).eval()
    dims = TextDims.from_config(model)
    assert dims.moe_layers == (True,) * 6 and dims.shared_expert_gate and dims.has_linear
    assert dims.moe_per_token == 2 * 64 * 4 + 2 * 2 * 3 * 64 * 32 + 2 * 3 * 64 * 48 + 2 * 64
    ids = torch.randint(3, 200, (1, 150), generator=torch.Generator().manual_seed(1))
    frame_map = sp.frame_map_for_span(150, start=8, num_frames=8, tokens_per_frame=15)
    for method, k in [("none", 3), ("fastv", 3), ("sharp", 4)]:
        with sp.apply(model, method=method, retention=0.3, layer=k) as handle, handle.visual_frames(frame_map):
            measured = measure_prefill_flops(model, {"input_ids": ids})
            report = prefill_flops(model, handle.last)
        assert abs(report.total - measured.text) <= report.breakdown["selection"], (method, report.breakdown)
        assert report.breakdown["before_k.linear"] > 0 and report.breakdown["after_k.mlp"] > 0


def test_the_grouped_matmul_formula():
    """torch has no formula for `aten._grouped_mm` (0 FLOPs); `flop_counter_mode` counts 2 K per output entry."""
    x, w = torch.randn(10, 16), torch.randn(4, 16, 8)
    offs = torch.tensor([2, 5, 7, 10], dtype=torch.int32)
    counter = flop_counter_mode()
    with counter:
        torch.nn.functional.grouped_mm(x, w, offs=offs)
    assert counter.get_total_flops() == 2 * 10 * 16 * 8
    assert _grouped_mm_flop((10, 16), (4, 16, 8), out_shape=(10, 8)) == 2 * 10 * 16 * 8
    assert _grouped_mm_flop((4, 10, 16), (4, 16, 8), out_shape=(4, 10, 8)) == 2 * 4 * 10 * 16 * 8
    assert _grouped_mm_flop((10, 16), (16, 8), out_shape=(4, 10, 8)) == 2 * 10 * 16 * 8  # the groups split K


def test_moe_estimates_scale_with_the_active_experts_not_all_of_them():
    from transformers import Qwen3VLMoeTextConfig

    config = Qwen3VLMoeTextConfig(num_hidden_layers=4)  # defaults: 60 experts, 4 per token
    report = estimate(config, 2000, 1568, config=sp.PruneConfig(method="fastv", retention=0.2, layer=2))
    dims = TextDims.from_config(config)
    assert dims.moe_layers == (True,) * 4
    per_token = report.unpruned_breakdown["before_k.mlp"] // (2 * 2000)
    assert per_token == dims.moe_per_token < 2 * 3 * dims.hidden_size * dims.moe_intermediate_size * dims.num_experts
    assert 0 < report.ratio < 1


def test_other_mixture_of_experts_stacks_are_refused():
    from transformers import MixtralConfig

    with pytest.raises(UnsupportedModelError, match="mixture-of-experts"):
        TextDims.from_config(MixtralConfig(num_hidden_layers=2))
