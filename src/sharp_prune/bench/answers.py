"""Scoring candidate answers by their log-likelihood, from ONE prefill of the prompt.

The prompt is prefilled once (pruned, when a handle is active: the keep plan is made once, from the prompt
alone). The first token of every candidate is read from that prefill's last logits. Candidates longer than one
token then continue from the prefill's cache: the cache is repeated once per candidate and every candidate's
tokens but its last run as one batched step (right-padded: a causal model never lets a real token see a pad
after it). This is what a per-answer prefill of prompt + answer computes, without paying for the prompt again
per answer, and without a keep plan that changes with the answer's last token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import hf_protocol as hf
from ..errors import InputError


def answer_log_likelihoods(
    model: nn.Module, input_ids: torch.Tensor, candidates: Sequence[Sequence[int]]
) -> torch.Tensor:
    """[C] fp32 log p(candidate | prompt), summed over each candidate's tokens.

    Args:
        model: a causal LM (pruned or not; a generic-adapter handle needs its frame map declared around the call).
        input_ids: [1, L] the prompt, ending where the answer starts.
        candidates: C token-id sequences, each at least one token long.
    """
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise InputError(
            f"answer_log_likelihoods scores one prompt: input_ids must be [1, L], got {tuple(input_ids.shape)}."
        )
    if not candidates or any(len(c) == 0 for c in candidates):
        raise InputError("answer_log_likelihoods needs at least one candidate, each of at least one token.")
    device = input_ids.device
    with torch.no_grad():
        out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        scores = first[torch.tensor([c[0] for c in candidates], device=device)]
        longest = max(len(c) for c in candidates)
        if longest == 1:
            return scores
        cache = hf.output_cache(out)
        if cache is None:
            raise InputError("the model returned no cache, so the answers cannot continue from the prompt's prefill.")
        cache.batch_repeat_interleave(len(candidates))
        # Run every token but the last; pad on the right with each candidate's own last token (never read).
        steps = torch.tensor([list(c[:-1]) + [c[-1]] * (longest - len(c)) for c in candidates], device=device)
        logits = model(input_ids=steps, use_cache=True, **{hf.cache_argument(model): cache}).logits.float()
        following = torch.log_softmax(logits, dim=-1)  # [C, longest - 1, V]: position t predicts token t + 1
        for index, candidate in enumerate(candidates):
            rest = torch.tensor(candidate[1:], device=device)
            scores[index] += following[index, : len(rest)].gather(1, rest[:, None]).sum()
    return scores
