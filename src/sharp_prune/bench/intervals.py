"""95% bootstrap intervals for bench accuracies and paired differences, resampling items.

An accuracy is a mean of per-item 0/1 outcomes; a paired difference (a method against the unpruned model, or
ShaRP against FastV) is the mean of per-item differences on the same items, so the items' own difficulty
cancels. Intervals are percentile bootstrap intervals over items, seeded, so that the same outcomes always give
the same interval.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

RESAMPLES = 2000
LEVEL = 0.95


def bootstrap_interval(
    values: Sequence[float], resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampled with replacement, `resamples` times).

    Returns (low, high); (nan, nan) for no values. A constant sample gives a zero-width interval: the bootstrap
    cannot see variation that the items did not show (with few items, read it with that in mind).
    """
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    data = list(values)
    means = sorted(sum(rng.choices(data, k=n)) / n for _ in range(resamples))
    tail = (1.0 - level) / 2.0
    low = means[int(tail * (resamples - 1))]
    high = means[int(round((1.0 - tail) * (resamples - 1)))]
    return low, high


def paired_difference(
    first: Sequence[float], second: Sequence[float], resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, float]:
    """Mean of `first[i] - second[i]` over items, with its bootstrap interval: {"mean", "low", "high"}."""
    if len(first) != len(second):
        raise ValueError(f"paired outcomes need the same items: {len(first)} against {len(second)}.")
    differences = [a - b for a, b in zip(first, second, strict=True)]
    low, high = bootstrap_interval(differences, resamples, seed=seed)
    mean = sum(differences) / len(differences) if differences else float("nan")
    return {"mean": mean, "low": low, "high": high}
