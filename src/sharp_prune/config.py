"""`PruneConfig`: the frozen, validated description of one pruning setup.

It is echoed into every result file (`to_dict`) and can be read back (`from_dict`), which
rejects keys it does not know instead of silently ignoring them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, ConfigTypeError


def _check_type(name: str, value: Any, types: type | tuple[type, ...], hint: str) -> None:
    # bool is an int subclass: reject it where a number is asked for.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ConfigTypeError(f"PruneConfig.{name} must be {hint}, got bool {value!r}.")
    if not isinstance(value, types):
        raise ConfigTypeError(f"PruneConfig.{name} must be {hint}, got {type(value).__name__} {value!r}.")


@dataclass(frozen=True)
class PruneConfig:
    """How to prune visual tokens inside the language model.

    Args:
        method: selector name; see `sharp_prune.available_methods()` (`none`, `random`, `uniform`,
            `fastv`, ...). `none` runs the engine but keeps every token.
        retention: fraction r in (0, 1] of visual tokens that continue past layer `layer`; the per-sample
            budget is B = max(1, round(r * N)) for N visual tokens.
        layer: K, the first decoder layer that sees only the kept tokens (1 <= K <= num_layers - 1).
            Attention scores are read at layer K - 1.
        seed: seed of the `random` selector (and of any other randomised step); the same input and seed
            always give the same keep plan.
        record_scores: also keep the per-token scores in `PruneRecord.scores` (off by default: copies).
    """

    method: str = "fastv"
    retention: float = 0.25
    layer: int = 2
    seed: int = 0
    record_scores: bool = False

    def __post_init__(self) -> None:
        # Imported here: the selector registry imports this module.
        from .selectors import available_methods

        _check_type("method", self.method, str, "a method name (str)")
        if self.method not in available_methods():
            raise ConfigError(
                f"PruneConfig.method={self.method!r} is unknown; choose one of {', '.join(available_methods())}."
            )
        _check_type("retention", self.retention, (int, float), "a number in (0, 1]")
        if not (math.isfinite(self.retention) and 0.0 < float(self.retention) <= 1.0):
            raise ConfigError(
                f"PruneConfig.retention={self.retention!r} is outside (0, 1]; it is the fraction of visual "
                "tokens kept, e.g. 0.2 keeps 20%."
            )
        object.__setattr__(self, "retention", float(self.retention))
        _check_type("layer", self.layer, int, "an int (the decoder layer K)")
        if self.layer < 1:
            raise ConfigError(
                f"PruneConfig.layer={self.layer} must be >= 1: scores are read at layer K-1, tokens dropped before K."
            )
        _check_type("seed", self.seed, int, "an int")
        _check_type("record_scores", self.record_scores, bool, "a bool")

    def budget(self, num_visual: int) -> int:
        """Visual slots that continue past layer K for a sample with `num_visual` visual tokens."""
        if num_visual <= 0:
            return 0
        return min(num_visual, max(1, round(self.retention * num_visual)))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (echoed into result files)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        """Build a config from `to_dict` output; unknown keys raise `ConfigError` naming them."""
        if not isinstance(data, dict):
            raise ConfigTypeError(f"PruneConfig.from_dict needs a dict, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"PruneConfig.from_dict got unknown keys {unknown} (from another sharp-prune version?); "
                f"known keys are {sorted(known)}."
            )
        return cls(**data)

    def replace(self, **changes: Any) -> PruneConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
