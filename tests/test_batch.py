"""A padded batch gives the keep plans and logits of its samples run one at a time."""

from __future__ import annotations

import pytest
import torch

import sharp_prune as sp
from sharp_prune.testing import PAD_ID, TINY_FAMILIES, sample_of, tiny_causal_lm, tiny_inputs, tiny_model

PREFIX = [3, 7, 5]
SUFFIX = [6, 2, 4]


def _first_real(mask_row: torch.Tensor) -> int:
    return int(mask_row.nonzero()[0])


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("method", ["fastv", "uniform", "random"])
def test_batch_equals_single_runs(family, padding_side, method):
    model = tiny_model(family)
    batch = tiny_inputs(model, PREFIX, SUFFIX, padding_side=padding_side)
    singles = [sample_of(batch, i) for i in range(len(PREFIX))]
    config = sp.PruneConfig(method=method, retention=0.25, layer=2)
    with sp.apply(model, config) as handle, torch.no_grad():
        batch_logits = model(**batch).logits
        batch_record = handle.last
        single_runs = []
        for single in singles:
            single_runs.append((model(**single).logits, handle.last))
    assert batch_record.budget == [16, 16, 16]
    for i, (logits, record) in enumerate(single_runs):
        offset = _first_real(batch["attention_mask"][i])
        # Same kept visual tokens, in each sample's own coordinates.
        assert torch.equal(batch_record.keep_positions[i] - offset, record.keep_positions[0])
        # Same logits at the sample's last real token.
        real_kept = (batch["attention_mask"][i] == 1).nonzero().flatten()
        last = real_kept[-1]
        # Position of `last` in the pruned batch sequence: count kept positions before it.
        visual = set(batch_record.visual_positions[i].tolist())
        kept = set(batch_record.keep_positions[i].tolist())
        index = [p for p in range(batch["input_ids"].shape[1]) if p not in visual or p in kept]
        torch.testing.assert_close(batch_logits[i, index.index(int(last))], logits[0, -1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batch_generate_equals_single_generate(padding_side):
    model = tiny_model("qwen2_vl")
    batch = tiny_inputs(model, PREFIX, SUFFIX, padding_side=padding_side)
    singles = [sample_of(batch, i) for i in range(len(PREFIX))]
    with sp.apply(model, method="fastv", retention=0.3, layer=2), torch.no_grad():
        batch_out = model.generate(**batch, max_new_tokens=4, do_sample=False)
        for i, single in enumerate(singles):
            single_out = model.generate(**single, max_new_tokens=4, do_sample=False)
            assert torch.equal(batch_out[i, -4:], single_out[0, -4:])


def test_generic_batch_with_padding():
    model = tiny_causal_lm()
    gen = torch.Generator().manual_seed(3)
    lengths = [40, 52, 47]
    width = max(lengths)
    ids = torch.full((3, width), PAD_ID)
    mask = torch.zeros(3, width, dtype=torch.long)
    frame_map = torch.full((3, width), -1)
    rows = [torch.randint(3, 200, (n,), generator=gen) for n in lengths]
    for i, row in enumerate(rows):
        start = width - len(row)
        ids[i, start:] = row
        mask[i, start:] = 1
        frame_map[i, start + 4 : start + 4 + 30] = torch.arange(5).repeat_interleave(6)
    with sp.apply(model, method="fastv", retention=0.4, layer=2) as handle, torch.no_grad():
        with handle.visual_frames(frame_map):
            batch_logits = model(input_ids=ids, attention_mask=mask).logits
        batch_record = handle.last
        for i, row in enumerate(rows):
            single_map = sp.frame_map_for_span(len(row), start=4, num_frames=5, tokens_per_frame=6)
            with handle.visual_frames(single_map):
                single_logits = model(input_ids=row[None]).logits
            offset = width - len(row)
            assert torch.equal(batch_record.keep_positions[i] - offset, handle.last.keep_positions[0])
            torch.testing.assert_close(batch_logits[i, -1], single_logits[0, -1], atol=1e-4, rtol=1e-4)
