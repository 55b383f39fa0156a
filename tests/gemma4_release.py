"""Gemma 4 is pruned from transformers `GEMMA4_FLOOR` on: its tests run there, and before it the refusal is tested
(tests/test_model_table.py)."""

from __future__ import annotations

import pytest

from sharp_prune import hf_protocol as hf

requires_gemma4 = pytest.mark.skipif(
    not hf.gemma4_supported(),
    reason=f"Gemma 4 is pruned from transformers {hf.GEMMA4_FLOOR} on (before, refused at apply: test_model_table.py)",
)
