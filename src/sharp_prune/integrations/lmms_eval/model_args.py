"""``--model_args`` of the lmms-eval plugin: which keys are the pruning config, which are the plugin's own,
and which go on to the upstream wrapper. Pure: no lmms-eval or model needed."""

from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import PruneConfig, available_methods, config_class
from ...errors import ConfigError, ConfigTypeError, did_you_mean

#: The plugin's own keys (besides every `PruneConfig` field).
PLUGIN_OPTIONS = {
    "prune_log": "folder for the per-sample JSONL and the summary JSON (default $SHARP_PRUNE_LOG_DIR or "
    "./sharp_prune_logs)",
    "prune_timing": "time each prefill (default true; CUDA events on GPU)",
}

_OPTIONAL = {"pre", "posc_blank_token_id", "regd_registers"}  # fields that accept None


def _config_fields() -> dict[str, dataclasses.Field]:
    """Every pruning field of every method (the `method` key picks whose apply)."""
    fields: dict[str, dataclasses.Field] = {}
    for method in available_methods():
        for f in dataclasses.fields(config_class(method)):
            fields.setdefault(f.name, f)
    return fields


@dataclass(frozen=True)
class PluginOptions:
    """What the plugin does beside pruning.

    Attributes:
        log_dir: where the per-sample rows and the summary are written.
        timing: whether each prefill is timed.
    """

    log_dir: Path
    timing: bool = True


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.strip().lower() in ("true", "1", "yes", "on")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigTypeError(f"model_args {name}={value!r} must be true or false.")


def _coerce(name: str, value: Any) -> Any:
    """lmms-eval turns 'true'/'false' and numbers into Python values; Python callers may pass strings."""
    default = _config_fields()[name].default
    if name in _OPTIONAL and isinstance(value, str) and value.strip().lower() in ("none", "null", ""):
        return None
    if isinstance(default, bool):
        return _bool(name, value)
    if isinstance(value, str) and (isinstance(default, (int, float)) or name in _OPTIONAL - {"pre"}):
        try:
            number = float(value)
        except ValueError:
            return value  # PruneConfig names the expected type
        return int(number) if number.is_integer() and not isinstance(default, float) else number
    return value


def upstream_args(upstream: type) -> set[str]:
    """The keyword arguments `upstream`'s constructor takes: its own `__init__`'s, and, while that one passes
    ``**kwargs`` on, those of the next `__init__` up the class hierarchy (lmms-eval's qwen3_5 takes its own few
    and hands `device_map`, `attn_implementation`... to qwen3_vl's)."""
    accepted: set[str] = set()
    for cls in upstream.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None or cls is object:
            continue
        parameters = inspect.signature(init).parameters.values()
        accepted |= {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return accepted


def split_model_args(
    kwargs: dict[str, Any], upstream: type | None = None, defaults: PruneConfig | None = None
) -> tuple[PruneConfig, PluginOptions, dict[str, Any]]:
    """Split the keyword arguments lmms-eval parsed from ``--model_args``.

    Args:
        kwargs: every model argument (``pretrained=...,method=sharp,retention=0.2,...``).
        upstream: the upstream wrapper class; when given, keys that are neither pruning, plugin nor upstream
            arguments raise `ConfigError` here, naming the nearest known key, before any model loads.
        defaults: the pruning config the keys change (default ShaRP at r = 0.2, K = 2).

    Returns:
        The validated `PruneConfig`, the `PluginOptions`, and the arguments left for the upstream wrapper.
    """
    config_fields = _config_fields()
    config_args: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in config_fields:
            config_args[key] = _coerce(key, value)
        elif key not in PLUGIN_OPTIONS:
            rest[key] = value
    base = defaults if defaults is not None else PruneConfig(method="sharp", retention=0.2, layer=2)
    config = base.replace(**config_args)

    log_dir = kwargs.get("prune_log") or os.environ.get("SHARP_PRUNE_LOG_DIR") or "sharp_prune_logs"
    options = PluginOptions(log_dir=Path(str(log_dir)), timing=_bool("prune_timing", kwargs.get("prune_timing", True)))

    if upstream is not None:
        accepted = upstream_args(upstream)
        unknown = sorted(set(rest) - accepted)
        if unknown:
            hints = did_you_mean(unknown, sorted(accepted | set(config_fields) | set(PLUGIN_OPTIONS)))
            raise ConfigError(
                f"unknown model_args {hints}; pruning keys are the PruneConfig fields "
                f"({', '.join(sorted(config_fields))}), plugin keys {', '.join(sorted(PLUGIN_OPTIONS))}, and "
                f"{upstream.__name__} takes {', '.join(sorted(accepted))}."
            )
    return config, options, rest


__all__ = ["PLUGIN_OPTIONS", "PluginOptions", "split_model_args", "upstream_args"]
