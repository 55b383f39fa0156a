"""The README's model table and the adapter registry agree; a refused family is refused at `apply` with its reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gemma4_release import requires_gemma4

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


@requires_gemma4
def test_gemma4_resolves_to_its_adapter_and_applies():
    """Gemma 4 was refused until the engine sliced its bidirectional frames, per-layer inputs and shared KV."""
    import transformers

    from sharp_prune.models import resolve_adapter
    from sharp_prune.models.gemma4 import tiny_gemma4_config

    model = transformers.Gemma4ForConditionalGeneration(tiny_gemma4_config(2)).eval()
    assert resolve_adapter(model) is FAMILIES["gemma4"]
    assert resolve_adapter(model.model) is FAMILIES["gemma4"]
    assert "gemma4" not in {refusal.family for refusal in REFUSED}
    with sp.apply(model, method="fastv", layer=1) as handle:
        assert handle.adapter.name == "gemma4"
    assert not any(layer._forward_pre_hooks for layer in model.model.language_model.layers)


def test_gemma4_before_its_floor_release_is_refused_at_apply(monkeypatch):
    """Before transformers 5.24 Gemma 4 shares keys and values, and takes videos, by other rules: refused at apply,
    naming the release to install, with nothing attached (the VLM and a text stack through the generic adapter)."""
    import transformers

    from sharp_prune import hf_protocol as hf
    from sharp_prune.models.gemma4 import tiny_gemma4_config

    model = transformers.Gemma4ForConditionalGeneration(tiny_gemma4_config(2)).eval()
    text = transformers.Gemma4ForCausalLM(tiny_gemma4_config(2).text_config).eval()
    monkeypatch.setattr(hf, "installed_version", lambda: "5.20.0")
    for decoder_model, layers in ((model, model.model.language_model.layers), (text, text.model.layers)):
        with pytest.raises(sp.UnsupportedModelError, match=r"Gemma 4 .* 5\.20\.0 .*transformers>=5\.24\.0"):
            sp.apply(decoder_model, method="fastv", layer=1)
        assert not any(layer._forward_pre_hooks for layer in layers)
        assert not decoder_model.config.get_text_config()._attn_implementation.startswith("sharp_prune")
