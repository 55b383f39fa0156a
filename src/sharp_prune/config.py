"""`PruneConfig`: the frozen, validated description of one pruning setup, one class per method.

`PruneConfig` holds what every method shares (method, retention, layer K, seed, record_scores, the pre-LLM
stage). Each method adds its own fields, defaults, checks, named variants and costs in its own module under
`sharp_prune.methods` (`ShaRPConfig`, `FeatherConfig`, ...), the way PEFT has one config class per adapter.
``PruneConfig(method="sharp", retention=0.2)`` builds the method's class, so the one call keeps working for
every method; ``sp.ShaRPConfig(retention=0.2, segm_tau=0.8)`` is the same thing, spelled out.

A config is echoed into every result file (`to_dict`) and read back (`from_dict`), which refuses keys it does
not know. Keys of *another* method (older versions echoed every method's fields into every result) are
accepted with a `DeprecationWarning` and ignored.

The method registry lives here too (method name -> config class): `register_method`, `available_methods`,
`variants`, `config_for`. Each module under `sharp_prune.methods` registers its class when imported.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import ConfigError, ConfigTypeError, did_you_mean

QUERIES = ("none", "last", "text")

_METHODS: dict[str, type[PruneConfig]] = {}  # method name -> config class, in registration order


def check_type(name: str, value: Any, types: type | tuple[type, ...], hint: str) -> None:
    """`ConfigTypeError` unless `value` is one of `types` (a bool is not a number here)."""
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ConfigTypeError(f"PruneConfig.{name} must be {hint}, got bool {value!r}.")
    if not isinstance(value, types):
        raise ConfigTypeError(f"PruneConfig.{name} must be {hint}, got {type(value).__name__} {value!r}.")


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"PruneConfig.{name}={value!r} is not one of {choices}.")


def check_range(name: str, value: Any, low: float, high: float) -> None:
    check_type(name, value, (int, float), "a number")
    if not (math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"PruneConfig.{name}={value!r} is outside [{low}, {high}].")


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


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _method_of(args: tuple[Any, ...], kwargs: dict[str, Any], default: str) -> Any:
    if "method" in kwargs:
        return kwargs["method"]
    return args[0] if args else default


def _sort_fields(cls: type[PruneConfig], names: list[Any], where: str) -> tuple[list[str], list[str]]:
    """Split field names into the class's own and those of other methods (legacy); refuse anything else."""
    known = field_names(cls)
    for name in names:
        if not isinstance(name, str):
            raise ConfigTypeError(f"{where}: field names are strings, got {type(name).__name__} {name!r}.")
    others = {n for other in _METHODS.values() for n in field_names(other)}
    legacy = [n for n in names if n not in known and n in others]
    unknown = [n for n in names if n not in known and n not in others]
    if unknown:
        hints = did_you_mean(unknown, sorted(set(known) | others))
        raise ConfigError(f"{where}: unknown field(s) {hints}; {cls.__name__}'s fields are {', '.join(known)}.")
    return [n for n in names if n in known], legacy


def _warn_legacy(cls: type[PruneConfig], legacy: list[str]) -> None:
    owners = sorted({c.method_name for c in _METHODS.values() for n in legacy if n in field_names(c) and c is not cls})
    warnings.warn(
        f"PruneConfig fields {legacy} belong to method(s) {owners}, not to {cls.method_name!r}, and are ignored. "
        "Earlier sharp-prune versions accepted (and echoed) every method's fields for every method; pass only the "
        "method's own fields (this will become an error).",
        DeprecationWarning,
        stacklevel=4,
    )


