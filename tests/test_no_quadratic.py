"""A pruned forward over >= 8,000 visual tokens allocates nothing of N x N elements."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import sharp_prune as sp
from sharp_prune.testing import tiny_causal_lm


class LargestAllocation(TorchDispatchMode):
    """Records the largest tensor any aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.numel() > self.largest:
                self.largest, self.op = leaf.numel(), func
        return out


@pytest.mark.parametrize("method", ["fastv", "uniform"])
def test_pruned_forward_is_not_quadratic(method):
    model = tiny_causal_lm(num_layers=3)
    n_visual = 8192
    seq_len = n_visual + 40
    input_ids = torch.randint(3, 200, (1, seq_len), generator=torch.Generator().manual_seed(0))
    frame_map = sp.frame_map_for_span(seq_len, start=8, num_frames=32, tokens_per_frame=256)
    with sp.apply(model, method=method, retention=0.2, layer=1) as handle, handle.visual_frames(frame_map):
        recorder = LargestAllocation()
        with torch.no_grad(), recorder:
            model(input_ids=input_ids, logits_to_keep=1)
    assert handle.last.num_visual == [n_visual]
    assert recorder.largest < n_visual * n_visual, (recorder.largest, recorder.op)
    # The recorder does see big tensors: the embeddings of the whole sequence.
    assert recorder.largest >= seq_len * model.config.hidden_size
