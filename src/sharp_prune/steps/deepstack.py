"""DeepStack (Qwen3-VL): visual features the text decoder adds to the hidden states after its first layers.

After decoder layer j (j < number of DeepStack levels), the decoder adds `features[j]` ([n_visual, D], in the
row-major order of `mask`) to the hidden states at every visual position of `mask` ([b, L]). Pruning at layer K
keeps adding them after layers >= K, at the visual positions the keep plan kept: each kept visual token gets its
own feature row, found by its rank among the visual positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def visual_rank(mask: torch.Tensor) -> torch.Tensor:
    """[b, L] row of each visual position in a features tensor laid out in `mask`'s row-major order; -1 elsewhere."""
    flat = mask.reshape(-1).long()
    rank = flat.cumsum(0) - 1
    return torch.where(flat.bool(), rank, -1).view(mask.shape)


@dataclass(frozen=True)
class DeepStack:
    """The DeepStack features of layers `start`, `start + 1`, ... and where they go.

    Attributes:
        rank: [b, L] row of each visual position in the features, -1 for other positions (`visual_rank`).
        features: the features added after layers start, start + 1, ...: each [n_visual, D].
        start: the first of those layers (the pruning layer K).
    """

    rank: torch.Tensor
    features: tuple[torch.Tensor, ...]
    start: int

    @classmethod
    def of(cls, mask: torch.Tensor, features: list[torch.Tensor], start: int) -> DeepStack:
        """The levels of `features` from layer `start` on, with `mask` the decoder's `visual_pos_masks`."""
        return cls(rank=visual_rank(mask.to(features[0].device)), features=tuple(features[start:]), start=start)

    def add_after(self, layer: int, hidden: torch.Tensor, keep_index: torch.Tensor) -> torch.Tensor | None:
        """`hidden` ([b, n, D], the positions of `keep_index` [b, n]) plus layer `layer`'s features at its visual
        positions; None when DeepStack adds nothing after that layer."""
        level = layer - self.start
        if not 0 <= level < len(self.features):
            return None
        rank = self.rank.to(keep_index.device).gather(1, keep_index)  # [b, n]
        features = self.features[level].to(hidden.device, hidden.dtype)
        # gathered at every slot and zeroed off the visual ones: no boolean indexing, so no host sync
        gathered = features[rank.clamp(min=0)]  # [b, n, D]
        return hidden + torch.where((rank >= 0)[..., None], gathered, torch.zeros((), dtype=hidden.dtype))


def full_additions(mask: torch.Tensor, features: list[torch.Tensor], levels: int, dtype: torch.dtype) -> list:
    """What the decoder adds after each of its first `levels` layers: [b, L, D] per level, zero outside `mask`."""
    out = []
    for level in features[:levels]:
        added = torch.zeros((*mask.shape, level.shape[-1]), dtype=dtype, device=level.device)
        out.append(added.masked_scatter(mask.to(level.device)[..., None], level.to(dtype)))
    return out
