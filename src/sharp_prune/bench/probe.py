"""The layer probe: at which decoder layer, and with which score, do the question's frames stand out?

For each item (a bench task item, or a user's prompt with a declared relevant span) and each layer K of a
set, the probe computes the scores a method with that K would select on, from the attention of decoder
layer K-1, for five score variants:

- ``last``: the last token's row, post-RoPE (FastV's score);
- ``text``: every text row after the video, post-RoPE (ShaRP's query);
- ``last+posc``, ``text+posc``: the same, minus the prior of a content-free copy of the input (PosC: every
  video token replaced by the adapter's blank frame, i.e. the pad token's embedding for a plain LM);
- ``last-norope``: the last token's row with RoPE removed from q and k (FEATHER's score).

Each variant's token scores are those of `steps.score.score_video`, the function the engine itself calls at
K-1, on q and k recorded in ONE forward per item (plus one forward of the blank copy) that stops after the
deepest layer probed. No SegM mask is applied (layers before K see plain causal attention).

A frame's score is the mean of its tokens' scores. The *rank* of an item's relevant frames is the mean, over
the relevant frames, of the share of the other (non-relevant) frames that score higher (ties count half):
0 = every relevant frame above every other frame, 0.5 = no signal, 1 = every relevant frame at the bottom.
With one relevant frame this is its descending rank index / (F - 1). Intervals are 95% percentile bootstrap
intervals over items; a variant *beats random* at a layer when the interval's upper bound is below 0.5.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import hf_protocol as hf
from ..engine import attention as attn
from ..errors import AlreadyAppliedError, ConfigError, InputError
from ..methods.sharp.posc import blank_embeddings, calibrate
from ..models import resolve_adapter
from ..steps.locate import Located, VisualLayout, locate
from ..steps.score import score_video
from .intervals import bootstrap_interval
from .task import Item, prompt_frame

VARIANTS = ("last", "text", "last+posc", "text+posc", "last-norope")
RANDOM = 0.5
PROMPT_KEYS = ("frames", "question", "relevant")


@dataclass(frozen=True)
class ProbeItem:
    """One prompt to probe.

    Attributes:
        input_ids: [1, L] token ids.
        frame_map: [1, L] frame index of each video token, -1 for text.
        relevant: the frames the question is about (sorted, unique).
        label: where it came from (the task's seed, or the prompts file's line).
    """

    input_ids: torch.Tensor
    frame_map: torch.Tensor
    relevant: tuple[int, ...]
    label: str = ""

    @property
    def num_frames(self) -> int:
        return int(self.frame_map.max()) + 1


@dataclass(frozen=True)
class Prompt:
    """One line of a user's prompts file: the frames' text, the question, the relevant frames."""

    frames: tuple[str, ...]
    question: str
    relevant: tuple[int, ...]
    line: int


def item_from_task(item: Item) -> ProbeItem:
    """A bench task item as a probe item: its relevant frames are those holding the needle scene's tokens."""
    relevant = sorted(set(item.frame_map[0, item.needle_positions].tolist()))
    return ProbeItem(item.input_ids, item.frame_map, tuple(relevant), f"seed {item.seed}")


