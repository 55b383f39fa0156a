"""Every bad input gets the documented error, raised before anything is attached."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sharp_prune as sp
from sharp_prune.testing import tiny_causal_lm, tiny_inputs, tiny_model


def _untouched(model) -> tuple:
    return (
        model.config.text_config._attn_implementation,
        sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()),
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"retention": 0.0}, sp.ConfigError, "outside (0, 1]"),
        ({"retention": 1.5}, sp.ConfigError, "outside (0, 1]"),
        ({"retention": -0.1}, sp.ConfigError, "outside (0, 1]"),
        ({"retention": float("nan")}, sp.ConfigError, "outside (0, 1]"),
        ({"retention": "0.2"}, sp.ConfigTypeError, "must be a number"),
        ({"retention": True}, sp.ConfigTypeError, "got bool"),
        ({"layer": 0}, sp.ConfigError, ">= 1"),
        ({"layer": 2.0}, sp.ConfigTypeError, "must be an int"),
        ({"method": "fastvv"}, sp.ConfigError, "choose one of"),
        ({"method": 3}, sp.ConfigTypeError, "method name"),
        ({"seed": "x"}, sp.ConfigTypeError, "must be an int"),
        ({"record_scores": 1}, sp.ConfigTypeError, "must be a bool"),
    ],
)
def test_config_validation(kwargs, error, words):
    with pytest.raises(error, match=None) as info:
        sp.PruneConfig(**kwargs)
    assert words in str(info.value)
    # The library's errors are also the built-in kinds users catch.
    assert isinstance(info.value, ValueError | TypeError)


def test_unknown_keys_from_an_old_config_are_named():
    data = sp.PruneConfig().to_dict() | {"ratio": 0.2}
    with pytest.raises(sp.ConfigError, match="ratio"):
        sp.PruneConfig.from_dict(data)
    assert sp.PruneConfig.from_dict(sp.PruneConfig(retention=0.3).to_dict()).retention == 0.3


@pytest.mark.parametrize("layer", [4, 5, 100])
def test_layer_beyond_model_is_refused_before_attaching(layer):
    model = tiny_model("llava_onevision", num_layers=4)
    before = _untouched(model)
    with pytest.raises(sp.ConfigError, match=r"outside \[1, 3\]"):
        sp.apply(model, sp.PruneConfig(layer=layer))
    assert _untouched(model) == before


def test_wrong_config_type():
    model = tiny_model("qwen2_vl")
    before = _untouched(model)
    with pytest.raises(sp.ConfigTypeError, match="expects a PruneConfig"):
        sp.apply(model, {"method": "fastv"})
    with pytest.raises(sp.ConfigError, match="outside"):
        sp.apply(model, retention=2.0)
    assert _untouched(model) == before


def test_unsupported_model_names_the_supported_ones():
    with pytest.raises(sp.UnsupportedModelError, match="LlavaOnevisionForConditionalGeneration"):
        sp.apply(nn.Linear(3, 3), sp.PruneConfig())
    with pytest.raises(sp.UnsupportedModelError, match="supported"):
        sp.apply("llava", sp.PruneConfig())


def test_unsupported_attention_implementation():
    model = tiny_causal_lm()
    model.config._attn_implementation_internal = "flex_attention"
    with pytest.raises(sp.ConfigError, match="sdpa"):
        sp.apply(model, sp.PruneConfig())
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_forward_errors_are_raised_before_any_layer_runs():
    model = tiny_model("llava_onevision")
    inputs = tiny_inputs(model, [3], [4])
    calls = []
    model.model.language_model.layers[0].register_forward_pre_hook(lambda *a: calls.append(1))
    with sp.apply(model, method="fastv", retention=0.2):
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        with pytest.raises(sp.InputError, match="input_ids"):
            model(inputs_embeds=embeds, pixel_values_videos=inputs["pixel_values_videos"])
    assert calls == []


def test_generic_frame_map_must_match_the_input():
    model = tiny_causal_lm()
    handle = sp.apply(model, method="fastv", retention=0.5)
    short_map = torch.full((1, 10), -1)
    with pytest.raises(sp.InputError, match="shape"), handle.visual_frames(short_map), torch.no_grad():
        model(input_ids=torch.randint(3, 100, (1, 12)))
    with pytest.raises(sp.InputError, match="integer tensor"):
        handle.set_visual_frames(torch.zeros(1, 12))
    uneven = torch.full((2, 12), -1)
    uneven[0, 2:6] = 0
    uneven[1, 2:8] = 0
    with pytest.raises(sp.InputError, match="same number of video tokens"), handle.visual_frames(uneven):
        model(input_ids=torch.randint(3, 100, (2, 12)))
    handle.remove()


def test_static_cache_is_refused():
    model = tiny_causal_lm()
    frame_map = sp.frame_map_for_span(20, start=2, num_frames=2, tokens_per_frame=5)
    handle = sp.apply(model, method="fastv", retention=0.5)
    with pytest.raises(sp.InputError, match="DynamicCache"), handle.visual_frames(frame_map):
        model.generate(torch.randint(3, 100, (1, 20)), max_new_tokens=2, cache_implementation="static")
    handle.remove()
