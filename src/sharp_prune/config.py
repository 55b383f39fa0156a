"""`PruneConfig`: the frozen, validated description of one pruning setup.

It is echoed into every result file (`to_dict`) and can be read back (`from_dict`), which
rejects keys it does not know instead of silently ignoring them.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
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


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"PruneConfig.{name}={value!r} is not one of {choices}.")


def _check_range(name: str, value: Any, low: float, high: float) -> None:
    _check_type(name, value, (int, float), "a number")
    if not (math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"PruneConfig.{name}={value!r} is outside [{low}, {high}].")


def _check_field_names(cls: type, names: Any, where: str) -> None:
    """Unknown or non-string field names raise, naming the closest known field."""
    known = [f.name for f in dataclasses.fields(cls)]
    for name in names:
        if not isinstance(name, str):
            raise ConfigTypeError(f"{where}: field names are strings, got {type(name).__name__} {name!r}.")
    unknown = [name for name in names if name not in known]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"{where}: unknown field(s) {', '.join(hints)}; PruneConfig's fields are {', '.join(known)}.")


def check_layer(layer: int, num_layers: int, model: str = "this model") -> None:
    """K must leave at least one decoder layer before and after pruning: 1 <= K <= num_layers - 1.

    The one check of K's range: `apply`, the commands and the lmms-eval plugin all call it (the commands with the
    checkpoint's config, before any weights load).
    """
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ConfigTypeError(f"the layer K must be an int, got {type(layer).__name__} {layer!r}.")
    if not 1 <= layer <= num_layers - 1:
        raise ConfigError(
            f"layer K={layer} is outside [1, {num_layers - 1}] for {model} ({num_layers} decoder layers); pick K so "
            "that at least one layer runs before and after pruning (scores are read at K-1, tokens dropped before K)."
        )


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
        record_scores: also keep per-token scores in the record (off by default: copies).

    ShaRP (`method="sharp"`, see docs/method.md; every constant is a default to sweep, not a truth):
        sharp_query: "text" (every text token after the video scores) or "last" (the last token).
        segm: segment-aware causal masking in layers 0..K-1. segm_tau: cut between frames whose
            descriptor cosine is below it. segm_max_segments: cap on segments. segm_within: "causal" or
            "bidirectional" attention inside a segment.
        posc: positional bias calibration against a content-free (black-frame) prior. posc_lambda,
            posc_mode ("subtract": s - lambda * b, "divide": s / (b + eps)), posc_prior ("per_input"
            or "cached": reuse the prior of an identical token layout), posc_blank_token_id (generic
            adapter: the token whose embedding stands for a blank frame; default the pad token).
        regd: register token deduplication. regd_delta: cosine above which a token duplicates a kept
            one. regd_rho: share of the selection taken by farthest-point sampling. regd_registers:
            registers (default: one per segment, at most B // 8). regd_merge: kept tokens absorb the
            mean of their duplicates.
        feather_uniform: share of the `feather` budget taken by a uniform stride.
        pre: None or "temporal_merge" (drop a video token whose input embedding has cosine above
            pre_threshold with the same spatial token of the previous frame, before the LLM).
    """

    method: str = "fastv"
    retention: float = 0.25
    layer: int = 2
    seed: int = 0
    record_scores: bool = False
    # ShaRP (method="sharp"): which query rows score, and the three components with their constants.
    sharp_query: str = "text"
    segm: bool = True
    segm_tau: float = 0.9
    segm_max_segments: int = 8
    segm_within: str = "causal"
    posc: bool = True
    posc_lambda: float = 1.0
    posc_mode: str = "subtract"
    posc_prior: str = "per_input"
    posc_blank_token_id: int | None = None
    regd: bool = True
    regd_delta: float = 0.9
    regd_rho: float = 0.2
    regd_registers: int | None = None
    regd_merge: bool = True
    # Baselines.
    feather_uniform: float = 0.5
    # Pre-LLM stage, composable with every method.
    pre: str | None = None
    pre_threshold: float = 0.9

    def __post_init__(self) -> None:
        # Imported here: the selector registry imports this module.
        from .methods import available_methods

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
        for name in ("record_scores", "segm", "posc", "regd", "regd_merge"):
            _check_type(name, getattr(self, name), bool, "a bool")
        _check_choice("sharp_query", self.sharp_query, ("text", "last"))
        _check_choice("segm_within", self.segm_within, ("causal", "bidirectional"))
        _check_choice("posc_mode", self.posc_mode, ("subtract", "divide"))
        _check_choice("posc_prior", self.posc_prior, ("per_input", "cached"))
        _check_choice("pre", self.pre, (None, "temporal_merge"))
        for name, low, high in (
            ("segm_tau", -1.0, 1.0),
            ("regd_delta", -1.0, 1.0),
            ("pre_threshold", -1.0, 1.0),
            ("regd_rho", 0.0, 1.0),
            ("feather_uniform", 0.0, 1.0),
        ):
            _check_range(name, getattr(self, name), low, high)
        _check_type("posc_lambda", self.posc_lambda, (int, float), "a number")
        if not math.isfinite(self.posc_lambda) or self.posc_lambda < 0:
            raise ConfigError(f"PruneConfig.posc_lambda={self.posc_lambda!r} must be a finite number >= 0.")
        _check_type("segm_max_segments", self.segm_max_segments, int, "an int")
        if self.segm_max_segments < 1:
            raise ConfigError(f"PruneConfig.segm_max_segments={self.segm_max_segments} must be >= 1.")
        for name in ("posc_blank_token_id", "regd_registers"):
            value = getattr(self, name)
            if value is not None:
                _check_type(name, value, int, "an int or None")
                if value < 0:
                    raise ConfigError(f"PruneConfig.{name}={value} must be >= 0 (or None for the default).")

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
        _check_field_names(cls, list(data), "PruneConfig.from_dict (a result file of another sharp-prune version?)")
        return cls(**data)

    def replace(self, **changes: Any) -> PruneConfig:
        """A copy with some fields changed (validated again)."""
        _check_field_names(type(self), list(changes), "PruneConfig.replace")
        return dataclasses.replace(self, **changes)


def _checked_init(init: Any) -> Any:
    """Wrap the generated __init__: unknown keywords and extra positional arguments get the library's errors."""

    @functools.wraps(init)
    def __init__(self: PruneConfig, *args: Any, **kwargs: Any) -> None:
        fields = dataclasses.fields(PruneConfig)
        if len(args) > len(fields):
            raise ConfigTypeError(f"PruneConfig takes at most {len(fields)} positional arguments, got {len(args)}.")
        _check_field_names(PruneConfig, list(kwargs), "PruneConfig")
        init(self, *args, **kwargs)

    return __init__


PruneConfig.__init__ = _checked_init(PruneConfig.__init__)
