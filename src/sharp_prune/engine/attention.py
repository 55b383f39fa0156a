"""The registered attention functions: the stock implementation, plus a look at layer K-1's q and k.

`apply` switches the text decoder's attention implementation to ``sharp_prune_<base>``, registered as an
attention function and as a mask function (without the mask entry, transformers would build no causal mask
for it; see `hf_protocol.register_attention`). The wrapper hands query/key/value to the owning handle, which scores
visual tokens at layer K-1 (post-RoPE, without an N x N matrix) and, under SegM, returns the
segment-aware attention of layers < K; otherwise the base implementation runs unchanged. Modules
that belong to no handle just run the base implementation.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from .. import hf_protocol as hf
from ..errors import ConfigError

PREFIX = "sharp_prune_"
SUPPORTED_BASES = hf.SUPPORTED_ATTENTION


class AttentionObserver(Protocol):
    base_attention: Callable[..., Any]

    def attend(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Look at q/k/v; return (output [b, L, H, d], weights or None) to use instead of the base one, or None."""


# attention module -> the handle that owns it (weak both ways: no handle keeps a model alive)
_OBSERVERS: weakref.WeakKeyDictionary[nn.Module, AttentionObserver] = weakref.WeakKeyDictionary()


def base_attention_for(base: str, attention_module: nn.Module) -> Callable[..., Any]:
    """The function implementation `base` runs for `attention_module`."""
    return hf.attention_function(base, attention_module)


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
        replaced = observer.attend(module, query, key, value, attention_mask, **kwargs)
        if replaced is not None:
            return replaced
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
    if not hf.is_registered(name):
        hf.register_attention(name, _make_wrapper(base), mask_like=base)
    return name


def attach(attention_modules: list[nn.Module], observer: AttentionObserver) -> None:
    for module in attention_modules:
        _OBSERVERS[module] = observer


def detach(attention_modules: list[nn.Module]) -> None:
    for module in attention_modules:
        _OBSERVERS.pop(module, None)
