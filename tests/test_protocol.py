"""transformers' calling protocol: spoken by one module, and every surprise ends in a loud ProtocolError.

The simulations below change how the real tiny models are called (hooks that run before sharp-prune's, or a
layer called around its hooks), the way a new transformers release could, and check that the forward raises
instead of returning unpruned output or a stale record.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
import transformers
from transformers.cache_utils import DynamicCache

import sharp_prune as sp
from sharp_prune import hf_protocol as hf
from sharp_prune.testing import tiny_inputs, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def _layers(model):
    return model.model.language_model.layers


def _generate(model, inputs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=3, do_sample=False)


def _assert_loud(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert transformers.__version__ in message and hf.tested_range() in message
    for fragment in fragments:
        assert fragment in message, message


# ----------------------------------------------------------------------------- the simulations
def test_layers_receiving_the_cache_under_an_unknown_name_raise(family):
    model = tiny_model(family)
    inputs = tiny_inputs(model, [3], [4])
    seen_as: dict[str, str] = {}

    def rename(layer, args, kwargs):  # runs before sharp-prune's hooks: the cache now travels as `kv_store`
        for name in hf.LAYER_CACHE_NAMES:
            if name in kwargs:
                seen_as["name"] = name
                kwargs["kv_store"] = kwargs.pop(name)
        return args, kwargs

    for layer in _layers(model):
        layer.register_forward_pre_hook(rename, with_kwargs=True, prepend=True)
        original = layer.forward

        def forward(*args, _original=original, kv_store=None, **kwargs):
            return _original(*args, **{seen_as["name"]: kv_store}, **kwargs)

        layer.forward = forward
    reference = _generate(model, inputs)  # the renamed protocol itself works unpruned
    handle = sp.apply(model, method="fastv", retention=0.25, layer=2)
    with pytest.raises(sp.ProtocolError) as error:
        _generate(model, inputs)
    _assert_loud(error, "`kv_store`")
    assert handle.last is None, "a failed prefill must not leave a record behind"
    handle.remove()
    assert torch.equal(_generate(model, inputs), reference)


def test_a_decoding_step_that_looks_like_a_prefill_raises():
    """The 5.24 failure: the model-level hook does not see the cache, so every decoding step looked new."""
    model = tiny_model("llava_onevision")
    inputs = tiny_inputs(model, [3], [4])
    stash: dict[str, object] = {}

    def hide(module, args, kwargs):  # before sharp-prune's pre-hook
        for name in hf.MODEL_CACHE_NAMES:
            if kwargs.get(name) is not None:
                stash[name] = kwargs.pop(name)
        return args, kwargs

    def restore(module, args, kwargs):  # after it
        kwargs.update(stash)
        stash.clear()
        return args, kwargs

    model.register_forward_pre_hook(hide, with_kwargs=True, prepend=True)
    handle = sp.apply(model, method="fastv", retention=0.25, layer=2)
    model.register_forward_pre_hook(restore, with_kwargs=True)
    with pytest.raises(sp.ProtocolError) as error:
        _generate(model, inputs)
    _assert_loud(error, "looked like a prefill")
    assert handle.last is None
    handle.remove()


def test_a_prefill_that_never_reaches_layer_k_raises():
    model = tiny_model("qwen2_vl")
    inputs = tiny_inputs(model, [3], [4])
    handle = sp.apply(model, method="uniform", retention=0.25, layer=2)

    class Bypass(torch.nn.Module):  # calls layer K's forward around its hooks, as a fused or compiled path might
        def __init__(self, layer):
            super().__init__()
            self.inner = layer

        def forward(self, *args, **kwargs):
            return self.inner.forward(*args, **kwargs)

    layers = _layers(model)
    layers[2] = Bypass(layers[2])
    with pytest.raises(sp.ProtocolError) as error, torch.no_grad():
        model(**inputs)
    _assert_loud(error, "without reaching decoder layer 2")
    assert handle.last is None
    layers[2] = layers[2].inner
    with torch.no_grad():
        model(**inputs)
    assert handle.last.budget == [16]
    handle.remove()


def test_a_sequence_argument_the_engine_would_not_slice_raises():
    model = tiny_model("qwen2_5_vl")
    inputs = tiny_inputs(model, [3], [4])

    def add_argument(layer, args, kwargs):  # a new per-token input of layer K (the decoder layers take **kwargs)
        hidden = args[0] if args else kwargs["hidden_states"]
        kwargs["token_positions"] = torch.arange(hidden.shape[1])[None]
        return args, kwargs

    _layers(model)[2].register_forward_pre_hook(add_argument, with_kwargs=True, prepend=True)
    handle = sp.apply(model, method="fastv", retention=0.25, layer=2)
    with torch.no_grad(), pytest.raises(sp.ProtocolError) as error:
        model(**inputs)
    handle.remove()
    _assert_loud(error, "`token_positions`")


def test_a_returned_cache_that_layer_k_never_saw_raises():
    model = tiny_model("llava_onevision")
    inputs = tiny_inputs(model, [3], [4])

    def swap_cache(module, args, output):  # runs before sharp-prune's output hook
        for name in hf.MODEL_CACHE_NAMES:
            if getattr(output, name, None) is not None:
                setattr(output, name, DynamicCache())
        return output

    model.register_forward_hook(swap_cache, prepend=True)
    with sp.apply(model, method="fastv", retention=0.25, layer=2) as handle, torch.no_grad():
        with pytest.raises(sp.ProtocolError) as error:
            model(**inputs, use_cache=True)
        assert handle.last is None
    _assert_loud(error, "did not receive")


def test_attention_bypassing_the_registered_function_raises():
    model = tiny_model("qwen2_vl")
    inputs = tiny_inputs(model, [3], [4])
    handle = sp.apply(model, method="sharp", retention=0.25, layer=2)
    hf.set_attention_implementation(model.config.text_config, "sdpa")  # behind the handle's back
    with pytest.raises(sp.ProtocolError) as error, torch.no_grad():
        model(**inputs)
    _assert_loud(error, "registered attention function")
    handle.remove()


# ----------------------------------------------------------------------------- reading calls
def test_the_cache_is_found_under_every_name_of_the_tested_releases():
    cache = DynamicCache()
    for name in hf.MODEL_CACHE_NAMES:
        call = hf.read_model_call(["input_ids"], (torch.ones(1, 3, dtype=torch.long),), {name: cache})
        assert call.cache is cache and call.is_prefill and call.seq_len == 3
    with pytest.raises(sp.ProtocolError, match="`kv`"):
        hf.read_model_call([], (), {"input_ids": torch.ones(1, 3, dtype=torch.long), "kv": cache})
    with pytest.raises(sp.InputError, match="not a transformers Cache"):
        hf.read_model_call([], (), {"input_ids": torch.ones(1, 3, dtype=torch.long), "past_key_values": ((1, 2),)})
    layer = hf.read_layer_call((torch.zeros(1, 3, 4),), {"cache": cache, "use_cache": True})
    assert layer.cache is cache and "cache" not in layer.rerun_kwargs() and layer.rerun_kwargs()["use_cache"] is False


def test_generate_passes_the_cache_under_the_installed_release_s_name():
    """Read off the installed release: which name `generate` uses is what `MODEL_CACHE_NAMES` must cover."""
    model = tiny_model("llava_onevision")
    names: list[str] = []

    def spy(module, args, kwargs):
        names.extend(n for n, v in kwargs.items() if isinstance(v, hf.Cache))

    model.register_forward_pre_hook(spy, with_kwargs=True)
    _generate(model, tiny_inputs(model, [3], [4]))
    assert names and set(names) <= set(hf.MODEL_CACHE_NAMES)


# ----------------------------------------------------------------------------- the declared range
def test_declared_range_is_the_same_in_pyproject_protocol_and_readme():
    requirements = re.findall(r'^\s*"(transformers[^"]*)",', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert [r.replace(" ", "") for r in requirements] == [f"transformers{hf.tested_range()}"]
    assert f"transformers{hf.tested_range()}" in (ROOT / "README.md").read_text().replace("`", "")
    assert hf.version_is_tested(hf.TESTED_FLOOR)
    assert not hf.version_is_tested(hf.TESTED_CAP + ".0")


def test_an_untested_release_is_announced_once(monkeypatch, caplog):
    monkeypatch.setattr(hf, "installed_version", lambda: "9.0.0")
    monkeypatch.setattr(hf, "_warned_untested", False)
    model = tiny_model("qwen2_vl")
    with caplog.at_level(logging.WARNING, logger="sharp_prune.hf_protocol"):
        sp.apply(model, method="fastv").remove()
        sp.apply(model, method="fastv").remove()
    warnings = [r for r in caplog.records if "9.0.0" in r.getMessage()]
    assert len(warnings) == 1 and hf.tested_range() in warnings[0].getMessage()


# ----------------------------------------------------------------------------- one module speaks the protocol
PROTOCOL_NAMES = [
    r"""["']past_key_values["']""",
    r"""["']cache["']""",
    r"""["']mm_encoder_outputs["']""",
    r"\.past_key_values\b",
    r"\._attn_implementation",
    r"_global_mapping",
    r"\bAttentionInterface\b",
    r"\bAttentionMaskInterface\b",
    r"\.layer_idx\b",
    r"\.scaling\b",
    r"\.self_attn\b",
    r"(?<!hf)\.embed_tokens\b",
    # forward arguments read from a hook's kwargs (building inputs as a user would, from a processor, is fine)
    r"""(kwargs(\.get\(|\[)|inputs\.get\()["'](input_ids|inputs_embeds|attention_mask|position_ids|position_embeddings|"""
    r"""hidden_states|use_cache|pixel_values_videos|video_grid_thw)["']""",
]


def test_no_module_but_the_protocol_reads_transformers_calls_by_name():
    offenders = []
    for path in sorted((ROOT / "src" / "sharp_prune").rglob("*.py")):
        if path.name == "hf_protocol.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(re.search(pattern, code) for pattern in PROTOCOL_NAMES):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "transformers' protocol read outside hf_protocol.py:\n" + "\n".join(offenders)
