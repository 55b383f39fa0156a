"""RegD, register token deduplication: pure functions on one sample's visual tokens.

1. `dedup_greedy`: walk tokens by descending score; accept a token unless its hidden state has cosine
   > delta with an accepted one, in which case it is that token's duplicate.
2. merge: an accepted token's hidden state becomes the mean of itself and its duplicates.
3. replenish: a share of the budget goes to the tokens farthest (max-min cosine distance) from everything
   kept (`sharp_prune.methods.diversity.farthest_point_sampling`, shared with `divprune`).
4. `segment_registers`: per segment, one register holding the mean of its remaining dropped tokens, at
   the position of the segment's middle dropped token.
"""

from __future__ import annotations

import torch


def dedup_greedy(
    scores: torch.Tensor, unit: torch.Tensor, count: int, delta: float, block: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept up to `count` tokens by descending score, skipping near-duplicates of accepted ones.

    Candidates are visited in blocks: similarities to the tokens accepted before the block come from one
    matrix product, those to tokens accepted inside it from the block's own c x c product, so the walk
    costs matrix products rather than one N x D pass per acceptance.

    Args:
        scores: [N] scores (higher first; ties broken by lower index).
        unit: [N, D] L2-normalised hidden states.
        count: how many to accept.
        delta: cosine above which a token is a duplicate.
        block: candidates per block (speed only; the result does not depend on it).

    Returns:
        accepted: [A] indices in acceptance order (A <= count).
        duplicate_of: [N] index of the accepted token each visited duplicate maps to, else -1.
    """
    n = scores.shape[0]
    order = torch.argsort(-scores.float(), stable=True)
    unit = unit.float()
    duplicate_of = torch.full((n,), -1, dtype=torch.long, device=unit.device)
    accepted: list[int] = []
    accepted_units = unit.new_zeros(0, unit.shape[1])
    for start in range(0, n, block):
        if len(accepted) >= count:
            break
        chunk = order[start : start + block]
        vectors = unit[chunk]
        if accepted:
            previous = vectors @ accepted_units.T
            best, owner_slot = previous.max(dim=1)
            owners = torch.tensor(accepted, device=unit.device)[owner_slot]
        else:
            best = torch.full((chunk.numel(),), -2.0, device=unit.device)
            owners = torch.full((chunk.numel(),), -1, dtype=torch.long, device=unit.device)
        inside = vectors @ vectors.T
        best_list, owner_list, chunk_list = best.tolist(), owners.tolist(), chunk.tolist()
        newly: list[int] = []
        for i, token in enumerate(chunk_list):
            if len(accepted) >= count:
                break
            similarity, owner = best_list[i], owner_list[i]
            if newly:
                row = inside[i, newly]
                j = int(row.argmax())
                if float(row[j]) > similarity:
                    similarity, owner = float(row[j]), chunk_list[newly[j]]
            if similarity > delta:
                duplicate_of[token] = owner
                continue
            accepted.append(token)
            newly.append(i)
        if newly:
            accepted_units = torch.cat([accepted_units, vectors[newly]])
    return torch.tensor(accepted, dtype=torch.long, device=unit.device), duplicate_of


def segment_registers(
    segments: torch.Tensor, dropped: torch.Tensor, hidden: torch.Tensor, max_registers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One register per segment that still has dropped tokens (the largest segments first if capped).

    Args:
        segments: [N] segment id of each visual token (non-decreasing).
        dropped: [N] bool, tokens neither kept nor merged into a kept token.
        hidden: [N, D] hidden states.
        max_registers: at most this many registers.

    Returns:
        slots: [R] local index of each register's position (the middle dropped token of its segment).
        states: [R, D] the mean hidden state of that segment's dropped tokens.
    """
    chosen = []
    for s in torch.unique(segments).tolist():
        members = ((segments == s) & dropped).nonzero().flatten()
        if members.numel():
            chosen.append((members.numel(), s, members))
    chosen.sort(key=lambda item: (-item[0], item[1]))
    chosen = sorted(chosen[:max_registers], key=lambda item: item[1])
    if not chosen:
        return torch.empty(0, dtype=torch.long, device=hidden.device), hidden.new_zeros(0, hidden.shape[-1])
    slots = torch.stack([members[(members.numel() - 1) // 2] for _, _, members in chosen])
    states = torch.stack([hidden[members].float().mean(dim=0).to(hidden.dtype) for _, _, members in chosen])
    return slots, states


def dedup_flops(num_visual: int, greedy: int, hidden_size: int, block: int = 256) -> int:
    """Matmul FLOPs of `dedup_greedy` accepting about `greedy` tokens (few duplicates visited), plus the one
    N x accepted product farthest-point sampling starts from (its per-pick N x D products are matrix-vector
    products, which FlopCounterMode does not count)."""
    block = min(block, num_visual)
    blocks = -(-greedy // block) if block else 0
    total = 2 * hidden_size * block * block * blocks  # each block's own block x block product
    total += 2 * hidden_size * block * sum(min(greedy, b * block) for b in range(1, blocks))  # against earlier
    return total + 2 * num_visual * hidden_size * greedy
