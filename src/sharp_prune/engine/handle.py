"""`apply(model, config)` attaches pruning to a model instance; the `PruneHandle` it returns removes it again.

The handle owns the hooks and the state that outlives one forward (the last record, the cache a pruned
prefill wrote, PosC's cached priors). Its hooks do nothing themselves: the model's pre-hook decides what kind
of call this is and builds its `Forward` (engine/forward.py, engine/prefill.py); every later hook hands control
to that object. Every argument is read through `hf_protocol`; a `ProtocolError` raised on the way leaves no
record behind.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .. import hf_protocol as hf
from ..config import PruneConfig, check_layer
from ..errors import AlreadyAppliedError, ConfigError, ConfigTypeError, InputError, ProtocolError
from ..models import ModelAdapter, resolve_adapter
from ..record import PruneRecord
from ..steps.keep_plan import KeepPlan
from ..steps.locate import checked_frame_map, locate
from ..steps.record import empty_record
from ..steps.sliding import check_linear_layer_k, check_shared_kv_k, score_layer
from . import attention as attn
from .forward import Decode, Forward, NoVideoPrefill, Parts
from .prefill import Prefill

logger = logging.getLogger(__name__)

# model -> its active handle: one handle per model instance.
_APPLIED: weakref.WeakKeyDictionary[nn.Module, PruneHandle] = weakref.WeakKeyDictionary()


class PruneHandle:
    """A pruning setup attached to one model instance; returned by `sharp_prune.apply`.

    Attributes:
        config: the `PruneConfig`.
        adapter: the model family's entry (`ModelAdapter`).
        last: `PruneRecord` of the latest prefill (None before the first, and after a prefill that failed).
    """

    def __init__(self, model: nn.Module, config: PruneConfig, adapter: ModelAdapter) -> None:
        self.config = config
        self.adapter = adapter
        self.last: PruneRecord | None = None
        self._model_ref = weakref.ref(model)
        self._decoder = adapter.decoder(model)
        layers = adapter.layers(model)
        name = type(model).__name__
        kinds = hf.layer_kinds(self._decoder.config, len(layers), name)
        windows = hf.layer_windows(self._decoder.config, len(layers), name)
        check_linear_layer_k(kinds, config.layer, name)
        sources = hf.kv_sources(self._decoder.config, len(layers), name)
        check_shared_kv_k(sources, config.layer, name)
        per_layer = hf.per_layer_input_size(self._decoder) > 0
        if per_layer and config.pre is not None:
            raise ConfigError(
                f"{name} hands each decoder layer a per-layer input, which the pre-LLM stage ({config.pre}) does not "
                "merge yet; prune without it (pre=None)."
            )
        self._attention_modules = hf.attention_modules(layers, kinds)
        self._parts = Parts(
            config=config,
            selector=config.selector(),
            adapter=adapter,
            model=self._model_ref,
            layers=layers,
            windows=windows,
            score_layer=score_layer(windows, config.layer, name, kinds) if config.query != "none" else 0,
            kinds=kinds,
            kv_sources=sources,
            per_layer=per_layer,
        )
        self._use_base_implementation(hf.attention_implementation(self._decoder.config))
        self._forward_params = hf.forward_parameters(model)
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._local = threading.local()  # per thread: the frame map declared for its calls (generic adapter)
        self._forward: Forward = Forward()
        self._written: tuple[weakref.ref, KeepPlan, KeepPlan | None] | None = None  # the cache a prefill pruned
        self._lock = threading.Lock()
        self._running: int | None = None  # thread id of the forward in progress
        self._active = False

    @property
    def base_attention(self) -> Callable[..., Any]:
        """The attention function of the implementation the handle wraps."""
        return self._parts.base_attention

    # ----------------------------------------------------------------- lifecycle
    def _use_base_implementation(self, impl: str) -> None:
        """Wrap `impl`, the attention implementation the text decoder has now (and restore it on remove)."""
        if isinstance(impl, str) and impl.startswith(attn.PREFIX):
            raise AlreadyAppliedError(
                "this model's attention is already wrapped by sharp-prune; remove that handle first."
            )
        attn.registered_name(impl)  # validates the implementation
        if "flash" in impl and any(window is not None for window in self._parts.windows):
            raise ConfigError(
                f"sharp-prune does not prune a model with sliding-window layers under {impl} yet (its kernels count "
                "the window in the cache, which pruning shortens); load the model with attn_implementation='sdpa'."
            )
        if "flash" in impl and hf.LINEAR_ATTENTION in self._parts.kinds:
            # As for sliding layers: not yet run under flash kernels (layers >= K get no position ids under flash,
            # and the linear layers' packed-sequence path, cu_seq_lens, was never exercised with a pruned sequence).
            raise ConfigError(
                f"sharp-prune does not prune a model with linear-attention layers under {impl} yet; load the model "
                "with attn_implementation='sdpa'."
            )
        self._parts.base_impl = impl
        self._parts.base_attention = attn.base_attention_for(impl, self._attention_modules[0])
        self._parts.drop_position_ids = "flash" in impl

    def _attach(self) -> None:
        model = self._model_ref()
        k = self.config.layer
        layers = self._parts.layers
        hf.set_attention_implementation(self._decoder.config, attn.registered_name(self._parts.base_impl))
        attn.attach(self._attention_modules, self)
        self._hooks.append(model.register_forward_pre_hook(self._on_model_forward, with_kwargs=True))
        # always_call: the forward's state is dropped (and the model freed for other threads) even when it raises
        self._hooks.append(model.register_forward_hook(self._on_model_output, always_call=True))
        self._hooks.append(self._decoder.register_forward_pre_hook(self._on_decoder_forward, with_kwargs=True))
        self._hooks.append(self._decoder.register_forward_hook(self._on_decoder_output))
        if not self.config.rope or self.config.needs_prior:  # RoPE to remove, or the blank pass to rerun
            for index in range(self._parts.score_layer + 1):
                hook = self._on_early_layer(index)
                self._hooks.append(layers[index].register_forward_pre_hook(hook, with_kwargs=True))
        for index in range(k, len(layers)):
            self._hooks.append(layers[index].register_forward_pre_hook(self._on_layer(index), with_kwargs=True))
        _APPLIED[model] = self
        self._active = True

    def remove(self) -> None:
        """Detach every hook and restore the attention implementation; safe to call twice."""
        if not self._active:
            return
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        attn.detach(self._attention_modules)
        hf.set_attention_implementation(self._decoder.config, self._parts.base_impl)
        model = self._model_ref()
        if model is not None and _APPLIED.get(model) is self:
            del _APPLIED[model]
        self._forward = Forward()
        self._written = None
        self._active = False

    def reattach(self) -> PruneHandle:
        """Attach a removed handle again, with its caches (PosC's cached priors, blank frames) intact."""
        if self._active:
            return self
        model = self._model_ref()
        if model is None:
            raise InputError("the model of this handle no longer exists (it was freed); apply to a live model.")
        existing = _APPLIED.get(model)
        if existing is not None and existing.active:
            raise AlreadyAppliedError("this model has another active sharp-prune handle; remove it first.")
        # The implementation may have changed while removed (set_attn_implementation): wrap, and later restore, it.
        self._use_base_implementation(hf.attention_implementation(self._decoder.config))
        self._attach()
        return self

    @property
    def active(self) -> bool:
        return self._active

    @property
    def score_layer(self) -> int | None:
        """The decoder layer whose attention scores the video tokens: K-1, or on a model with sliding-window or
        linear-attention layers the last full-attention layer below K; None for a method that reads no scores."""
        return self._parts.score_layer if self.config.query != "none" else None

    def __enter__(self) -> PruneHandle:
        """`with handle:` prunes inside the block; a removed handle is attached again on entry."""
        if not self._active:
            self.reattach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self._active else "removed"
        return f"PruneHandle({self.config!r}, adapter={self.adapter.name!r}, {state})"

    def _refuse_copy(self, *args: object) -> Any:
        raise AlreadyAppliedError(
            "a model with sharp-prune applied cannot be deep-copied or pickled (its hooks belong to this handle "
            "and this model): call handle.remove() first, copy or save the model, then sp.apply(copy, "
            "handle.config) on the copy."
        )

    # A deep copy or pickle of the model reaches the handle through its hooks.
    __deepcopy__ = _refuse_copy
    __reduce_ex__ = _refuse_copy

    # ----------------------------------------------------------------- generic adapter
    def set_visual_frames(self, frame_map: torch.Tensor | None) -> None:
        """Declare the visual tokens of this thread's next calls (generic adapter).

        `frame_map` is a [b, L] integer tensor: each visual token's frame index (0, 1, ...), -1 for text;
        None clears the declaration. A declaration belongs to the thread that made it.
        """
        self._local.declared = None if frame_map is None else checked_frame_map(frame_map)

    @contextmanager
    def visual_frames(self, frame_map: torch.Tensor) -> Iterator[PruneHandle]:
        """Context manager form of `set_visual_frames`; on exit the declaration before it is back (blocks nest)."""
        previous = self._declared
        self.set_visual_frames(frame_map)
        try:
            yield self
        finally:
            self._local.declared = previous

    @property
    def _declared(self) -> torch.Tensor | None:
        return getattr(self._local, "declared", None)

    # ----------------------------------------------------------------- hooks: each hands control to the forward
    def _on_model_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._claim_model()
        self._forward = Forward()
        self._forward = self._begin(module, hf.read_model_call(self._forward_params, args, kwargs))

    def _begin(self, module: nn.Module, call: hf.ModelCall) -> Forward:
        """What this call is: a decoding step after our prefill, a prefill (with or without video), or other."""
        if not call.is_prefill:
            if self._written is not None and self._written[0]() is call.cache:
                parts = self._parts
                return Decode(
                    plan=self._written[1],
                    pre=self._written[2],
                    windows=parts.windows,
                    kinds=parts.kinds,
                    kv_sources=parts.kv_sources,
                )
            return Forward()
        hf.check_dynamic_cache(call.cache)
        self._written = None
        self.last = None  # a prefill that fails leaves no record of an earlier one behind
        mask = call.attention_mask
        key_valid = mask.bool() if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
        layout = self.adapter.locate(module, call, self._declared)
        located = locate(layout, key_valid, call.seq_len, self.config.budget, self.config.query)
        if located is None:
            self.last = empty_record(self.config, call.batch_size, call.seq_len)
            return NoVideoPrefill(self._parts, self.last)
        return Prefill(self._parts, located, logits_to_keep=call.logits_to_keep)

    def _on_decoder_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._forward.enter_decoder(module, hf.read_decoder_call(args, kwargs))

    def _on_decoder_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        return self._forward.leave_decoder(output)

    def attend(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Called by the registered attention function of every text layer (see `attention.py`)."""
        return self._forward.attend(module, query, key, value, attention_mask, **kwargs)

    def _on_early_layer(self, index: int) -> Callable[..., None]:
        def hook(layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self._forward.keep_rope(index, hf.read_layer_call(args, kwargs))

        return hook

    def _on_layer(self, index: int) -> Callable[..., Any]:
        def hook(layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            forward = self._forward
            if type(forward) is Forward:
                return None
            try:
                replacement = forward.at_layer(index, hf.read_layer_call(args, kwargs))
            except ProtocolError:
                self._forget()
                raise
            if isinstance(forward, Prefill) and index == self.config.layer:
                self.last = forward.record
            return replacement

        return hook

    def _on_model_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self._release_model():
            return  # a forward refused by the pre-hook (another thread's is running): the running one's state stays
        forward, self._forward = self._forward, Forward()
        if output is None:
            return  # the forward raised: its error stands
        try:
            forward.finish(output)
        except ProtocolError:
            self._forget()
            raise
        if isinstance(forward, Prefill) and forward.cache_at_k is not None:
            self._written = (forward.cache_at_k, forward.plan, forward.pre.plan if forward.pre is not None else None)

    def _forget(self) -> None:
        """After a `ProtocolError`: no record, no plan a later decoding step could continue from."""
        self.last = None
        self._written = None

    # ----------------------------------------------------------------- one forward at a time
    def _claim_model(self) -> None:
        me = threading.get_ident()
        with self._lock:
            if self._running is not None and self._running != me:
                raise InputError(
                    "this pruned model is running a forward in another thread; its per-forward state is not shared "
                    "safely: run one forward at a time (a lock around generate), or load one model per thread."
                )
            self._running = me

    def _release_model(self) -> bool:
        with self._lock:
            if self._running != threading.get_ident():
                return False
            self._running = None
            return True


def apply(model: nn.Module, config: PruneConfig | None = None, **overrides: Any) -> PruneHandle:
    """Attach pruning to `model` (in place, reversibly); returns the `PruneHandle`.

    Args:
        model: a supported transformers model instance (see `sharp_prune.SUPPORTED_MODELS`).
        config: the `PruneConfig` (default: `PruneConfig()`).
        **overrides: fields to change on `config`, e.g. ``apply(model, retention=0.2)``.

    Every check runs before anything is attached: on error the model is left untouched.

    Raises:
        ConfigTypeError / ConfigError: bad config, or K outside [1, num_layers - 1].
        UnsupportedModelError: the model is not supported.
        AlreadyAppliedError: the model already carries an active handle (remove it first).
    """
    if config is None:
        config = PruneConfig(**overrides) if overrides else PruneConfig()
    elif not isinstance(config, PruneConfig):
        raise ConfigTypeError(
            f"sharp_prune.apply expects a PruneConfig, got {type(config).__name__}; "
            "build one with sharp_prune.PruneConfig(method=..., retention=..., layer=...)."
        )
    elif overrides:
        config = config.replace(**overrides)
    adapter = resolve_adapter(model)
    existing = _APPLIED.get(model)
    if existing is not None and existing.active:
        raise AlreadyAppliedError(
            "this model already has sharp-prune applied; call handle.remove() before applying another config."
        )
    decoder = adapter.decoder(model)
    check_layer(config.layer, len(decoder.layers), f"this {type(model).__name__}")
    config.check_model(model)
    hf.warn_if_untested()
    handle = PruneHandle(model, config, adapter)  # checks the attention implementation; attaches nothing
    handle._attach()
    logger.info("sharp-prune: %s on %s (%s)", config, type(model).__name__, adapter.name)
    if handle.score_layer is not None and handle.score_layer != config.layer - 1:
        logger.info(
            "sharp-prune: layers %d..%d attend in a sliding window or linearly; scores are read at layer %d, the last "
            "full-attention layer below K=%d",
            handle.score_layer + 1,
            config.layer - 1,
            handle.score_layer,
            config.layer,
        )
    return handle
