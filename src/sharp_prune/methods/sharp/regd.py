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

from ...steps.indices import true_first


def dedup_greedy(
    scores: torch.Tensor, unit: torch.Tensor, count: int, delta: float, block: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept up to `count` tokens by descending score, skipping near-duplicates of accepted ones.

    Candidates are visited in blocks of `block`, in score order. Similarities to the tokens accepted before
    the block come from one matrix product; inside the block, the walk's answer (a token is accepted unless
    an accepted earlier token of the block duplicates it) is found in rounds over the block's own c x c
    duplicate graph (`_WalkInOrder`), not token by token. The host learns once per block how many
    tokens it accepted (to stop after `count`).

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
    device = unit.device
    order = torch.argsort(-scores.float(), stable=True)
    unit = unit.float()
    duplicate_of = torch.full((n,), -1, dtype=torch.long, device=device)
    accepted_ids = torch.empty(0, dtype=torch.long, device=device)
    accepted_units = unit.new_zeros(0, unit.shape[1])
    total = 0
    for start in range(0, n, block):
        if total >= count:
            break
        chunk = order[start : start + block]
        c = chunk.numel()
        vectors = unit.index_select(0, chunk)
        if total:
            previous = vectors @ accepted_units.T
            best = previous.max(dim=1).values
            owners = accepted_ids[previous.argmax(dim=1)]  # ties -> the earliest accepted
        else:
            best = torch.full((c,), -2.0, device=device)
            owners = torch.full((c,), -1, dtype=torch.long, device=device)
        inside = vectors @ vectors.T
        earlier = torch.ones(c, c, dtype=torch.bool, device=device).tril(-1)  # [i, j]: j comes before i
        walk = _WalkInOrder((inside > delta) & earlier, best <= delta)
        while True:
            walk.rounds()
            # the walk stops at the count-th acceptance: later tokens are not visited
            accepted = walk.accepted
            visited = (accepted.long().cumsum(0) - accepted.long()) < count - total
            accepted = accepted & visited
            # host sync, once per block (usually): is every token decided, and how many were accepted
            finished, new = torch.stack([walk.decided.all().long(), accepted.sum()]).tolist()
            if finished:
                break
        # a visited duplicate maps to its most similar accepted token (an earlier block's on ties)
        in_block = inside.masked_fill(~(earlier & accepted[None, :]), -torch.inf)
        use_block = in_block.max(dim=1).values > best
        owner = torch.where(use_block, chunk[in_block.argmax(dim=1)], owners)
        duplicate_of[chunk] = torch.where(visited & ~accepted, owner, -1)
        slots = true_first(accepted)[:new]  # accepted, in walk order
        accepted_ids = torch.cat([accepted_ids, chunk[slots]])
        accepted_units = torch.cat([accepted_units, vectors[slots]])
        total += new
    return accepted_ids, duplicate_of


class _WalkInOrder:
    """The one-by-one walk over a block, in parallel rounds: token i is accepted iff it is `alive` and no
    accepted earlier token j has `duplicates[i, j]`.

    Each round decides every token whose earlier duplicates are all decided (accepted if none of them was),
    and rejects every token with an accepted earlier duplicate; the earliest undecided token is always decided,
    so the walk ends. A chain of flips needs as many rounds as it is long; real hidden states need a few.
    """

    def __init__(self, duplicates: torch.Tensor, alive: torch.Tensor) -> None:
        self.graph = duplicates.float()
        self.accepted = torch.zeros_like(alive)
        self.decided = ~alive

    def rounds(self, count: int = 4) -> None:
        for _ in range(count):
            has_accepted = (self.graph @ self.accepted.float()) > 0
            has_undecided = (self.graph @ (~self.decided).float()) > 0
            open_ = ~self.decided
            self.accepted = self.accepted | (open_ & ~has_accepted & ~has_undecided)
            self.decided = self.decided | (open_ & (has_accepted | ~has_undecided))


def segment_registers(
    segments: torch.Tensor,
    dropped: torch.Tensor,
    hidden: torch.Tensor,
    max_registers: int,
    num_segments: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One register per segment that still has dropped tokens (the largest segments first if capped).

    Args:
        segments: [N] segment id of each visual token (non-decreasing).
        dropped: [N] bool, tokens neither kept nor merged into a kept token.
        hidden: [N, D] hidden states.
        max_registers: at most this many registers.
        num_segments: the number of segments when the caller knows it (saves a host sync).

    Returns:
        slots: [R] local index of each register's position (the middle dropped token of its segment).
        states: [R, D] the mean hidden state of that segment's dropped tokens.
    """
    device, n = hidden.device, segments.shape[0]
    if num_segments is None:
        num_segments = int(segments.max()) + 1 if n else 0
    counts = torch.zeros(num_segments, dtype=torch.long, device=device).index_add_(0, segments, dropped.long())
    sizes = counts.tolist()  # host sync, once: which segments get a register decides the output's size
    ranked = sorted((s for s in range(num_segments) if sizes[s]), key=lambda s: (-sizes[s], s))
    chosen = sorted(ranked[:max_registers])
    if not chosen:
        return torch.empty(0, dtype=torch.long, device=device), hidden.new_zeros(0, hidden.shape[-1])
    # the middle dropped token of each segment: the one whose rank among its segment's dropped is (count-1)//2
    rank = dropped.long().cumsum(0) - 1
    first = torch.zeros(num_segments, dtype=torch.long, device=device)
    first[1:] = counts.cumsum(0)[:-1]
    middle = dropped & (rank - first[segments] == (counts[segments] - 1) // 2)
    positions = torch.where(middle, torch.arange(n, device=device), -1)
    slot_of = torch.full((num_segments,), -1, dtype=torch.long, device=device)
    slot_of = slot_of.scatter_reduce(0, segments, positions, reduce="amax")
    sums = torch.zeros(num_segments, hidden.shape[-1], dtype=torch.float32, device=device)
    sums.index_add_(0, segments, torch.where(dropped[:, None], hidden.float(), 0.0))
    chosen_t = torch.tensor(chosen, dtype=torch.long, device=device)
    states = (sums[chosen_t] / counts[chosen_t, None]).to(hidden.dtype)
    return slot_of[chosen_t], states


def dedup_flops(num_visual: int, greedy: int, hidden_size: int, block: int = 256) -> int:
    """Matmul FLOPs of `dedup_greedy` accepting about `greedy` tokens (few duplicates visited), plus the one
    N x accepted product farthest-point sampling starts from (its blocks: `diversity.fps_flops`)."""
    block = min(block, num_visual)
    blocks = -(-greedy // block) if block else 0
    total = 2 * hidden_size * block * block * blocks  # each block's own block x block product
    total += 2 * hidden_size * block * sum(min(greedy, b * block) for b in range(1, blocks))  # against earlier
    return total + 2 * num_visual * hidden_size * greedy
