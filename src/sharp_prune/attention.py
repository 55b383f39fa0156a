"""The registered attention functions: the stock implementation, plus a look at layer K-1's q and k.

`apply` switches the text decoder's `config._attn_implementation` to ``sharp_prune_<base>``, registered
with both `AttentionInterface` and `AttentionMaskInterface` (without the mask entry, transformers would
build no causal mask for it). The wrapper hands query/key/value to the owning handle, which scores
visual tokens at layer K-1 (post-RoPE, without an N x N matrix) and, under SegM, returns the
segment-aware attention of layers < K; otherwise the base implementation runs unchanged. Modules
that belong to no handle just run the base implementation.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from .errors import ConfigError

PREFIX = "sharp_prune_"
SUPPORTED_BASES = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flash_attention_4")


class AttentionObserver(Protocol):
    base_attention: Callable[..., Any]

    def observe_attention(
        self, module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> torch.Tensor | None:
        """Look at q/k/v; return an attention output ([b, L, H, d]) to use instead of the base one, or None."""


# attention module -> the handle that owns it (weak both ways: no handle keeps a model alive)
_OBSERVERS: weakref.WeakKeyDictionary[nn.Module, AttentionObserver] = weakref.WeakKeyDictionary()


def eager_attention_of(attention_module: nn.Module) -> Callable[..., Any]:
    """The model file's own `eager_attention_forward` (transformers registers no global eager)."""
    fn = getattr(sys.modules.get(type(attention_module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise ConfigError(
            f"{type(attention_module).__name__} has no eager_attention_forward in its module; "
            "load the model with attn_implementation='sdpa'."
        )
    return fn


def base_attention_for(base: str, attention_module: nn.Module) -> Callable[..., Any]:
    if base == "eager":
        return eager_attention_of(attention_module)
    return AttentionInterface._global_mapping[base]


def _make_wrapper(base: str) -> Callable[..., Any]:
    def sharp_prune_attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        observer = _OBSERVERS.get(module)
        if observer is None:
            return base_attention_for(base, module)(module, query, key, value, attention_mask, **kwargs)
        replaced = observer.observe_attention(module, query, key, value)
        if replaced is not None:
            return replaced, None
        return observer.base_attention(module, query, key, value, attention_mask, **kwargs)

    sharp_prune_attention.__name__ = f"{PREFIX}{base}"
    return sharp_prune_attention


def registered_name(base: str) -> str:
    """Register (once) and return the implementation name that wraps `base`."""
    if base not in SUPPORTED_BASES:
        raise ConfigError(
            f"attention implementation {base!r} is not supported by sharp-prune; load the model with "
            f"attn_implementation in {SUPPORTED_BASES} (sdpa is the default)."
        )
    name = f"{PREFIX}{base}"
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _make_wrapper(base))
        AttentionMaskInterface.register(name, AttentionMaskInterface._global_mapping[base])
    return name


def attach(attention_modules: list[nn.Module], observer: AttentionObserver) -> None:
    for module in attention_modules:
        _OBSERVERS[module] = observer


def detach(attention_modules: list[nn.Module]) -> None:
    for module in attention_modules:
        _OBSERVERS.pop(module, None)
