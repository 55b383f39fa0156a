"""Gemma 3 270M (base, real weights) through the generic adapter: sliding-window layers (window 512) with full
attention at layers 5, 11 and 17, on prompts longer than the window."""

from __future__ import annotations

import pytest
import torch
from reference import reference_logits_layered

import sharp_prune as sp
from sharp_prune.bench.task import TaskConfig, make_item
from sharp_prune.errors import ConfigError

# 24 frames x 32 tokens = 768 video tokens: the prompt is longer than the 512-token window
TASK = TaskConfig(frames=24, tokens_per_frame=32, scenes=4)


@pytest.fixture(scope="module")
def item(gemma3):
    _, tokenizer = gemma3
    item = make_item(tokenizer, 10_000, TASK)
    assert item.input_ids.shape[1] > gemma3[0].config.sliding_window + 200
    return item


def _run(model, item, steps: int = 4):
    with torch.no_grad():
        logits = model(input_ids=item.input_ids, logits_to_keep=1).logits[:, -1]
        tokens = model.generate(input_ids=item.input_ids, max_new_tokens=steps, do_sample=False)
    return logits, tokens


def test_the_task_prompt_is_plain_text_after_bos_for_a_base_model(gemma3, item):
    _, tokenizer = gemma3
    assert item.input_ids[0, 0] == tokenizer.bos_token_id
    tail = tokenizer.decode(item.input_ids[0, -30:])
    assert "\nQuestion: " in tail and f"\nAnswer: {item.prefix}" in tail and "<|im_start|>" not in tail


@pytest.mark.parametrize("method,k", [("fastv", 6), ("random", 2), ("sharp", 12)])
def test_keep_all_equals_the_unpruned_model(gemma3, item, method, k):
    model, _ = gemma3
    expected = _run(model, item)
    config = sp.PruneConfig(method=method, retention=1.0, layer=k)
    if method == "sharp":  # SegM changes layers < K even when every token is kept: switch it off
        config = config.replace(segm=False)
    handle = sp.apply(model, config)
    with handle, handle.visual_frames(item.frame_map):
        logits, tokens = _run(model, item)
    torch.testing.assert_close(logits, expected[0], atol=1e-4, rtol=1e-4)
    assert torch.equal(tokens, expected[1])


def test_scores_need_a_full_attention_layer_below_k(gemma3):
    model, _ = gemma3
    with pytest.raises(ConfigError, match=r"K >= 6 \(full-attention layers: \[5, 11, 17\]\)"):
        sp.apply(model, method="sharp", layer=2)


def test_pruned_forward_equals_the_kept_sequence_run_directly(gemma3, item):
    model, _ = gemma3
    handle = sp.apply(model, method="fastv", retention=0.2, layer=6)
    with handle, handle.visual_frames(item.frame_map), torch.no_grad():
        logits = model(input_ids=item.input_ids, logits_to_keep=1).logits
    record = handle.last
    dropped = set(record.visual_positions[0].tolist()) - set(record.keep_positions[0].tolist())
    keep = torch.tensor([p for p in range(record.seq_len) if p not in dropped])
    expected = reference_logits_layered(model, item.input_ids, keep, 6, last_only=True)
    torch.testing.assert_close(logits, expected, atol=2e-4, rtol=2e-4)


def test_a_left_padded_batch_prunes_and_generates_as_its_samples_do(gemma3):
    model, tokenizer = gemma3
    items = [make_item(tokenizer, 10_001 + i, TASK) for i in range(2)]
    width = max(it.input_ids.shape[1] for it in items)
    ids = torch.full((2, width), tokenizer.pad_token_id)
    mask = torch.zeros(2, width, dtype=torch.long)
    frame_map = torch.full((2, width), -1)
    for i, it in enumerate(items):
        n = it.input_ids.shape[1]
        ids[i, width - n :], mask[i, width - n :], frame_map[i, width - n :] = it.input_ids[0], 1, it.frame_map[0]
    handle = sp.apply(model, method="sharp", retention=0.2, layer=6)
    with handle, torch.no_grad():
        with handle.visual_frames(frame_map):
            batch = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
            batch_tokens = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
        for i, it in enumerate(items):
            with handle.visual_frames(it.frame_map):
                single = model(input_ids=it.input_ids, logits_to_keep=1).logits[:, -1]
                tokens = model.generate(input_ids=it.input_ids, max_new_tokens=3, do_sample=False)
            torch.testing.assert_close(batch[i], single[0], atol=2e-3, rtol=2e-3)
            assert torch.equal(batch_tokens[i, -3:], tokens[0, -3:])