@dataclass(frozen=True)
class PruneConfig:
    """How to prune visual tokens inside the language model (the fields every method shares).

    Args:
        method: the method's name, one of `sharp_prune.available_methods()`; it selects the config class
            (``PruneConfig(method="sharp")`` is a `ShaRPConfig`), whose own fields may be passed along.
        retention: fraction r in (0, 1] of visual tokens that continue past layer `layer`; the per-sample
            budget is B = max(1, round(r * N)) for N visual tokens.
        layer: K, the first decoder layer that sees only the kept tokens (1 <= K <= num_layers - 1).
            Attention scores are read at layer K - 1.
        seed: seed of randomised steps (`random`); the same input and seed always give the same keep plan.
        record_scores: also keep per-token scores in the record (off by default: copies).
        pre: None or "temporal_merge" (drop a video token whose input embedding has cosine above
            `pre_threshold` with the same spatial token of the previous frame, before the LLM; composes with
            every method).
        pre_threshold: the pre-LLM stage's cosine threshold.

    What the engine must compute for a method is said by its class (overridden per method): `query` (which
    rows score the video tokens at K-1: "none", "last", "text"), `rope` (score post-RoPE, or with RoPE
    removed), `needs_hidden`, `needs_segments`, `segment_mask` (SegM in layers < K), `needs_prior` (PosC's
    blank pass); and what it costs: `blank_pass_each_prefill`, `selection_flops`, `attention_pairs_before_k`.
    """

    method_name: ClassVar[str] = ""
    selector_class: ClassVar[type | None] = None
    variants: ClassVar[dict[str, dict[str, Any]]] = {}  # named variants: name -> field overrides
    ablations: ClassVar[tuple[str, ...]] = ()  # variants that switch one component off

    method: str = "fastv"
    retention: float = 0.25
    layer: int = 2
    seed: int = 0
    record_scores: bool = False
    pre: str | None = None
    pre_threshold: float = 0.9

    def __new__(cls, *args: Any, **kwargs: Any) -> PruneConfig:
        method = _method_of(args, kwargs, cls.method_name or "fastv")
        if not isinstance(method, str):
            raise ConfigTypeError(f"PruneConfig.method must be a method name (str), got {type(method).__name__}.")
        target = _METHODS.get(method)
        if target is None:
            raise ConfigError(
                f"PruneConfig.method={method!r} is unknown; choose one of {', '.join(available_methods())}."
            )
        if cls is not PruneConfig and not issubclass(target, cls):
            raise ConfigError(f"{cls.__name__} is the config of method {cls.method_name!r}, not of {method!r}.")
        return object.__new__(target)

    def __post_init__(self) -> None:
        check_type("retention", self.retention, (int, float), "a number in (0, 1]")
        if not (math.isfinite(self.retention) and 0.0 < float(self.retention) <= 1.0):
            raise ConfigError(
                f"PruneConfig.retention={self.retention!r} is outside (0, 1]; it is the fraction of visual "
                "tokens kept, e.g. 0.2 keeps 20%."
            )
        object.__setattr__(self, "retention", float(self.retention))
        check_type("layer", self.layer, int, "an int (the decoder layer K)")
        if self.layer < 1:
            raise ConfigError(
                f"PruneConfig.layer={self.layer} must be >= 1: scores are read at layer K-1, tokens dropped before K."
            )
        check_type("seed", self.seed, int, "an int")
        check_type("record_scores", self.record_scores, bool, "a bool")
        check_choice("pre", self.pre, (None, "temporal_merge"))
        check_range("pre_threshold", self.pre_threshold, -1.0, 1.0)

    # ------------------------------------------------------------------ what the method asks of the engine
    @property
    def query(self) -> str:
        """Query rows that score the visual tokens at K-1: "none", "last" (the last real token), "text"."""
        return "none"

    @property
    def rope(self) -> bool:
        """Score with post-RoPE q and k (True) or with RoPE removed from both (False)."""
        return True

    @property
    def needs_hidden(self) -> bool:
        """The selector reads the visual tokens' hidden states entering layer K."""
        return False

    @property
    def needs_segments(self) -> bool:
        """The selector reads a scene segment id per visual token (`segment` step)."""
        return False

    @property
    def segment_mask(self) -> bool:
        """Layers 0..K-1 attend under a segment-aware mask (SegM)."""
        return False

    @property
    def needs_prior(self) -> bool:
        """Scores are calibrated against a content-free prior (PosC's blank pass)."""
        return False

    # ------------------------------------------------------------------ steps a method owns (called when it asks)
    def segment(self, visual_embeds: Any, frame_ids: Any, num_frames: int | None = None) -> tuple[Any, Any]:
        """One sample's scene segments: ([N] segment id per visual token, [F-1] frame-to-frame similarity).
        Called when `needs_segments`."""
        raise NotImplementedError(f"{type(self).__name__} segments nothing")

    def plan_segments(self, segment_map: Any, key_valid: Any) -> Any:
        """The segments' layout on the host (`num_segments` per sample, and what `attend_before_k` needs), built
        once per prefill. Called when `needs_segments`."""
        raise NotImplementedError(f"{type(self).__name__} segments nothing")

    def attend_before_k(
        self, query: Any, key: Any, value: Any, segment_map: Any, key_valid: Any, scaling: float, plan: Any = None
    ) -> Any:
        """Attention of one layer < K under the method's mask ([b, L, H, d]). Called when `segment_mask`."""
        raise NotImplementedError(f"{type(self).__name__} changes no attention")

    def dense_mask_before_k(self, segment_map: Any, key_valid: Any) -> Any:
        """The same mask as [b, 1, L, L] bool (for eager, which materialises L x L weights anyway)."""
        raise NotImplementedError(f"{type(self).__name__} changes no attention")

    def blank_embeddings(self, embeds: Any, positions: Any, blank_frame: Any, frame_ids: Any, kept: Any = None) -> Any:
        """The content-free copy of the decoder's input for the prior. Called when `needs_prior`."""
        raise NotImplementedError(f"{type(self).__name__} uses no prior")

    def prior_cache_key(self, **layout: Any) -> tuple | None:
        """A key to reuse the prior across prefills of the same token layout, or None (compute it every time)."""
        return None

    def calibrate(self, scores: Any, prior: Any) -> Any:
        """Scores after calibration against the prior. Called when `needs_prior`."""
        raise NotImplementedError(f"{type(self).__name__} uses no prior")

    # ------------------------------------------------------------------ what the method costs (measure/flops)
    @property
    def expected_segments(self) -> int:
        """Scene segments to assume when estimating a prefill that has not run (`measure.flops.estimate`)."""
        return 1

    @property
    def blank_pass_each_prefill(self) -> bool:
        """The blank pass (layers 0..K-1 again) runs on every prefill, not from a cache."""
        return False

    def selection_flops(self, num_visual: int, budget: int, hidden_size: int, num_segments: int) -> int:
        """Matmul FLOPs of the selection itself (similarities), for one sample; 0 for score-only methods."""
        return 0

    def attention_pairs_before_k(self, valid: Any, visual: Any, segments: Any, ideal: bool) -> int | None:
        """(query, key) pairs of one layer < K for one sample, when the method changes them; None: causal."""
        return None

    # ------------------------------------------------------------------ budget, model checks, selector
    def budget(self, num_visual: int) -> int:
        """Visual slots that continue past layer K for a sample with `num_visual` visual tokens."""
        if num_visual <= 0:
            return 0
        return min(num_visual, max(1, round(self.retention * num_visual)))

    def check_model(self, model: Any) -> None:
        """Checks that need the model (before anything is attached); `ConfigError` when the config does not fit."""

    def selector(self) -> Any:
        """A fresh selector of this method (`sharp_prune.methods.Selector`)."""
        return self.selector_class(self)

    # ------------------------------------------------------------------ round trip
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the method's fields (echoed into result files)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        """Build a config from `to_dict` output; unknown keys raise `ConfigError` naming them."""
        if not isinstance(data, dict):
            raise ConfigTypeError(f"PruneConfig.from_dict needs a dict, got {type(data).__name__}.")
        for key in data:
            if not isinstance(key, str):
                raise ConfigTypeError(
                    f"PruneConfig.from_dict (a result file of another sharp-prune version?): field names are strings, "
                    f"got {type(key).__name__} {key!r}."
                )
        return cls(**data)

    def replace(self, **changes: Any) -> PruneConfig:
        """A copy with some fields changed (validated again); changing `method` keeps the shared fields."""
        if "method" in changes and changes["method"] != self.method:
            shared = {name: getattr(self, name) for name in field_names(PruneConfig)}
            return PruneConfig(**{**shared, **changes})
        own, legacy = _sort_fields(type(self), list(changes), "PruneConfig.replace")
        if legacy:
            _warn_legacy(type(self), legacy)
        return dataclasses.replace(self, **{name: changes[name] for name in own})


