"""Hypothesis settings shared by the property tests: no deadline (torch's first calls are slow), example counts
scaled by SHARP_PRUNE_PROPERTY_SCALE (e.g. 10 for a longer hunt; 1 in CI)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SCALE = int(os.environ.get("SHARP_PRUNE_PROPERTY_SCALE", "1"))


def property_settings(examples: int) -> settings:
    """`examples` x SCALE examples, no deadline, failing examples printed as reproducible blobs."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
