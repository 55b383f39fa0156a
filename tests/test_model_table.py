"""The README's model table and the adapter registry agree; a refused family is refused at `apply` with its reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import sharp_prune as sp
from sharp_prune.models import FAMILIES, REFUSED

README = Path(__file__).resolve().parents[1] / "README.md"


def _table() -> dict[str, tuple[str, str]]:
    """family -> (model class cell, status) from the README's model table."""
    text = README.read_text()
    section = text[text.index("## Supported models and methods") :]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
        elif rows and not line.startswith("|"):
            break  # the end of the first table
    return rows


def test_every_registered_family_is_in_the_table_and_nothing_else_is_supported():
    table = _table()
    supported = {family for family, (_, status) in table.items() if status == "supported"}
    assert supported == set(FAMILIES) | {"generic"}
    for name, entry in FAMILIES.items():
        assert f"`{entry.class_names[0]}`" in table[name][0], name


def test_every_refused_family_is_in_the_table_as_refused():
    table = _table()
    refused = {family for family, (_, status) in table.items() if status.startswith("refused")}
    assert refused == {refusal.family for refusal in REFUSED}
    for refusal in REFUSED:
        assert f"`{refusal.class_names[0]}`" in table[refusal.family][0]
    assert set(table) == set(FAMILIES) | {"generic"} | refused  # no row of another status


def test_gemma4_is_refused_at_apply_naming_the_reason_and_the_nearest_family():
    import transformers

    text = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        global_head_dim=32,
        vocab_size=300,
        vocab_size_per_layer_input=300,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=8,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2
    )
    config = transformers.Gemma4Config(text_config=text, vision_config=vision, audio_config=None)
    model = transformers.Gemma4ForConditionalGeneration(config)
    layers_before = [dict(layer._forward_pre_hooks) for layer in model.model.language_model.layers]
    with pytest.raises(sp.UnsupportedModelError, match="bidirectional.*nearest supported family is qwen3_vl"):
        sp.apply(model, method="fastv")
    # nothing left half-applied: no hooks, the attention implementation as it was
    assert [dict(layer._forward_pre_hooks) for layer in model.model.language_model.layers] == layers_before
    assert not model.config.text_config._attn_implementation.startswith("sharp_prune")