def checked_init(cls: type[PruneConfig]) -> type[PruneConfig]:
    """Wrap a config class's generated __init__: unknown keywords get the library's errors (with a suggestion),
    other methods' fields a deprecation warning, too many positional arguments a `ConfigTypeError`."""
    init = cls.__dict__["__init__"]

    @functools.wraps(init)
    def __init__(self: PruneConfig, *args: Any, **kwargs: Any) -> None:
        fields = dataclasses.fields(cls)
        if len(args) > len(fields):
            raise ConfigTypeError(f"{cls.__name__} takes at most {len(fields)} positional arguments, got {len(args)}.")
        own, legacy = _sort_fields(cls, list(kwargs), cls.__name__)
        if legacy:
            _warn_legacy(cls, legacy)
        init(self, *args, **{name: kwargs[name] for name in own})
        if self.method != cls.method_name:
            raise ConfigError(f"{cls.__name__} is the config of method {cls.method_name!r}, not of {self.method!r}.")

    cls.__init__ = __init__
    return cls


def config_for(name: str, **fields: Any) -> PruneConfig:
    """The config of a method or of a named variant (``"sharp-cached"``, ``"sharp-segm"``, ...) with `fields`."""
    known = variants()
    if name not in known:
        raise ConfigError(f"unknown method or variant {name!r}; choose one of {', '.join(known)}.")
    method, overrides = known[name]
    return PruneConfig(method=method, **{**fields, **overrides})


