from __future__ import annotations

import pytest
import torch

from sharp_prune.testing import TINY_FAMILIES, tiny_model

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (fp32, sdpa) and its tokenizer."""
    from sharp_prune.smollm2 import load_smollm2

    return load_smollm2()


@pytest.fixture(params=TINY_FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(params=["sdpa", "eager"])
def attn_impl(request) -> str:
    return request.param


@pytest.fixture
def vlm(family, attn_impl):
    return tiny_model(family, attn_implementation=attn_impl)


@pytest.fixture(scope="session")
def gemma3():
    """The real Gemma 3 270M base (fp32, sdpa) and its tokenizer: sliding-window layers with real weights."""
    from sharp_prune.pretrained import load_pretrained

    return load_pretrained("gemma3-270m")
