"""Max-min diversity on hidden states: farthest-point sampling, shared by `divprune` and ShaRP's RegD.

Farthest-point sampling is sequential by definition (each pick depends on the previous ones), so the picks
stay a loop; what the loop no longer does is read the N x D hidden states once per pick (a matrix-vector
product, memory-bound: about 2 ms per pick at N = 6,272, D = 896 on a 2-core CPU) or wait for the host.
It works in blocks: the `block` candidates farthest from the kept set when the block starts are scored
against every token in one matrix product, and the picks then only update an [N] vector from that product's
columns. A pick that falls outside the block (an earlier pick of the block made every block candidate
nearer than it) is undone on the device and starts the next block; the host learns how many picks of the
block stood once per block (one `.item()`), so the result is exactly the one-at-a-time walk.
"""

from __future__ import annotations

import torch

from ..steps.indices import true_first

BLOCK = 128  # candidates scored per matrix product (speed only; the picks do not depend on it)
TIE = 1e-6  # cosines closer than this to the first pick's are ties


def farthest_point_sampling(
    unit: torch.Tensor,
    count: int,
    kept: torch.Tensor,
    candidates: torch.Tensor,
    *,
    num_candidates: int | None = None,
    num_kept: int | None = None,
    after: torch.Tensor | None = None,
    block: int = BLOCK,
) -> torch.Tensor:
    """Pick `count` candidates one by one, each the farthest (max-min cosine distance) from all kept.

    Args:
        unit: [N, D] L2-normalised hidden states.
        count: how many to pick (fewer if candidates run out).
        kept: [N] bool, tokens already kept (distances are measured to them). May be all False: the
            first pick is then the token least similar to the mean of the candidates.
        candidates: [N] bool, tokens that may be picked.
        num_candidates: `candidates.sum()` when the caller knows it (saves a host sync).
        num_kept: `kept.sum()` when the caller knows it (saves a host sync).
        after: [N] bool, candidates picked only once every other candidate is taken (ShaRP picks tokens that
            merged into a kept one last); None: no such tier.
        block: candidates scored per matrix product (speed only).

    Returns:
        [P] picked indices in pick order.

    Similarities stay in fp32: in bf16 many distances tie, and ties go to the lowest index, which would
    bias picks towards early frames.
    """
    unit = unit.float()
    n = unit.shape[0]
    available = candidates.clone()
    if num_candidates is None:
        num_candidates = int(candidates.sum())
    total = max(0, min(count, num_candidates))
    picks = torch.empty(total, dtype=torch.long, device=unit.device)
    if total == 0:
        return picks
    # Later tiers sort after every candidate of the first: cosines lie in [-1, 1].
    tier = after.float() * 4.0 if after is not None else None
    done = 0
    if num_kept is None:
        num_kept = int(kept.sum())
    if num_kept == 0:
        centre = (unit * available[:, None]).sum(dim=0) / num_candidates
        towards_mean = torch.where(available, unit @ centre, torch.inf)
        # near-ties (within fp32 noise: two tokens are always exactly tied with their own mean) go to the lowest
        # index, so that the same video gives the same first pick whatever rounding its hidden states carry
        first = (towards_mean <= towards_mean.min() + TIE).long().argmax().view(1)
        picks[:1] = first
        available[first] = False
        nearest = unit @ unit.index_select(0, first)[0]
        done = 1
    else:
        # the kept rows without boolean indexing (nonzero() waits for the device): a stable sort puts them first
        kept_rows = true_first(kept)[:num_kept]
        nearest = nearest_similarity(unit, unit.index_select(0, kept_rows))
    inf = torch.tensor(torch.inf, device=unit.device)
    while done < total:
        steps = min(total - done, block)
        width = min(n, block)
        key = nearest if tier is None else nearest + tier
        # a stable sort, so that among equal keys the block holds the lowest indices, as argmin picks them
        spec = torch.sort(torch.where(available, key, inf), stable=True).indices[:width]
        slot_of = torch.full((n,), -1, dtype=torch.long, device=unit.device)
        slot_of[spec] = torch.arange(width, device=unit.device)
        columns = unit @ unit[spec].T  # [N, width]: every token against the block's candidates
        standing = torch.ones((), dtype=torch.bool, device=unit.device)
        stood = torch.zeros((), dtype=torch.long, device=unit.device)
        for step in range(steps):
            key = nearest if tier is None else nearest + tier
            j = torch.where(available, key, inf).argmin().view(1)  # ties -> lowest index
            slot = slot_of.index_select(0, j)[0]
            standing = standing & (slot >= 0)
            column = columns.index_select(1, slot.clamp(min=0).view(1)).view(n)
            nearest = torch.where(standing, torch.maximum(nearest, column), nearest)
            available[j] = available[j] & ~standing
            picks[done + step : done + step + 1] = j
            stood = stood + standing.long()
        done += int(stood.item())  # host sync, once per block: how many picks of the block stood
    return picks


def nearest_similarity(unit: torch.Tensor, others: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """[N] max cosine of each row of `unit` with `others`, in column blocks: memory N x block, not N x M
    (M = kept tokens, a fixed share of N, so N x M would grow quadratically with the video)."""
    nearest = torch.full((unit.shape[0],), -2.0, device=unit.device)
    for start in range(0, others.shape[0], block):
        nearest = torch.maximum(nearest, (unit @ others[start : start + block].T).max(dim=1).values)
    return nearest


def fps_flops(num_visual: int, picks: int, hidden_size: int, block: int = BLOCK) -> int:
    """Matmul FLOPs of `farthest_point_sampling` making `picks` picks: one N x D x block product per block of
    picks (a lower bound: a block whose picks leave it early costs one more). The N x kept product it starts from
    is counted by the caller, which knows the kept set."""
    width = min(block, num_visual)
    blocks = -(-picks // block) if picks > 0 else 0
    return 2 * num_visual * hidden_size * width * blocks