# ----------------------------------------------------------------------------------------------- prompts file
def read_prompts(path: str | Path) -> list[Prompt]:
    """Read and check a prompts file (JSON lines, no weights needed).

    Each non-empty line is ``{"frames": ["text of frame 0", ...], "question": "...", "relevant": [frame indices]}``.

    Raises:
        ConfigError: the file is missing or unreadable, or a line is not such an object (saying which line and what
            to change).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--prompts {path}: no such file; pass a JSON-lines file, one prompt per line.")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--prompts {path}: cannot read it as text ({err}).") from err
    prompts = [_check_prompt(line, number, path) for number, line in enumerate(lines, 1) if line.strip()]
    if not prompts:
        raise ConfigError(f"--prompts {path} holds no prompt; write one JSON object per line.")
    return prompts


def _check_prompt(line: str, number: int, path: Path) -> Prompt:
    where = f"--prompts {path}, line {number}"
    shape = '{"frames": ["text of frame 0", ...], "question": "...", "relevant": [frame indices]}'
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: not JSON ({err.msg}); each line must be {shape}.") from err
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object {shape}, got {type(entry).__name__}.")
    missing = [key for key in PROMPT_KEYS if key not in entry]
    unknown = sorted(set(entry) - set(PROMPT_KEYS))
    if missing or unknown:
        raise ConfigError(
            f"{where}: missing {missing or 'nothing'}, unknown {unknown or 'nothing'}; each line is {shape}."
        )
    frames, question, relevant = entry["frames"], entry["question"], entry["relevant"]
    if not isinstance(frames, list) or len(frames) < 2 or not all(isinstance(f, str) and f.strip() for f in frames):
        raise ConfigError(f"{where}: 'frames' must be a list of at least 2 non-empty strings (the text of each frame).")
    if not isinstance(question, str) or not question.strip():
        raise ConfigError(f"{where}: 'question' must be a non-empty string.")
    if (
        not isinstance(relevant, list)
        or not relevant
        or not all(isinstance(r, int) and not isinstance(r, bool) for r in relevant)
    ):
        raise ConfigError(f"{where}: 'relevant' must be a non-empty list of frame indices (0-based ints).")
    outside = [r for r in relevant if not 0 <= r < len(frames)]
    if outside:
        raise ConfigError(
            f"{where}: relevant frame(s) {outside} are outside [0, {len(frames) - 1}] ({len(frames)} frames); "
            "frames are numbered from 0."
        )
    if len(set(relevant)) == len(frames):
        raise ConfigError(
            f"{where}: every frame is relevant, so there is nothing to rank them against; list only the frames the "
            "question is about."
        )
    return Prompt(tuple(frames), question, tuple(sorted(set(relevant))), number)


def item_from_prompt(tokenizer: Any, prompt: Prompt) -> ProbeItem:
    """Tokenise a prompt as the bench task does: the task's prompt frame (no assistant prefix), each frame's text
    after a newline as that frame's tokens."""
    head_ids, tail = prompt_frame(tokenizer, prompt.question, "")
    ids, frame_map = list(head_ids), [-1] * len(head_ids)
    for frame, text in enumerate(prompt.frames):
        tokens = tokenizer("\n" + text, add_special_tokens=False)["input_ids"]
        ids += tokens
        frame_map += [frame] * len(tokens)
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    ids += tail_ids
    frame_map += [-1] * len(tail_ids)
    return ProbeItem(torch.tensor([ids]), torch.tensor([frame_map]), prompt.relevant, f"line {prompt.line}")


# ----------------------------------------------------------------------------------------------- layers
def parse_layers(text: str) -> tuple[int, ...]:
    """ "1-15", "2,4,6" or "1-3,8" -> sorted unique layers (range checks: `check_layers`).

    Raises:
        ValueError: not such a list.
    """
    layers: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, dash, last = part.partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError as err:
            raise ValueError(f"not a layer list: {text!r} (write 1-15, 2,4,6 or 1-3,8)") from err
        if high < low:
            raise ValueError(f"empty layer range {part!r} in {text!r}")
        layers.update(range(low, high + 1))
    if not layers:
        raise ValueError(f"no layer in {text!r}")
    return tuple(sorted(layers))


def check_layers(layers: Sequence[int], num_layers: int, model: str = "this model") -> None:
    """Every probed K must be one a method could use: 1 <= K <= num_layers - 1 (`ConfigError` otherwise)."""
    outside = [k for k in layers if not 1 <= k <= num_layers - 1]
    if outside:
        raise ConfigError(
            f"--layers {','.join(map(str, outside))} outside [1, {num_layers - 1}] for {model} ({num_layers} decoder "
            f"layers); layer K reads the scores of decoder layer K-1 (default: 1-{num_layers // 2})."
        )


def layer_kinds(config: Any, layers: Sequence[int]) -> dict[int, str]:
    """{K: "full" or the attention kind of decoder layer K-1 ("sliding" for a sliding-window layer)}."""
    types = getattr(config, "layer_types", None)
    kinds = {}
    for k in layers:
        kind = types[k - 1] if types is not None and k - 1 < len(types) else "full_attention"
        kinds[k] = "full" if kind == "full_attention" else "sliding" if "sliding" in kind else str(kind)
    return kinds


# ----------------------------------------------------------------------------------------------- scores
class _Stop(Exception):  # noqa: N818 - control flow, not an error
    """Raised before the first layer past the deepest probed one: the rest of the forward is not needed."""


