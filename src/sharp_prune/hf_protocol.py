"""transformers' calling protocol, spoken in one place.

Every name sharp-prune reads from, or hands to, transformers lives in this module: the forward arguments of
the model, of its text decoder and of the decoder layers (the cache's name among them), how a prefill is told
from a decoding step, what `generate` removes from the prefill's inputs, the attention and mask registries,
and the few private attributes still needed. The engine and the adapters work on the plain values returned
here (`ModelCall`, `DecoderCall`, `LayerCall`) and never read a transformers argument by name.

A call that does not look as this module expects (a cache under a name it does not know, a tensor argument
the engine would not slice, a decoding step that looks like a prefill) raises `ProtocolError`, naming the
installed transformers release and the tested range, instead of letting a forward run unpruned.

Protocol history, by release (each entry: what changed, and what this module does about it):

- 5.0: decoder layers return tensors; no `cache_position`; `rope_parameters`; `dtype=`.
- 5.19 and earlier: `generate` encodes images and videos before the prefill (`mm_encoder_outputs`) and drops
  the raw pixel inputs (`pixel_values_videos`, `video_grid_thw`) from the prefill's arguments.
- 5.24: the cache argument `past_key_values` became `cache` in model, layer and attention forwards and in
  model outputs (`output.cache`); `past_key_values` stays a deprecated alias of the model forward until 5.40.
- Gemma 4, as read on 5.24 (`GEMMA4_FLOOR`): KV sharing described by `config.kv_sharing_modes` ("store" /
  "reuse"), the video forward taking `num_frames_per_video`. 5.20's Gemma 4 shares KV by another rule (no
  `kv_sharing_modes`) and its video forward differs; Gemma 4 models are refused at `apply` before 5.24
  (`check_release_supports`).
- hybrid linear-attention stacks (Qwen3.5), as read on 5.24: a `DynamicCache(config=...)` holds
  `LinearAttentionLayer`s (`Cache.is_linear`) whose `get_seq_length(i)` raises (`has_previous_state(i)` tells a
  started state); `cache.get_seq_length()` and the causal mask's length read the first full-attention layer; the
  linear layers take a 2-D padding mask (`create_recurrent_attention_mask`: None when unpadded or decoding one
  token, else the trailing [b, L] of the decoder's mask).
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from packaging.version import Version
from torch import nn
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import AttentionMaskInterface

from .errors import ConfigError, InputError, ProtocolError, UnsupportedModelError

logger = logging.getLogger(__name__)

# The releases the whole test suite passed on (make test-compat runs both ends; make drift looks past the cap).
TESTED_FLOOR = "5.20.0"
TESTED_CAP = "5.25"  # first release not yet tested (exclusive)

# The cache's name, newest first. 5.24 renamed `past_key_values` -> `cache` in every forward; the old name is a
# deprecated alias of the model forward until 5.40, so a user may still pass it to the model.
MODEL_CACHE_NAMES: tuple[str, ...] = ("cache", "past_key_values")
LAYER_CACHE_NAMES: tuple[str, ...] = ("cache", "past_key_values")

# Layer arguments that hold the sequence and are sliced together with the hidden states at layer K.
_LAYER_SEQUENCE_ARGS = ("hidden_states", "attention_mask", "position_ids", "position_embeddings", "per_layer_input")
# Decoder arguments the pre-LLM stage rewrites (it shortens the sequence before layer 0).
_DECODER_SEQUENCE_ARGS = ("input_ids", "inputs_embeds", "attention_mask", "position_ids")

# The text decoder's DeepStack arguments (Qwen3-VL): visual positions, and the features added there after layer j.
DEEPSTACK_MASK = "visual_pos_masks"
DEEPSTACK_FEATURES = "deepstack_visual_embeds"

# Gemma 4's per-layer inputs: the decoder's token-identity part ([b, L, layers, d]), and each layer's slice of the
# sum ([b, L, d], the layer's second positional argument).
PER_LAYER_INPUTS = "per_layer_inputs"
PER_LAYER_INPUT = "per_layer_input"

_KEEP = object()  # "leave this argument as it was"
KEEP = _KEEP


def installed_version() -> str:
    return transformers.__version__


def tested_range() -> str:
    return f">={TESTED_FLOOR},<{TESTED_CAP}"


def protocol_error(what: str) -> ProtocolError:
    """A `ProtocolError` saying what was unexpected, the installed release and the tested range."""
    return ProtocolError(
        f"sharp-prune: {what} (transformers {installed_version()} is installed; sharp-prune is tested with "
        f"transformers{tested_range()}). Nothing was returned, so that no unpruned output passes for pruned: "
        f"install a tested release (pip install 'transformers{tested_range()}') or upgrade sharp-prune, and "
        "report this at the project's issue tracker."
    )


def version_is_tested(version: str | None = None) -> bool:
    v = Version(version or installed_version())
    return Version(TESTED_FLOOR) <= v < Version(TESTED_CAP)


_warned_untested = False


def warn_if_untested() -> None:
    """Log once per process when the installed release is outside the tested range (checks at run time still hold)."""
    global _warned_untested
    if not _warned_untested and not version_is_tested():
        _warned_untested = True
        logger.warning(
            "sharp-prune is tested with transformers%s, and %s is installed; pruning checks its calls at run time "
            "and raises ProtocolError if they differ from what it expects.",
            tested_range(),
            installed_version(),
        )


# ----------------------------------------------------------------------------------------------- helpers
def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(isinstance(v, torch.Tensor) for v in value)
    return False


def _find_cache(kwargs: Mapping[str, Any], names: tuple[str, ...], where: str) -> Cache | None:
    """The cache among `kwargs`, by its known names; a Cache under any other name is a protocol change."""
    cache = None
    for name in names:
        value = kwargs.get(name)
        if value is None:
            continue
        if not isinstance(value, Cache):
            raise InputError(
                f"`{name}` of type {type(value).__name__} is not a transformers Cache; pass a Cache "
                "(e.g. DynamicCache) or nothing while pruning is applied."
            )
        cache = value
    for name, value in kwargs.items():
        if isinstance(value, Cache) and name not in names:
            raise protocol_error(f"the {where} received its cache as `{name}`, a name sharp-prune does not know")
    return cache


def is_prefill(cache: Cache | None) -> bool:
    """A forward is a prefill when it starts from no cache or an empty one (decoding continues a filled one)."""
    return cache is None or cache.get_seq_length() == 0


def is_linear_cache_layer(cache: Cache | None, layer_idx: int) -> bool:
    """Whether `cache` keeps a recurrent (linear-attention) state for layer `layer_idx`, not keys and values.

    `Cache.is_linear` (5.x hybrid caches: `LinearAttentionLayer`s hold conv and recurrent states, no length).
    """
    kinds = getattr(cache, "is_linear", None) if cache is not None else None
    return bool(kinds) and layer_idx < len(kinds) and bool(kinds[layer_idx])


def cache_length(cache: Cache | None, layer_idx: int) -> int:
    """Tokens `cache` holds for layer `layer_idx` (0 without a cache).

    A linear-attention layer keeps a fixed-size state, not tokens: asking for its length is the caller's bug
    (transformers raises ValueError), so it is refused here with a clearer message.
    """
    if cache is None:
        return 0
    if is_linear_cache_layer(cache, layer_idx):
        raise protocol_error(f"asked for the cached length of layer {layer_idx}, a linear-attention layer (no length)")
    return int(cache.get_seq_length(layer_idx))


def cache_started(cache: Cache | None, layer_idx: int) -> bool:
    """Whether `cache` already holds something for layer `layer_idx`: tokens (attention layers) or a recurrent
    state (linear-attention layers: `Cache.has_previous_state(layer_idx)`)."""
    if cache is None:
        return False
    if is_linear_cache_layer(cache, layer_idx):
        return bool(cache.has_previous_state(layer_idx))
    return cache_length(cache, layer_idx) > 0


def check_dynamic_cache(cache: Cache | None) -> None:
    """Pruning caches fewer tokens in layers >= K: only a DynamicCache can hold layers of different lengths."""
    if cache is not None and type(cache) is not DynamicCache:
        raise InputError(
            f"sharp-prune needs a DynamicCache (layers >= K cache fewer tokens), got {type(cache).__name__}; "
            "do not pass cache_implementation='static' or a pre-built static cache while pruning."
        )


def output_cache(output: Any) -> Cache | None:
    """The cache a model returned (`output.cache` since 5.24, `output.past_key_values` before)."""
    for name in MODEL_CACHE_NAMES:
        value = getattr(output, name, None)
        if isinstance(value, Cache):
            return value
    return None


def cache_bytes(cache: Cache | None) -> int | None:
    """Bytes of keys and values a DynamicCache holds over all layers (`cache.layers[i].keys/values`, 5.0+), and of
    the conv and recurrent states of its linear-attention layers (`conv_states` / `recurrent_states`)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return None
    total = 0
    for layer in layers:
        tensors = [getattr(layer, name, None) for name in ("keys", "values")]
        # linear-attention layers (`LinearAttentionLayer`): conv and recurrent states, by state index
        for name in ("conv_states", "recurrent_states"):
            states = getattr(layer, name, None)
            if isinstance(states, dict):
                tensors.extend(states.values())
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


