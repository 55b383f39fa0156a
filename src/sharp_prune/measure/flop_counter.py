"""FLOPs counted by torch (`FlopCounterMode`), to check the analytic count of `sharp_prune.measure.flops`.

torch registers FLOP formulas for its GPU attention kernels only; `flop_counter_mode` adds the CPU one, so that
a prefill's attention is counted on these machines too, one for triangular solves (the chunked gated delta
rule of linear-attention layers runs two per chunk), and one for grouped matmuls (transformers' default experts
implementation of mixture-of-experts MLPs, "grouped_mm", runs the experts as two of them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _sdpa_flop(
    query_shape: tuple[int, ...], key_shape: tuple[int, ...], value_shape: tuple[int, ...], *args: Any, **kwargs: Any
) -> int:
    """QK^T and AV at full q_len x kv_len, as torch counts its GPU sdpa kernels (GQA: query heads)."""
    b, heads, q_len, dim = query_shape
    kv_len, v_dim = key_shape[2], value_shape[3]
    return 2 * b * heads * q_len * kv_len * (dim + v_dim)


def _solve_triangular_flop(a_shape: tuple[int, ...], b_shape: tuple[int, ...], *args: Any, **kwargs: Any) -> int:
    """A triangular [n, n] system against m right-hand sides (left side): n^2 m FLOPs, one multiply-add per entry of
    the triangle per column (n(n-1)/2 of them with a unit diagonal, counted as n^2 / 2 for simplicity)."""
    n, m = a_shape[-1], b_shape[-1]
    batch = 1
    for size in b_shape[:-2]:
        batch *= size
    return batch * n * n * m


def _grouped_mm_flop(
    a_shape: tuple[int, ...], b_shape: tuple[int, ...], *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """`aten._grouped_mm` (and transformers' `grouped_mm_fallback`): every output entry is a K-long dot product,
    2 K FLOPs, except 2-D x 2-D, where the groups split K itself (2 M K N in all).

    transformers calls it 2-D x 3-D: [S, K] rows sorted by expert against [E, K, N] weights, one group of rows per
    expert (`offs`): 2 S K N, the S = tokens x k token-expert pairs each through its own expert. (Rows past the last
    offset, expert-parallel sentinels, are skipped by the kernel and counted here; a single-device run has none.)
    """
    k = a_shape[-1]
    if (len(a_shape) == 2 and len(b_shape) == 2) or out_shape is None:
        return 2 * a_shape[0] * k * b_shape[-1]
    entries = 1
    for size in out_shape:
        entries *= size
    return 2 * k * entries


def _grouped_mm_ops() -> list[Any]:
    """The grouped-matmul ops a mixture-of-experts forward may run (those this torch and transformers have)."""
    ops = [getattr(torch.ops.aten, "_grouped_mm", None)]
    try:
        import transformers.integrations.moe  # noqa: F401  (registers transformers::grouped_mm_fallback)

        ops.append(getattr(torch.ops.transformers, "grouped_mm_fallback", None))
    except (ImportError, AttributeError, RuntimeError):
        pass
    return [op for op in ops if op is not None]


def flop_counter_mode(display: bool = False) -> FlopCounterMode:
    """A `FlopCounterMode` that also counts CPU attention.

    torch registers FLOP formulas for its GPU sdpa kernels only: on CPU, `scaled_dot_product_attention`
    runs `aten._scaled_dot_product_flash_attention_for_cpu`, which a plain `FlopCounterMode` counts as 0.
    This one counts it like the GPU kernels (full q_len x kv_len, causality not discounted), counts
    `linalg_solve_triangular` (no formula in torch) as `_solve_triangular_flop` does, and grouped matmuls (no
    formula in torch either; a mixture-of-experts MLP's experts under transformers' default "grouped_mm") as
    `_grouped_mm_flop` does.
    """
    mapping: dict[Any, Any] = {torch.ops.aten.linalg_solve_triangular: _solve_triangular_flop}
    for op in _grouped_mm_ops():
        mapping[op] = _grouped_mm_flop
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _sdpa_flop
    return FlopCounterMode(display=display, custom_mapping=mapping)


@dataclass(frozen=True)
class MeasuredFlops:
    """FLOPs counted by `FlopCounterMode` over one forward.

    Attributes:
        total: everything the forward ran.
        text: the text decoder and the LM head (what `count_flops` models).
    """

    total: int
    text: int


def measure_prefill_flops(model: nn.Module, inputs: Mapping[str, Any], logits_to_keep: int = 1) -> MeasuredFlops:
    """Count one prefill forward of `model` with `FlopCounterMode` (under `torch.no_grad()`).

    Wrap the call in `handle.visual_frames(...)` for the generic adapter. On a VLM with PosC the first
    prefill of a video size also encodes one blank frame inside the decoder's call (it is cached after),
    so `text` includes it then: measure a second call for the decoder alone.
    """
    from ..models import resolve_adapter

    decoder = resolve_adapter(model).decoder(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {module: name for name, module in model.named_modules()}
    counter = flop_counter_mode()
    with torch.no_grad(), counter:
        model(**inputs, logits_to_keep=logits_to_keep)
    counts = counter.get_flop_counts()
    root = type(model).__name__

    def counted(module: nn.Module | None) -> int:
        if module is None or module not in names:
            return 0
        key = f"{root}.{names[module]}" if names[module] else root
        return sum(counts.get(key, {}).values())

    text = counted(decoder) + (counted(head) if head is not None and head not in decoder.modules() else 0)
    return MeasuredFlops(total=counter.get_total_flops(), text=text)