class _Recorder:
    """An attention observer (`engine.attention`): scores the video tokens at the probed layers, then lets the
    base attention run unchanged."""

    def __init__(self, layer_indices: set[int], queries: dict[str, Located], norope: Located | None) -> None:
        self.layer_indices = layer_indices
        self.queries = queries
        self.norope = norope
        self.base_attention: Callable[..., Any] | None = None
        self.rope: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.scores: dict[str, dict[int, torch.Tensor]] = {}

    def keep_rope(self, index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            rope = hf.read_layer_call(args, kwargs).position_embeddings
            if rope is not None:
                self.rope[index] = rope

        return hook

    def attend(
        self, module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any
    ) -> None:
        index = hf.layer_index(module)
        if index not in self.layer_indices:
            return None
        scaling = hf.attention_scaling(module)
        for name, located in self.queries.items():
            self.scores.setdefault(name, {})[index] = score_video(query, key, located, scaling)[0].cpu()
        if self.norope is not None:
            if index not in self.rope:
                raise hf.protocol_error(f"decoder layer {index} received no position embeddings to remove RoPE with")
            scores = score_video(query, key, self.norope, scaling, self.rope[index], hf.rope_function_of(module))
            self.scores.setdefault("norope", {})[index] = scores[0].cpu()
        return None


@contextmanager
def recording(model: nn.Module, recorder: _Recorder, last_index: int) -> Iterator[nn.Module]:
    """Route the text decoder's attention through `recorder` (and stop the forward after decoder layer
    `last_index`); yields the decoder. The attention implementation and every hook are restored on exit, also
    after an exception.

    Raises:
        AlreadyAppliedError: the model's attention is wrapped by sharp-prune already (remove that handle first).
    """
    adapter = resolve_adapter(model)
    decoder = adapter.decoder(model)
    layers = decoder.layers
    modules = hf.attention_modules(layers)
    impl = hf.attention_implementation(decoder.config)
    if isinstance(impl, str) and impl.startswith(attn.PREFIX):
        raise AlreadyAppliedError("this model has sharp-prune applied; remove the handle before probing it.")
    name = attn.registered_name(impl)  # validates the implementation
    recorder.base_attention = attn.base_attention_for(impl, modules[0])

    def stop(module: nn.Module, args: tuple[Any, ...]) -> None:
        raise _Stop

    hooks: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for i in range(last_index + 1):
            hooks.append(layers[i].register_forward_pre_hook(recorder.keep_rope(i), with_kwargs=True))
        if last_index + 1 < len(layers):
            hooks.append(layers[last_index + 1].register_forward_pre_hook(stop))
        hf.set_attention_implementation(decoder.config, name)
        attn.attach(modules, recorder)
        yield decoder
    finally:
        attn.detach(modules)
        hf.set_attention_implementation(decoder.config, impl)
        for hook in hooks:
            hook.remove()


def _run(decoder: nn.Module, **inputs: torch.Tensor) -> None:
    with suppress(_Stop):
        decoder(**inputs, use_cache=False)


def token_scores(model: nn.Module, item: ProbeItem, layers: Sequence[int]) -> dict[str, dict[int, torch.Tensor]]:
    """{variant: {K: [N] fp32 scores of the video tokens}} for every variant of `VARIANTS` and K in `layers`.

    Two forwards of the text decoder, each stopped after decoder layer max(layers) - 1: the input, and its blank
    copy (PosC's prior). Scores are `score_video`'s, from decoder layer K-1's post-RoPE q and k.
    """
    if not layers:
        raise ConfigError("no layer to probe.")
    device = next(model.parameters()).device
    input_ids = item.input_ids.to(device)
    seq_len = input_ids.shape[1]
    layout = VisualLayout.from_frame_map(item.frame_map.to(device))
    if layout is None:
        raise InputError(f"{item.label or 'the item'} has no video token (its frame map is all -1).")
    queries = {q: locate(layout, None, seq_len, lambda n: n, q) for q in ("last", "text")}
    if queries["last"] is None or queries["last"].layout.num_visual != layout.num_visual:
        raise InputError(f"{item.label or 'the item'} ends in a video token; put the question after the video.")
    indices = {k - 1 for k in layers}
    last_index = max(indices)

    real = _Recorder(indices, queries, queries["last"])
    with torch.no_grad(), recording(model, real, last_index) as decoder:
        _run(decoder, input_ids=input_ids)
    adapter = resolve_adapter(model)
    if adapter.blank_frame is None:
        raise InputError(f"the {adapter.name} adapter has no blank frame, so PosC's prior cannot be computed.")
    with torch.no_grad():
        embeds = hf.embed_tokens(adapter.decoder(model), input_ids)
        blank_frame = adapter.blank_frame(model, layout, None).to(embeds.dtype)
        blank = blank_embeddings(embeds, layout.positions, blank_frame, layout.frame_ids)
    prior = _Recorder(indices, queries, None)
    with torch.no_grad(), recording(model, prior, last_index) as decoder:
        _run(decoder, inputs_embeds=blank)

    missing = sorted(indices - set(real.scores.get("last", {})))
    if missing:
        raise hf.protocol_error(f"the attention of decoder layer(s) {missing} did not run through the recorder")
    out: dict[str, dict[int, torch.Tensor]] = {}
    for k in layers:
        i = k - 1
        out.setdefault("last", {})[k] = real.scores["last"][i]
        out.setdefault("text", {})[k] = real.scores["text"][i]
        out.setdefault("last+posc", {})[k] = calibrate(real.scores["last"][i], prior.scores["last"][i])
        out.setdefault("text+posc", {})[k] = calibrate(real.scores["text"][i], prior.scores["text"][i])
        out.setdefault("last-norope", {})[k] = real.scores["norope"][i]
    return out


def frame_scores(scores: torch.Tensor, frame_ids: torch.Tensor, num_frames: int) -> torch.Tensor:
    """[F] mean score of each frame's tokens, from [N] token scores and their [N] frame ids."""
    frame_ids = frame_ids.to(scores.device).long()
    total = torch.zeros(num_frames, dtype=torch.float64).index_add_(0, frame_ids, scores.double())
    count = torch.zeros(num_frames, dtype=torch.float64).index_add_(0, frame_ids, torch.ones_like(scores).double())
    return total / count.clamp(min=1)


def relevant_rank(scores: Sequence[float] | torch.Tensor, relevant: Sequence[int]) -> float:
    """Where the relevant frames sit among the others, from frame scores: 0 = above all others, 0.5 = random,
    1 = below all others.

    For each relevant frame, the share of the non-relevant frames that score higher (ties count half); the mean
    over relevant frames. With one relevant frame: its descending rank index / (F - 1).
    """
    values = torch.as_tensor(scores, dtype=torch.float64).flatten()
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    mask[list(relevant)] = True
    if not mask.any() or mask.all():
        raise ValueError("relevant frames must be a non-empty proper subset of the frames.")
    mine, others = values[mask], values[~mask]
    higher = (others[None, :] > mine[:, None]).double().sum(dim=1)
    ties = (others[None, :] == mine[:, None]).double().sum(dim=1)
    return float(((higher + 0.5 * ties) / others.numel()).mean())


def item_ranks(model: nn.Module, item: ProbeItem, layers: Sequence[int]) -> dict[str, list[float]]:
    """{variant: [rank of the relevant frames at each K of `layers`]} for one item."""
    layout = VisualLayout.from_frame_map(item.frame_map)
    frame_ids = layout.frame_ids[0]
    scores = token_scores(model, item, layers)
    return {
        variant: [
            relevant_rank(frame_scores(scores[variant][k], frame_ids, item.num_frames), item.relevant) for k in layers
        ]
        for variant in VARIANTS
    }


# ----------------------------------------------------------------------------------------------- summary
def summarise(
    ranks: dict[str, list[list[float]]], layers: Sequence[int], kinds: dict[int, str] | None = None
) -> dict[str, Any]:
    """Per layer and variant the mean rank over items and its 95% bootstrap interval; per variant the smallest
    layer that beats random (interval's upper bound < 0.5).

    Args:
        ranks: {variant: [per item, [rank at each K of `layers`]]}.
        layers: the probed K.
        kinds: {K: "full" / "sliding" / ...}; only full-attention layers count for `smallest_layer`
            (`smallest_layer_any` counts every layer).

    Returns:
        {"layers": [{"layer", "attention", "variants": {variant: {"mean", "low", "high", "beats_random"}}}],
        "smallest_layer": {variant: K or None}, "smallest_layer_any": {variant: K or None}}.
    """
    kinds = kinds or {}
    rows = []
    smallest: dict[str, int | None] = dict.fromkeys(ranks)
    smallest_any: dict[str, int | None] = dict.fromkeys(ranks)
    for column, k in enumerate(layers):
        cells = {}
        for variant, per_item in ranks.items():
            values = [item[column] for item in per_item]
            low, high = bootstrap_interval(values)
            beats = bool(high < RANDOM)
            cells[variant] = {"mean": sum(values) / len(values), "low": low, "high": high, "beats_random": beats}
            if beats and smallest_any[variant] is None:
                smallest_any[variant] = k
            if beats and smallest[variant] is None and kinds.get(k, "full") == "full":
                smallest[variant] = k
        rows.append({"layer": k, "attention": kinds.get(k, "full"), "variants": cells})
    return {"layers": rows, "smallest_layer": smallest, "smallest_layer_any": smallest_any}


def run_probe(
    model: nn.Module,
    items: Sequence[ProbeItem],
    layers: Sequence[int],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Probe `items` at every K of `layers`: per-item ranks and their summary (see `summarise`)."""
    layers = sorted(layers)
    ranks: dict[str, list[list[float]]] = {variant: [] for variant in VARIANTS}
    for done, item in enumerate(items):
        for variant, values in item_ranks(model, item, layers).items():
            ranks[variant].append(values)
        if progress is not None:
            progress(done + 1, len(items))
    config = resolve_adapter(model).decoder(model).config
    result = summarise(ranks, layers, layer_kinds(config, layers))
    result["items"] = len(items)
    result["frames"] = sorted({item.num_frames for item in items})
    result["relevant_frames"] = sorted({len(item.relevant) for item in items})
    result["num_visual"] = sorted({int((item.frame_map >= 0).sum()) for item in items})
    result["per_item"] = {"labels": [item.label for item in items], "ranks": ranks}
    return result