# ----------------------------------------------------------------------------------------------- model call
def forward_parameters(model: nn.Module) -> list[str]:
    """Names of the model forward's parameters, in order (to bind positional arguments)."""
    return list(inspect.signature(model.forward).parameters)


def cache_argument(model: nn.Module) -> str:
    """The name under which this release's model forward takes a cache (`cache` since 5.24)."""
    parameters = forward_parameters(model)
    for name in MODEL_CACHE_NAMES:
        if name in parameters:
            return name
    raise protocol_error(f"{type(model).__name__}.forward takes no cache argument (looked for {MODEL_CACHE_NAMES})")


@dataclass(frozen=True)
class ModelCall:
    """One top-level forward call of the model, by meaning.

    Attributes:
        input_ids, inputs_embeds, attention_mask, position_ids: as passed (position ids are [b, L] or, for
            M-RoPE models, [3 or 4, b, L]).
        cache: the Cache passed in, whatever its name in this release.
        pixel_values_videos, video_grid_thw: raw video inputs; None under `generate`, which encodes the video
            before the prefill and passes `mm_encoder_outputs` instead.
        video_position_ids: Gemma 4's [frames, patches, 2] (x, y) of each frame's patches; None under `generate`.
        logits_to_keep: the rows the model turns into logits (an int: the last ones, 0 = all; `generate` asks 1).
    """

    input_ids: torch.Tensor | None
    inputs_embeds: torch.Tensor | None
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    cache: Cache | None
    pixel_values_videos: torch.Tensor | None
    video_grid_thw: torch.Tensor | None
    video_position_ids: torch.Tensor | None = None
    logits_to_keep: Any = None

    @property
    def reference(self) -> torch.Tensor:
        """input_ids, or inputs_embeds when the call has no ids: [b, L(, D)]."""
        reference = self.input_ids if self.input_ids is not None else self.inputs_embeds
        if reference is None:
            raise InputError("the forward call has neither input_ids nor inputs_embeds.")
        return reference

    @property
    def batch_size(self) -> int:
        return self.reference.shape[0]

    @property
    def seq_len(self) -> int:
        return self.reference.shape[1]

    @property
    def is_prefill(self) -> bool:
        return is_prefill(self.cache)


