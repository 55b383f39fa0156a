"""Memory a prefill needs: live tensor bytes on the CPU (a dispatch mode), CUDA's own peak on a GPU."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

# What each measure counts, by device type (echoed in result files).
MEMORY_MEASURES = {
    "cuda": "torch.cuda.max_memory_allocated during each timed forward (reset before it), minus the bytes "
    "allocated just before it; the largest over the repeats. peak_bytes is the absolute peak (weights included).",
    "cpu": "peak of live bytes of tensor storages allocated during one untimed forward (TorchDispatchMode, "
    "storages tracked until freed): activations, KV cache and logits above what existed before the call "
    "(weights, inputs). Kernel-internal scratch buffers and allocator overhead are not seen.",
}


class LiveTensorBytes(TorchDispatchMode):
    """Tracks bytes of tensor storages allocated inside the `with` block while they stay alive.

    Every op output whose storage is new (not one of the op's inputs' storages, not already tracked)
    is counted until the storage is freed. `peak` is the largest live total, `current` what is still
    alive (e.g. the returned logits and KV cache). Storages that existed before the block are never
    counted; neither are buffers a kernel allocates and frees internally. Slows every op a little:
    measure in a separate, untimed call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._tracked: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def _free(self, nbytes: int) -> None:
        self.current -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t.untyped_storage() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            nbytes = storage.nbytes()
            if nbytes == 0 or storage in self._tracked or any(storage is s for s in inputs):
                continue
            self._tracked[storage] = nbytes
            weakref.finalize(storage, self._free, nbytes)
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        return out


def cuda_peak(fn: Callable[[], Any], device: torch.device) -> tuple[Any, int, int]:
    """(result, peak bytes above what was allocated before the call, absolute peak bytes) of one call on a GPU."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return result, peak - before, peak


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers (tied weights counted once)."""
    seen: dict[int, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())
