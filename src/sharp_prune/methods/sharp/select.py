"""ShaRP's selection: dedup-greedy -> merge -> replenish -> registers (RegD), on calibrated scores.

The engine has already applied SegM (segment-aware mask in layers < K), segmented the frames and, for PosC,
calibrated the scores against the content-free prior; this selector turns scores, segments and hidden states
into B slots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Selection, SelectionInput, Selector
from ..diversity import farthest_point_sampling
from .regd import dedup_greedy, segment_registers


class ShaRPSelector(Selector):
    """ShaRP (arXiv 2512.05385) as specified in docs/method.md; each component has an on/off switch."""

    def select(self, inputs: SelectionInput) -> Selection:
        config = self.config
        scores = inputs.scores  # calibrated by the engine when PosC is on
        if not config.regd or inputs.budget >= inputs.layout.num_visual:
            return Selection(keep=torch.topk(scores, inputs.budget, dim=1).indices.sort(dim=1).values)
        keeps, states, registers = [], [], []
        for row in range(scores.shape[0]):
            keep, state, is_register = self._regd_one(
                scores[row], inputs.hidden[row], inputs.segments[row], inputs.budget
            )
            keeps.append(keep)
            states.append(state)
            registers.append(is_register)
        return Selection(keep=torch.stack(keeps), hidden=torch.stack(states), is_register=torch.stack(registers))

    def _regd_one(
        self, scores: torch.Tensor, hidden: torch.Tensor, segments: torch.Tensor, budget: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        config = self.config
        n = scores.shape[0]
        num_segments = int(segments.max()) + 1
        wanted_registers = config.regd_registers if config.regd_registers is not None else num_segments
        wanted_registers = min(wanted_registers, budget // 8)
        selected_budget = budget - wanted_registers
        replenish = round(config.regd_rho * selected_budget)
        unit = F.normalize(hidden.float(), dim=-1)

        # 1. dedup-greedy by calibrated score
        accepted, duplicate_of = dedup_greedy(scores, unit, selected_budget - replenish, config.regd_delta)
        kept = torch.zeros(n, dtype=torch.bool, device=scores.device)
        kept[accepted] = True
        merged = duplicate_of >= 0
        # 3. replenish by farthest-point sampling among tokens neither kept nor merged (then any left)
        missing = selected_budget - int(kept.sum())
        for pool in (~kept & ~merged, ~kept):
            if missing <= 0:
                break
            picks = farthest_point_sampling(unit, missing, kept=kept, candidates=pool)
            kept[picks] = True
            missing -= picks.numel()
        # 4. registers: per segment, the mean of what is still dropped; a shortfall goes to more picks
        absorbed = merged if config.regd_merge else torch.zeros_like(merged)
        while True:
            dropped = ~kept & ~absorbed
            slots, register_states = segment_registers(segments, dropped, hidden, wanted_registers)
            short = budget - int(kept.sum()) - slots.numel()
            if short <= 0:
                break
            picks = farthest_point_sampling(unit, short, kept=kept, candidates=~kept)
            if picks.numel() == 0:
                break
            kept[picks] = True

        # 2. merge: kept tokens absorb the mean of their duplicates
        states = hidden.clone()
        merged = merged & ~kept  # a duplicate that replenishment picked stays itself
        if config.regd_merge and bool(merged.any()):
            owners = duplicate_of[merged]
            totals = hidden.float().clone()
            counts = torch.ones(n, device=hidden.device)
            totals.index_add_(0, owners, hidden[merged].float())
            counts.index_add_(0, owners, torch.ones(owners.numel(), device=hidden.device))
            states = (totals / counts[:, None]).to(hidden.dtype)
        is_register = torch.zeros(n, dtype=torch.bool, device=scores.device)
        if slots.numel():
            states[slots] = register_states
            is_register[slots] = True
        keep = (kept | is_register).nonzero().flatten()
        return keep, states[keep], is_register[keep]