def read_model_call(parameters: list[str], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> ModelCall:
    """Read a model forward pre-hook's arguments (`parameters` from `forward_parameters`)."""
    inputs = dict(zip(parameters, args, strict=False))
    inputs.update(kwargs)
    return ModelCall(
        input_ids=inputs.get("input_ids"),
        inputs_embeds=inputs.get("inputs_embeds"),
        attention_mask=inputs.get("attention_mask"),
        position_ids=inputs.get("position_ids"),
        cache=_find_cache(inputs, MODEL_CACHE_NAMES, "model"),
        pixel_values_videos=inputs.get("pixel_values_videos"),
        video_grid_thw=inputs.get("video_grid_thw"),
        video_position_ids=inputs.get("video_position_ids"),
        logits_to_keep=inputs.get("logits_to_keep"),
    )


# ----------------------------------------------------------------------------------------------- decoder call
@dataclass
class DecoderCall:
    """One forward call of the text decoder (the module that owns `.layers`), by meaning."""

    input_ids: torch.Tensor | None
    inputs_embeds: torch.Tensor | None
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    cache: Cache | None
    args: tuple[Any, ...] = field(repr=False)
    kwargs: dict[str, Any] = field(repr=False)

    @property
    def deepstack(self) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
        """DeepStack (Qwen3-VL): ([b, L] visual positions, per-layer [n_visual, D] features the decoder adds to the
        hidden states at those positions after layers 0, 1, ...), or None."""
        mask, features = self.kwargs.get(DEEPSTACK_MASK), self.kwargs.get(DEEPSTACK_FEATURES)
        if mask is None or not features:
            return None
        return mask, list(features)

    def check_resizable(self) -> None:
        """The pre-LLM stage shortens the sequence: refuse sequence-long arguments it would not shorten."""
        _refuse_unknown_tensors(self.kwargs, _DECODER_SEQUENCE_ARGS, "text decoder")

    def replaced(
        self,
        inputs_embeds: Any = _KEEP,
        attention_mask: Any = _KEEP,
        position_ids: Any = _KEEP,
        deepstack_features: Any = _KEEP,
        per_layer_inputs: Any = _KEEP,
    ) -> DecoderCall:
        """The same call with the given arguments replaced (`.args`, `.kwargs` are what a pre-hook returns); giving
        `inputs_embeds` drops `input_ids`."""
        args, kwargs = self.args, dict(self.kwargs)
        if deepstack_features is not _KEEP:
            kwargs[DEEPSTACK_FEATURES] = deepstack_features
        if per_layer_inputs is not _KEEP:
            kwargs[PER_LAYER_INPUTS] = per_layer_inputs
        if inputs_embeds is not _KEEP:
            args = args[1:] if args else args  # input_ids is the first positional argument
            kwargs["input_ids"] = None
            kwargs["inputs_embeds"] = inputs_embeds
        if attention_mask is not _KEEP:
            kwargs["attention_mask"] = attention_mask
        if position_ids is not _KEEP:
            kwargs["position_ids"] = position_ids
        return read_decoder_call(args, kwargs)

    @property
    def hook_result(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """What a forward pre-hook returns to run the decoder with this call's arguments."""
        return self.args, self.kwargs


def read_decoder_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> DecoderCall:
    return DecoderCall(
        input_ids=kwargs.get("input_ids", args[0] if args else None),
        inputs_embeds=kwargs.get("inputs_embeds"),
        attention_mask=kwargs.get("attention_mask"),
        position_ids=kwargs.get("position_ids"),
        cache=_find_cache(kwargs, LAYER_CACHE_NAMES, "text decoder"),
        args=args,
        kwargs=kwargs,
    )


def keep_last_rows(output: Any, rows: int) -> Any:
    """The text decoder's output cut to its last `rows` hidden states (`last_hidden_state`), or None when it has no
    more rows than that. Models slice the rows `logits_to_keep` asks for before the LM head themselves, but Gemma 4
    does so only when the output is as long as its input ("may have been already sliced"), so a pruned output would
    otherwise reach the LM head whole: [L', vocab] logits instead of [1, vocab]."""
    hidden = getattr(output, "last_hidden_state", None)
    if not isinstance(hidden, torch.Tensor) or hidden.shape[1] <= rows:
        return None
    output["last_hidden_state"] = hidden[:, -rows:]
    return output


def embed_tokens(decoder: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return decoder.get_input_embeddings()(input_ids)


# ----------------------------------------------------------------------------------------------- layer call
def _refuse_unknown_tensors(kwargs: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for name, value in kwargs.items():
        if name in known or name in LAYER_CACHE_NAMES or not _holds_tensor(value):
            continue
        raise protocol_error(
            f"the {where} received a tensor argument `{name}` that sharp-prune does not know how to prune with "
            "the sequence"
        )


@dataclass
class LayerCall:
    """One forward call of a decoder layer, by meaning.

    Attributes:
        hidden_states: [b, L, D] layer input.
        attention_mask: None (implicit causal), [b, L] (flash) or [b, 1, q, kv] (sdpa / eager).
        position_ids: [b or 1, L] (M-RoPE models pass the text row here, the 3-D positions are in the embeddings).
        position_embeddings: RoPE (cos, sin), each [b or 1, L, d].
        cache: the Cache passed in, whatever its name in this release.
        per_layer_input: [b, L, d] Gemma 4's per-layer input of this layer (its second positional argument), or None.
    """

    hidden_states: torch.Tensor
    attention_mask: Any
    position_ids: torch.Tensor | None
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None
    cache: Cache | None
    args: tuple[Any, ...] = field(repr=False)
    kwargs: dict[str, Any] = field(repr=False)
    per_layer_input: torch.Tensor | None = None

    def check_prunable(self) -> None:
        """Layer K's call: every sequence-long argument must be one the keep plan slices."""
        _refuse_unknown_tensors(self.kwargs, _LAYER_SEQUENCE_ARGS, "decoder layer")

    def replaced(
        self,
        hidden_states: Any = _KEEP,
        attention_mask: Any = _KEEP,
        position_ids: Any = _KEEP,
        position_embeddings: Any = _KEEP,
        per_layer_input: Any = _KEEP,
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """(args, kwargs) for a pre-hook to return, with the given arguments replaced."""
        args, kwargs = self.args, dict(self.kwargs)
        if hidden_states is not _KEEP:
            if args:
                args = (hidden_states, *args[1:])
            else:
                kwargs["hidden_states"] = hidden_states
        if per_layer_input is not _KEEP:
            if len(args) > 1:
                args = (args[0], per_layer_input, *args[2:])
            elif PER_LAYER_INPUT in kwargs:
                kwargs[PER_LAYER_INPUT] = per_layer_input
        for name, value in (
            ("attention_mask", attention_mask),
            ("position_ids", position_ids),
            ("position_embeddings", position_embeddings),
        ):
            if value is not _KEEP and name in kwargs:
                kwargs[name] = value
        return args, kwargs

    def rerun_kwargs(
        self,
        attention_mask: Any = _KEEP,
        position_embeddings: Any = _KEEP,
        per_layer_input: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments to run layers again on other hidden states, without touching the cache (and with
        another layer kind's `attention_mask` and `position_embeddings`, and that layer's own per-layer input, when
        given)."""
        skip = {"hidden_states", PER_LAYER_INPUT}
        kwargs = {k: v for k, v in self.kwargs.items() if k not in LAYER_CACHE_NAMES and k not in skip}
        kwargs["use_cache"] = False
        if attention_mask is not _KEEP:
            kwargs["attention_mask"] = attention_mask
        if position_embeddings is not _KEEP and "position_embeddings" in kwargs:
            kwargs["position_embeddings"] = position_embeddings
        if per_layer_input is not None:
            kwargs[PER_LAYER_INPUT] = per_layer_input
        return kwargs


def read_layer_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor):
        raise protocol_error("a decoder layer was called without hidden states as its first argument")
    per_layer_input = args[1] if len(args) > 1 else kwargs.get(PER_LAYER_INPUT)
    if len(args) > 2 or (per_layer_input is not None and not isinstance(per_layer_input, torch.Tensor)):
        raise protocol_error(
            f"a decoder layer was called with {len(args)} positional arguments; sharp-prune knows the hidden states "
            "and Gemma 4's per-layer input only"
        )
    return LayerCall(
        hidden_states=hidden,
        attention_mask=kwargs.get("attention_mask"),
        position_ids=kwargs.get("position_ids"),
        position_embeddings=kwargs.get("position_embeddings"),
        cache=_find_cache(kwargs, LAYER_CACHE_NAMES, "decoder layer"),
        args=args,
        kwargs=kwargs,
        per_layer_input=per_layer_input,
    )


@contextmanager
def outputs_not_captured() -> Iterator[None]:
    """Run extra layer calls (PosC's blank pass) without adding them to `output_attentions` / `output_hidden_states`.

    transformers collects those outputs with forward hooks that append to a context variable while the model's
    forward runs (`utils.output_capturing._active_collector`, private, all of 5.x: there is no public switch);
    it is set to None for the duration.
    """
    from transformers.utils import output_capturing

    collector = getattr(output_capturing, "_active_collector", None)
    if collector is None:
        raise protocol_error("transformers.utils.output_capturing has no `_active_collector` to pause")
    token = collector.set(None)
    try:
        yield
    finally:
        collector.reset(token)


# ----------------------------------------------------------------------------------------------- attention
SUPPORTED_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flash_attention_4")


def attention_modules(layers: nn.ModuleList, kinds: tuple[str, ...] = ()) -> list[nn.Module]:
    """The self-attention module of each decoder layer that has one (`kinds` from `layer_kinds`: a linear-attention
    layer mixes tokens with `linear_attn` instead, and calls no attention function)."""
    modules = []
    for idx, layer in enumerate(layers):
        if idx < len(kinds) and kinds[idx] == LINEAR_ATTENTION:
            continue
        module = getattr(layer, "self_attn", None)
        if module is None:
            raise protocol_error(f"decoder layer {idx} ({type(layer).__name__}) has no `self_attn` module")
        modules.append(module)
    return modules


# The kinds of decoder layer the engine runs (`config.layer_types`): full causal attention, causal attention inside a
# sliding window of `config.sliding_window` tokens, and linear attention (Gated DeltaNet: Qwen3.5, Qwen3-Next), whose
# layers keep a recurrent and a conv state instead of keys and values and take a 2-D padding mask.
FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"
LINEAR_ATTENTION = "linear_attention"
LAYER_KINDS = (FULL_ATTENTION, SLIDING_ATTENTION, LINEAR_ATTENTION)


# The first release whose Gemma 4 classes sharp-prune was built and tested against (see the history above).
GEMMA4_FLOOR = "5.24.0"


def gemma4_supported(version: str | None = None) -> bool:
    """Whether the installed (or given) transformers has the Gemma 4 classes sharp-prune prunes."""
    return Version(version or installed_version()) >= Version(GEMMA4_FLOOR)


def check_release_supports(config: Any, model: str = "this model") -> None:
    """Refuse, with `UnsupportedModelError`, a model whose classes in the installed release are older than the ones
    sharp-prune was built against (Gemma 4 before `GEMMA4_FLOOR`): they would be pruned by rules they do not follow."""
    model_type = str(getattr(config, "model_type", "") or "")
    if model_type.startswith("gemma4") and not gemma4_supported():
        raise UnsupportedModelError(
            f"{model} is a Gemma 4 model, and transformers {installed_version()} is installed; sharp-prune prunes "
            f"Gemma 4 from transformers {GEMMA4_FLOOR} on (earlier releases share keys and values between layers, "
            f"and take videos, by other rules): pip install 'transformers>={GEMMA4_FLOOR},<{TESTED_CAP}'."
        )


def layer_kinds(config: Any, num_layers: int, model: str = "this model") -> tuple[str, ...]:
    """The kind of each decoder layer (`config.layer_types`; a config without it has full attention everywhere).

    Refuses what the engine cannot prune, with `UnsupportedModelError`: bidirectional attention over the whole
    sequence, and a layer kind other than `LAYER_KINDS` (chunked attention, ...). Gemma 4's
    `use_bidirectional_attention="vision"` is causal outside images and frames: its sliding layers attend both ways
    inside each one, which the masks the layers receive already say (they are sliced, never rebuilt).
    """
    check_release_supports(config, model)
    bidirectional = getattr(config, "use_bidirectional_attention", None)
    if bidirectional and bidirectional != "vision":
        raise UnsupportedModelError(
            f"{model} attends bidirectionally (config.use_bidirectional_attention={bidirectional!r}); sharp-prune "
            "scores and prunes causal decoders only (attention both ways inside each image or frame, 'vision', is "
            "supported)."
        )
    kinds = tuple(getattr(config, "layer_types", None) or (FULL_ATTENTION,) * num_layers)
    unknown = sorted(set(kinds) - set(LAYER_KINDS))
    if unknown:
        raise UnsupportedModelError(
            f"{model} has decoder layers of kind {unknown} (config.layer_types); sharp-prune runs layers of kind "
            f"{list(LAYER_KINDS)} only."
        )
    return kinds[:num_layers]


def kv_sources(config: Any, num_layers: int, model: str = "this model") -> tuple[int, ...]:
    """The layer whose keys and values each decoder layer attends to: itself, or, for Gemma 4's KV-sharing layers
    (`config.kv_sharing_modes`: "reuse"), the last earlier layer of its kind that stores them ("store"). A shared
    layer writes nothing to the cache; when decoding, its keys are what its source layer's cache holds."""
    modes = getattr(config, "kv_sharing_modes", None) if getattr(config, "num_kv_shared_layers", 0) else None
    if not modes:
        return tuple(range(num_layers))
    kinds = tuple(getattr(config, "layer_types", None) or (FULL_ATTENTION,) * num_layers)
    sources = []
    for index in range(num_layers):
        if modes[index] != "reuse":
            sources.append(index)
            continue
        stores = [j for j in range(index) if modes[j] == "store" and kinds[j] == kinds[index]]
        if not stores:
            raise UnsupportedModelError(
                f"{model}: decoder layer {index} reuses keys and values computed outside the model "
                "(config.num_kv_shared_layers covers every layer of its kind); sharp-prune prunes a decoder whose "
                "shared keys and values come from its own earlier layers only."
            )
        sources.append(stores[-1])
    return tuple(sources)


def per_layer_input_size(decoder: nn.Module) -> int:
    """Width of Gemma 4's per-layer inputs (`hidden_size_per_layer_input`; 0: the decoder has none).

    A decoder with them hands each layer one more sequence-long tensor (`per_layer_input`, [b, L, d]): the
    token-identity part (`get_per_layer_inputs`, or the decoder call's `per_layer_inputs`) plus a projection of the
    input embeddings (`project_per_layer_inputs`).
    """
    return int(getattr(decoder.config, "hidden_size_per_layer_input", 0) or 0)


def per_layer_token_inputs(decoder: nn.Module, call: DecoderCall) -> torch.Tensor:
    """[b, L, layers, d] the token-identity part of the per-layer inputs of this decoder call: as passed
    (`per_layer_inputs`, a VLM's: every image or video token counts as the pad token), else looked up from
    `input_ids` by the decoder's own `get_per_layer_inputs`."""
    given = call.kwargs.get(PER_LAYER_INPUTS)
    if given is not None:
        return given
    if call.input_ids is None:
        raise InputError(
            "this decoder takes per-layer inputs, computed from input_ids; call it with input_ids or with "
            "per_layer_inputs while pruning is applied."
        )
    return decoder.get_per_layer_inputs(call.input_ids)


def project_per_layer_inputs(decoder: nn.Module, embeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[b, L, layers, d] the per-layer inputs the decoder derives from input embeddings `embeds` and the
    token-identity part `tokens` (its own `project_per_layer_inputs`); layer i gets [:, :, i]."""
    return decoder.project_per_layer_inputs(embeds, tokens)


def layer_windows(config: Any, num_layers: int, model: str = "this model") -> tuple[int | None, ...]:
    """The sliding window of each decoder layer (None: no window: full attention, or linear attention, which
    `layer_kinds` tells apart), from `config.layer_types`; refuses what `layer_kinds` refuses."""
    kinds = layer_kinds(config, num_layers, model)
    window = getattr(config, "sliding_window", None)
    if SLIDING_ATTENTION in kinds and not window:
        raise protocol_error("config.layer_types names sliding_attention layers but config.sliding_window is unset")
    return tuple(int(window) if kind == SLIDING_ATTENTION else None for kind in kinds)


def layer_index(attention_module: nn.Module) -> int | None:
    """The decoder layer an attention module belongs to (`layer_idx`, set by every 5.x decoder)."""
    return getattr(attention_module, "layer_idx", None)


def attention_scaling(attention_module: nn.Module) -> float:
    """Softmax scale of an attention module (`scaling`, 1/sqrt(head_dim) unless the model says otherwise)."""
    scaling = getattr(attention_module, "scaling", None)
    if scaling is None:
        raise protocol_error(f"{type(attention_module).__name__} has no `scaling` attribute")
    return float(scaling)


def attention_implementation(config: Any) -> str | None:
    """The attention implementation a (text) config selects.

    `_attn_implementation` is private but is what every modeling file reads (all of 5.x); there is no public
    getter.
    """
    return config._attn_implementation


def set_attention_implementation(config: Any, name: str) -> None:
    """Select `name` on this config only (the text decoder's; the vision tower keeps its own).

    Private attribute (all of 5.x): the public `set_attn_implementation` recurses into every sub-model and
    rewrites names that contain "flash", so it cannot switch the text decoder alone to a registered wrapper.
    """
    config._attn_implementation_internal = name


def eager_attention_of(attention_module: nn.Module) -> Callable[..., Any]:
    """The model file's own `eager_attention_forward` (transformers registers no global eager function)."""
    fn = getattr(sys.modules.get(type(attention_module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise ConfigError(
            f"{type(attention_module).__name__} has no eager_attention_forward in its module; "
            "load the model with attn_implementation='sdpa'."
        )
    return fn


def rope_function_of(attention_module: nn.Module) -> Callable[..., Any] | None:
    """The model file's own `apply_rotary_pos_emb`, which its attention calls (every 5.x text model defines one),
    as a function of (q, k, cos, sin) -> (q, k): it knows the model's rotation (rotate-half or interleaved pairs,
    GLM-4V) and partial rotary dimensions. Gemma 4's rotates one tensor at a time, (x, cos, sin); it is called on
    q and k in turn. None when the file has none."""
    function = getattr(sys.modules.get(type(attention_module).__module__), "apply_rotary_pos_emb", None)
    if function is None:
        return None
    parameters = list(inspect.signature(function).parameters)
    if parameters[1:3] == ["cos", "sin"]:  # one tensor: (x, cos, sin, unsqueeze_dim)

        def both(query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple:
            return function(query, cos, sin), function(key, cos, sin)

        return both
    return function


def attention_function(name: str, attention_module: nn.Module) -> Callable[..., Any]:
    """The attention function `name` selects for `attention_module`, as its forward would look it up."""
    if name == "eager":
        return eager_attention_of(attention_module)
    return AttentionInterface()[name]


def is_registered(name: str) -> bool:
    return name in AttentionInterface()


def register_attention(name: str, function: Callable[..., Any], mask_like: str) -> None:
    """Register `function` as attention implementation `name`, with `mask_like`'s mask function.

    Without the mask entry, transformers builds no mask for an unknown implementation (eager would silently
    lose its causal mask).
    """
    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, AttentionMaskInterface()[mask_like])
