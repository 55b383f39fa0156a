"""Max-min diversity on hidden states: farthest-point sampling, shared by `divprune` and ShaRP's RegD."""

from __future__ import annotations

import torch


def farthest_point_sampling(
    unit: torch.Tensor, count: int, kept: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """Pick `count` candidates one by one, each the farthest (max-min cosine distance) from all kept.

    Args:
        unit: [N, D] L2-normalised hidden states.
        count: how many to pick (fewer if candidates run out).
        kept: [N] bool, tokens already kept (distances are measured to them). May be all False: the
            first pick is then the token least similar to the mean of the candidates.
        candidates: [N] bool, tokens that may be picked.

    Returns:
        [P] picked indices in pick order.

    Similarities stay in fp32: in bf16 many distances tie, and ties go to the lowest index, which would
    bias picks towards early frames.
    """
    unit = unit.float()
    candidates = candidates.clone()
    picks: list[int] = []
    if bool(kept.any()):
        nearest = nearest_similarity(unit, unit[kept])
    else:
        nearest = torch.full((unit.shape[0],), -2.0, device=unit.device)
        if count > 0 and bool(candidates.any()):
            centre = unit[candidates].mean(dim=0)
            first = int(torch.where(candidates, unit @ centre, torch.inf).argmin())
            picks.append(first)
            candidates[first] = False
            nearest = unit @ unit[first]
    while len(picks) < count and bool(candidates.any()):
        # farthest = lowest max-similarity; ties -> lowest index
        j = int(torch.where(candidates, nearest, torch.inf).argmin())
        picks.append(j)
        candidates[j] = False
        nearest = torch.maximum(nearest, unit @ unit[j])
    return torch.tensor(picks, dtype=torch.long, device=unit.device)


def nearest_similarity(unit: torch.Tensor, others: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """[N] max cosine of each row of `unit` with `others`, in column blocks: memory N x block, not N x M
    (M = kept tokens, a fixed share of N, so N x M would grow quadratically with the video)."""
    nearest = torch.full((unit.shape[0],), -2.0, device=unit.device)
    for start in range(0, others.shape[0], block):
        nearest = torch.maximum(nearest, (unit @ others[start : start + block].T).max(dim=1).values)
    return nearest