# ---------------------------------------------------------------------------------------------- the registry
def register_method(cls: type) -> type:
    """Class decorator: make a method available as ``PruneConfig(method=...)``.

    Decorate the method's config class (a frozen dataclass subclassing `PruneConfig`, with `method_name` and
    `selector_class` set). For compatibility, decorating a `Selector` subclass with a `name` registers it with a
    config class of the shared fields only.
    """
    if not (isinstance(cls, type) and issubclass(cls, PruneConfig)):
        return _register_selector(cls)
    if not cls.method_name or cls.selector_class is None:
        raise ConfigError(f"{cls.__name__} needs `method_name` and `selector_class` to be registered.")
    default = next(f.default for f in dataclasses.fields(cls) if f.name == "method")
    if default != cls.method_name:
        raise ConfigError(f"{cls.__name__}.method must default to {cls.method_name!r}, not {default!r}.")
    _METHODS[cls.method_name] = checked_init(cls)
    return cls


def _register_selector(selector: type) -> type:
    name = getattr(selector, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"register_method needs a PruneConfig subclass, or a Selector with a `name`; got {selector!r}."
        )
    query = getattr(selector, "query", "none")
    if query not in QUERIES:
        raise ConfigError(f"{selector.__name__}.query must be 'none', 'last' or 'text', got {query!r}.")
    attributes: dict[str, Any] = {"method_name": name, "selector_class": selector}
    for attr in ("query", "rope", "needs_hidden", "needs_segments", "segment_mask", "needs_prior"):
        if hasattr(selector, attr):
            attributes[attr] = _constant(getattr(selector, attr))
    config = dataclasses.make_dataclass(
        f"{selector.__name__}Config",
        [("method", str, dataclasses.field(default=name))],
        bases=(PruneConfig,),
        frozen=True,
        namespace=attributes,
    )
    register_method(config)
    return selector


def _constant(value: Any) -> property:
    return property(lambda self: value)


def config_class(method: str) -> type[PruneConfig]:
    """The config class of a registered method (`ConfigError` for an unknown one)."""
    if method not in _METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(_METHODS)}.")
    return _METHODS[method]


def available_methods() -> tuple[str, ...]:
    """Names accepted by `PruneConfig.method`, in registration order."""
    return tuple(_METHODS)


def variants() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every named variant of every method: variant name -> (method, field overrides), e.g.
    ``"sharp-cached" -> ("sharp", {"posc_prior": "cached"})``. A method's own name is a variant of itself."""
    named: dict[str, tuple[str, dict[str, Any]]] = {name: (name, {}) for name in _METHODS}
    for name, cls in _METHODS.items():
        for variant, overrides in cls.variants.items():
            named[variant] = (name, dict(overrides))
    return named


def ablations() -> tuple[str, ...]:
    """Variants that switch one component of a method off (`sharp-prune bench --ablation`)."""
    return tuple(variant for cls in _METHODS.values() for variant in cls.ablations)
