"""Candidate answers scored from one prefill equal the per-answer prefill they replace (fp32, within 1e-4)."""

from __future__ import annotations

import pytest
import torch
from reference import reference_logits, reference_logits_layered

import sharp_prune as sp
from sharp_prune.bench.answers import answer_log_likelihoods
from sharp_prune.errors import InputError
from sharp_prune.testing import tiny_causal_lm, tiny_sliding_lm

LENGTH, START, FRAMES, PER_FRAME = 60, 6, 5, 8
CANDIDATES = [[17], [23, 45], [99, 5, 7, 180, 3, 11, 42, 8, 9, 60, 61]]  # 1, 2 and 11 tokens (past a window of 8)


def _prompt() -> torch.Tensor:
    return torch.randint(3, 200, (1, LENGTH), generator=torch.Generator().manual_seed(4))


def _summed(logits: torch.Tensor, start: int, candidate: list[int]) -> float:
    """log p(candidate) from logits over prompt + candidate whose position `start - 1` predicts its first token."""
    log_probs = torch.log_softmax(logits[0].float(), dim=-1)
    return sum(float(log_probs[start - 1 + i, token]) for i, token in enumerate(candidate))


@pytest.mark.parametrize("build", [tiny_causal_lm, tiny_sliding_lm], ids=["llama", "gemma3-sliding"])
def test_unpruned_scores_equal_one_prefill_per_answer(build):
    model = build(num_layers=6)
    prompt = _prompt()
    scores = answer_log_likelihoods(model, prompt, CANDIDATES)
    with torch.no_grad():
        for candidate, score in zip(CANDIDATES, scores, strict=True):
            full = torch.cat([prompt, torch.tensor([candidate])], dim=1)
            expected = _summed(model(input_ids=full).logits, LENGTH, candidate)
            assert float(score) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("build,k", [(tiny_causal_lm, 2), (tiny_sliding_lm, 3)], ids=["llama", "gemma3-sliding"])
def test_pruned_scores_equal_the_kept_prompt_and_answer_run_directly(build, k):
    model = build(num_layers=6)
    prompt = _prompt()
    frame_map = sp.frame_map_for_span(LENGTH, START, FRAMES, PER_FRAME)
    handle = sp.apply(model, method="fastv", retention=0.25, layer=k)
    with handle, handle.visual_frames(frame_map):
        scores = answer_log_likelihoods(model, prompt, CANDIDATES)
    record = handle.last
    dropped = set(record.visual_positions[0].tolist()) - set(record.keep_positions[0].tolist())
    assert dropped  # the prompt was pruned, once, from the prompt alone
    for candidate, score in zip(CANDIDATES, scores, strict=True):
        full = torch.cat([prompt, torch.tensor([candidate])], dim=1)
        keep = torch.tensor([p for p in range(full.shape[1]) if p not in dropped])
        if build is tiny_sliding_lm:
            logits = reference_logits_layered(model, full, keep, k)
        else:
            logits = reference_logits(model, model.model, {"input_ids": full}, keep, k)
        start = LENGTH - len(dropped)  # the answer's first position among the kept ones
        assert float(score) == pytest.approx(_summed(logits, start, candidate), abs=1e-4)


def test_smollm2_multi_token_answers_equal_one_prefill_per_answer(smollm2):
    model, tokenizer = smollm2
    prompt = tokenizer("The colour of a ripe banana is", return_tensors="pt").input_ids
    words = [" yellow", " dark purple", " a kind of turquoise blue"]
    candidates = [tokenizer(w, add_special_tokens=False).input_ids for w in words]
    assert max(len(c) for c in candidates) > 2
    scores = answer_log_likelihoods(model, prompt, candidates)
    with torch.no_grad():
        for candidate, score in zip(candidates, scores, strict=True):
            full = torch.cat([prompt, torch.tensor([candidate])], dim=1)
            expected = _summed(model(input_ids=full).logits, prompt.shape[1], candidate)
            assert float(score) == pytest.approx(expected, abs=1e-4)
    assert int(scores.argmax()) == 0


def test_bad_calls_are_refused():
    model = tiny_causal_lm()
    with pytest.raises(InputError, match=r"\[1, L\]"):
        answer_log_likelihoods(model, torch.ones(2, 5, dtype=torch.long), [[3]])
    with pytest.raises(InputError, match="at least one token"):
        answer_log_likelihoods(model, torch.ones(1, 5, dtype=torch.long), [[3], []])
