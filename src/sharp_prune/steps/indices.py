"""Index helpers that keep the host out of the pruning path."""

from __future__ import annotations

import torch


def true_first(mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Indices along `dim` of the True entries of `mask`, in order, then those of the False ones, in order.

    When the number k of True entries is known, ``true_first(mask)[..., :k]`` is what `mask.nonzero()` gives,
    without the host waiting for the device to say how many there are (a stable sort of one byte per entry).
    """
    return torch.argsort((~mask.bool()).to(torch.uint8), dim=dim, stable=True)
