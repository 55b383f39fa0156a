"""ShaRP's selection: dedup-greedy -> merge -> replenish -> registers (RegD), on calibrated scores.

The engine has already applied SegM (segment-aware mask in layers < K), segmented the frames and, for PosC,
calibrated the scores against the content-free prior; this selector turns scores, segments and hidden states
into B slots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...steps.indices import true_first
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
        num_segments = inputs.num_segments
        if num_segments is None:  # a caller outside the engine: read them from the segments (a host sync)
            num_segments = (inputs.segments.amax(dim=1) + 1).tolist()
        keeps, states, registers = [], [], []
        for row in range(scores.shape[0]):
            keep, state, is_register = self._regd_one(
                scores[row], inputs.hidden[row], inputs.segments[row], inputs.budget, num_segments[row]
            )
            keeps.append(keep)
            states.append(state)
            registers.append(is_register)
        return Selection(keep=torch.stack(keeps), hidden=torch.stack(states), is_register=torch.stack(registers))

    def _regd_one(
        self, scores: torch.Tensor, hidden: torch.Tensor, segments: torch.Tensor, budget: int, num_segments: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        config = self.config
        n = scores.shape[0]
        wanted_registers = config.regd_registers if config.regd_registers is not None else num_segments
        wanted_registers = min(wanted_registers, budget // 8)
        selected_budget = budget - wanted_registers
        replenish = round(config.regd_rho * selected_budget)
        unit = F.normalize(hidden.float(), dim=-1)

        # 1. dedup-greedy by calibrated score
        accepted, duplicate_of = dedup_greedy(scores, unit, selected_budget - replenish, config.regd_delta)
        kept = torch.zeros(n, dtype=torch.bool, device=scores.device)
        kept[accepted] = True
        num_kept = accepted.numel()
        merged = duplicate_of >= 0
        # 3. replenish by farthest-point sampling among tokens neither kept nor merged, then merged ones
        missing = selected_budget - num_kept
        picks = farthest_point_sampling(
            unit, missing, kept=kept, candidates=~kept, num_candidates=n - num_kept, num_kept=num_kept, after=merged
        )
        kept[picks] = True
        num_kept += picks.numel()
        # 4. registers: per segment, the mean of what is still dropped; a shortfall goes to more picks
        absorbed = merged if config.regd_merge else torch.zeros_like(merged)
        while True:
            dropped = ~kept & ~absorbed
            slots, register_states = segment_registers(segments, dropped, hidden, wanted_registers, num_segments)
            short = budget - num_kept - slots.numel()
            if short <= 0:
                break
            picks = farthest_point_sampling(
                unit, short, kept=kept, candidates=~kept, num_candidates=n - num_kept, num_kept=num_kept
            )
            if picks.numel() == 0:
                break
            kept[picks] = True
            num_kept += picks.numel()

        # 2. merge: kept tokens absorb the mean of their duplicates (a duplicate that was picked stays itself)
        states = hidden.clone()
        if config.regd_merge:
            merged = merged & ~kept
            owners = duplicate_of.clamp(min=0)
            totals = hidden.float().index_add(0, owners, torch.where(merged[:, None], hidden.float(), 0.0))
            counts = torch.ones(n, device=hidden.device).index_add(0, owners, merged.float())
            states = (totals / counts[:, None]).to(hidden.dtype)
        is_register = torch.zeros(n, dtype=torch.bool, device=scores.device)
        if slots.numel():
            states[slots] = register_states
            is_register[slots] = True
        # the kept slots in index order, without nonzero(): their number is known here
        keep = true_first(kept | is_register)[: num_kept + slots.numel()]
        return keep, states[keep], is_register[keep]
