"""`sharp-prune speed`: prefill latency (time to first token) and peak memory, pruned against unpruned.

A random-weight decoder LM of a real shape (built from its config, no hub) reads one prompt: a short text
prefix, F x T "visual" tokens (random token ids, declared to the generic adapter with
`frame_map_for_span`) and a short question. Time to first token is one forward of that prompt with
`logits_to_keep=1` (and a KV cache, as in `generate`'s prefill).

Protocol, all in one process: every configuration (the unpruned baseline, then each method at each
retention) gets `warmup` untimed forwards, then one untimed inspection forward (what was kept, segments,
KV-cache size, decoder-layer-0 calls, CPU memory, FLOPs), then `repeats` timed forwards, interleaved
round-robin (repeat r starts at configuration r mod n, so drift and ordering hit every configuration
alike). Timing: CUDA events around the forward, then a synchronize, on GPU; `time.perf_counter` on CPU.
Each configuration keeps one handle for the whole run, detached while the others run, so
`posc_prior="cached"` is timed with its prior already cached, as a long-running server would see it.

Memory (see `MEMORY_MEASURES`): on CUDA, `torch.cuda.max_memory_allocated` over the timed forwards
(reset before each). On CPU, the peak of live bytes of tensor storages allocated during the inspection
forward, tracked by a `TorchDispatchMode` (`LiveTensorBytes`): activations, KV cache, logits; not the
weights or inputs that existed before, nor scratch buffers a kernel allocates internally.

Random weights give real shapes and real code paths, not meaningful attention: these are timings, not
accuracy. Frames of random token ids all differ (so ShaRP's SegM cuts between every pair of frames, up
to `segm_max_segments`); `--scenes S` makes frames repeat within S scenes instead. The number of
segments found is reported.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from .. import hf_protocol as hf
from ..config import PruneConfig, check_layer, config_for, variants
from ..engine.handle import PruneHandle, apply
from ..errors import ConfigError
from ..models.loading import DTYPES
from ..record import PruneRecord
from ..steps.locate import frame_map_for_span
from .machine import machine_info
from .memory import MEMORY_MEASURES, LiveTensorBytes, cuda_peak, model_bytes
from .shapes import SHAPES, build_model
from .speed_report import format_table, plot_speed
from .timing import time_call

BASELINE = "none"
DEFAULT_METHODS = ("fastv", "feather", "sharp", "sharp-cached")
DEFAULT_RETENTIONS = (0.1, 0.2, 0.3)
SPEED_DTYPES = ("bf16", "fp32")  # names in `sharp_prune.models.loading.DTYPES`


@dataclass(frozen=True)
class SpeedOptions:
    """Everything `run_speed` measures; echoed into the JSON file.

    Args:
        shape: a key of `SHAPES`.
        frames, tokens_per_frame: the video, F x T visual tokens.
        prefix_tokens, suffix_tokens: text before the video and the question after it.
        scenes: None (every frame has its own random tokens) or S (frames repeat within S equal scenes).
        methods: in-LLM methods to time against the unpruned baseline (`none`, always run); names of
            any method or named variant (`sharp_prune.config.variants()`: `sharp` with the PosC prior per input,
            `sharp-cached` with the cached prior, ...).
        retentions: retention values r in (0, 1] for every method.
        layer: K, the first decoder layer that sees only the kept tokens.
        warmup, repeats: untimed and timed forwards per configuration.
        dtype: "bf16" or "fp32". device: "cpu", "cuda" or "auto" (cuda when available).
        attn_implementation: "sdpa", "eager" or "flash_attention_2".
        threads: torch CPU threads (None: torch's default).
        seed: seed of the weights and token ids.
        memory: measure CPU memory with an extra, untimed forward under `LiveTensorBytes`.
        out: folder of the JSON and PNG files (created).
        plot: write the PNG (needs matplotlib).
    """

    shape: str = "smollm2-135m"
    frames: int = 32
    tokens_per_frame: int = 196
    prefix_tokens: int = 14
    suffix_tokens: int = 20
    scenes: int | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    retentions: tuple[float, ...] = DEFAULT_RETENTIONS
    layer: int = 2
    warmup: int = 2
    repeats: int = 5
    dtype: str = "bf16"
    device: str = "auto"
    attn_implementation: str = "sdpa"
    threads: int | None = None
    seed: int = 0
    memory: bool = True
    out: str = "outputs/speed"
    plot: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "retentions", tuple(float(r) for r in self.retentions))
        if self.shape not in SHAPES:
            raise ConfigError(f"unknown shape {self.shape!r}; choose one of {', '.join(SHAPES)}.")
        for name in ("frames", "tokens_per_frame", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("prefix_tokens", "warmup"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.suffix_tokens < 1:
            raise ConfigError("suffix_tokens must be >= 1: ShaRP scores with the question after the video.")
        if self.scenes is not None and not 1 <= self.scenes <= self.frames:
            raise ConfigError(f"scenes must be in [1, frames={self.frames}], got {self.scenes}.")
        known = set(variants())
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise ConfigError(f"unknown methods {unknown}; choose from {', '.join(sorted(known))}.")
        if not self.retentions or not all(math.isfinite(r) and 0.0 < r <= 1.0 for r in self.retentions):
            raise ConfigError(f"retentions must be numbers in (0, 1], got {list(self.retentions)}.")
        if self.dtype not in SPEED_DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(SPEED_DTYPES)}, got {self.dtype!r}.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device cuda was asked for but torch sees no CUDA GPU; use --device cpu.")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}.")
        check_layer(self.layer, SHAPES[self.shape].config["num_hidden_layers"], f"the {self.shape} shape")

    @property
    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    @property
    def stem(self) -> str:
        """File name stem of this run's outputs."""
        return f"speed_{self.shape}_{self.resolved_device}_{self.dtype}_{self.frames}x{self.tokens_per_frame}"

    def command_line(self) -> str:
        """The `sharp-prune speed` command that reproduces these options."""
        parts = [
            "sharp-prune speed",
            f"--shape {self.shape}",
            f"--frames {self.frames}",
            f"--tokens-per-frame {self.tokens_per_frame}",
            f"--prefix-tokens {self.prefix_tokens}",
            f"--suffix-tokens {self.suffix_tokens}",
            f"--methods {','.join(self.methods)}",
            f"--retentions {','.join(f'{r:g}' for r in self.retentions)}",
            f"--layer {self.layer}",
            f"--warmup {self.warmup}",
            f"--repeats {self.repeats}",
            f"--dtype {self.dtype}",
            f"--device {self.device}",
            f"--attn {self.attn_implementation}",
            f"--seed {self.seed}",
            f"--out {self.out}",
        ]
        if self.scenes is not None:
            parts.append(f"--scenes {self.scenes}")
        if self.threads is not None:
            parts.append(f"--threads {self.threads}")
        if not self.memory:
            parts.append("--no-memory")
        if not self.plot:
            parts.append("--no-plot")
        return " ".join(parts)


# --------------------------------------------------------------------------------------------- model and prompt
@dataclass
class SpeedPrompt:
    """One prompt: `input_ids` [1, L] and the generic adapter's `frame_map` [1, L] (-1 for text)."""

    input_ids: torch.Tensor
    frame_map: torch.Tensor
    start: int
    num_visual: int


def build_prompt(
    vocab_size: int,
    frames: int,
    tokens_per_frame: int,
    prefix_tokens: int = 14,
    suffix_tokens: int = 20,
    scenes: int | None = None,
    seed: int = 0,
    pad_token_id: int | None = None,
) -> SpeedPrompt:
    """Text prefix + frames x tokens_per_frame visual tokens + question, all random token ids.

    With `scenes=S`, frames are split into S contiguous, near-equal scenes and every frame of a scene
    repeats the scene's tokens; otherwise each frame draws its own. The pad token is never drawn (it is
    the generic adapter's blank frame for PosC).
    """
    generator = torch.Generator().manual_seed(seed)
    low = 3

    def draw(n: int) -> torch.Tensor:
        ids = torch.randint(low, vocab_size, (n,), generator=generator)
        if pad_token_id is not None:
            ids = torch.where(ids == pad_token_id, torch.full_like(ids, low), ids)
        return ids

    if scenes is None:
        video = draw(frames * tokens_per_frame)
    else:
        scene_tokens = [draw(tokens_per_frame) for _ in range(scenes)]
        video = torch.cat([scene_tokens[f * scenes // frames] for f in range(frames)])
    input_ids = torch.cat([draw(prefix_tokens), video, draw(suffix_tokens)])[None]
    frame_map = frame_map_for_span(input_ids.shape[1], prefix_tokens, frames, tokens_per_frame)
    return SpeedPrompt(input_ids, frame_map, prefix_tokens, frames * tokens_per_frame)


# --------------------------------------------------------------------------------------------- cases
@dataclass
class _Case:
    """One configuration: the unpruned baseline (config None) or a method at a retention."""

    name: str
    method: str
    retention: float | None
    config: PruneConfig | None
    handle: PruneHandle | None = None
    times: list[float] = field(default_factory=list)
    peak_delta: list[int] = field(default_factory=list)
    peak_abs: list[int] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    flops_error: str | None = None
    cpu_peak: int | None = None

    def attach(self, model: PreTrainedModel) -> None:
        if self.config is None:
            return
        if self.handle is None:
            self.handle = apply(model, self.config)
        elif not self.handle.active:
            # Re-attach the same handle: its caches (PosC's cached prior, blank frames) survive detaching.
            self.handle.reattach()

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()


def _cases(options: SpeedOptions) -> list[_Case]:
    cases = [_Case(BASELINE, BASELINE, None, None)]
    for method in dict.fromkeys(options.methods):  # keeps order, drops repeats
        if method == BASELINE:
            continue
        for retention in options.retentions:
            config = config_for(method, retention=retention, layer=options.layer, seed=options.seed)
            cases.append(_Case(f"{method}@{retention:g}", method, retention, config))
    return cases


def _timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, int | None, int | None]:
    """(seconds, peak bytes above the start, absolute peak bytes) of one call; no memory figures on CPU."""
    if device.type != "cuda":
        seconds, out = time_call(fn, device)
        del out
        return seconds, None, None
    (seconds, out), delta, peak = cuda_peak(lambda: time_call(fn, device), device)
    del out
    return seconds, delta, peak


def _forward(model: PreTrainedModel, case: _Case, prompt: SpeedPrompt, inputs: dict[str, torch.Tensor]) -> Any:
    if case.handle is None:
        return model(**inputs, logits_to_keep=1)
    with case.handle.visual_frames(prompt.frame_map):
        return model(**inputs, logits_to_keep=1)


def _flops(model: PreTrainedModel, record: PruneRecord | None, config: PruneConfig | None) -> tuple[Any, str | None]:
    """(report, None) from `sharp_prune.measure.flops.prefill_flops`, or (None, why not)."""
    if config is None or record is None:
        return None, None
    try:
        from . import flops
    except ImportError as err:
        return None, f"sharp_prune.measure.flops is not available ({err})"
    try:
        return flops.prefill_flops(model, record, config), None
    except Exception as err:  # an optional column must not sink the timings
        return None, f"{type(err).__name__}: {err}"


def _inspect(
    model: PreTrainedModel, case: _Case, prompt: SpeedPrompt, inputs: dict[str, torch.Tensor], memory: bool
) -> None:
    """One untimed forward: what the configuration kept, layer-0 calls, KV-cache bytes, CPU memory, FLOPs."""
    calls = [0]

    def count(*_: Any) -> None:
        calls[0] += 1

    hook = model.model.layers[0].register_forward_pre_hook(count)
    tracker = LiveTensorBytes() if memory else None
    try:
        if tracker is not None:
            with tracker:
                out = _forward(model, case, prompt, inputs)
        else:
            out = _forward(model, case, prompt, inputs)
    finally:
        hook.remove()
    info: dict[str, Any] = {
        "seq_len": prompt.input_ids.shape[1],
        "num_visual": prompt.num_visual,
        "kept_visual": prompt.num_visual,
        "kept_len": prompt.input_ids.shape[1],
        "segments": None,
        "registers": None,
        # 2 when a PosC prior pass ran (layers 0..K-1 again on the blank copy), 1 otherwise
        "layer0_calls": calls[0],
        "kv_cache_bytes": hf.cache_bytes(hf.output_cache(out)),
    }
    case.cpu_peak = tracker.peak if tracker is not None else None
    del out
    record = case.handle.last if case.handle is not None else None
    if record is not None:
        info.update(num_visual=record.num_visual[0], kept_visual=record.budget[0], kept_len=record.kept_len)
        if record.segment_ids is not None:
            info["segments"] = int(torch.unique(record.segment_ids[0]).numel())
        if record.is_register is not None:
            info["registers"] = int(record.is_register[0].sum())
    report, error = _flops(model, record, case.config)
    info["flops_ratio"] = 1.0 if case.config is None else _number(getattr(report, "ratio", None))
    info["flops_reduction"] = 0.0 if case.config is None else _number(getattr(report, "reduction", None))
    info["flops_total"] = getattr(report, "total", None)
    info["flops_unpruned"] = getattr(report, "unpruned", None)
    info["flops_convention"] = getattr(report, "convention", None)
    case.info = info
    case.flops_error = error


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------- run
def run_speed(options: SpeedOptions, progress: bool = True) -> dict[str, Any]:
    """Run the benchmark; print the table, write `<out>/<stem>.json` (and `.png`), return the JSON payload.

    The payload holds `options`, `command`, `machine`, `model`, `prompt`, `memory_measure`, `flops`,
    `results` (one entry per configuration, baseline first, with every timing in seconds) and `files`.
    """

    def say(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    device = torch.device(options.resolved_device)
    threads = torch.get_num_threads()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    try:
        return _run(options, device, say)
    finally:
        torch.set_num_threads(threads)


def _run(options: SpeedOptions, device: torch.device, say: Callable[[str], None]) -> dict[str, Any]:
    shape = SHAPES[options.shape]
    say(f"speed: building {shape.name} ({shape.note}), {options.dtype} on {device}")
    model = build_model(options.shape, DTYPES[options.dtype], device, options.attn_implementation, options.seed)
    prompt = build_prompt(
        shape.config["vocab_size"],
        options.frames,
        options.tokens_per_frame,
        options.prefix_tokens,
        options.suffix_tokens,
        options.scenes,
        options.seed,
        shape.config.get("pad_token_id"),
    )
    input_ids = prompt.input_ids.to(device)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    cases = _cases(options)
    measure_cpu_memory = options.memory and device.type == "cpu"

    def run(case: _Case, fn: Callable[[], Any]) -> Any:
        case.attach(model)
        try:
            return fn()
        finally:
            case.detach()

    with torch.no_grad():
        try:
            for w in range(options.warmup):
                say(f"speed: warm-up {w + 1}/{options.warmup} ({len(cases)} configurations)")
                for case in cases:
                    run(case, lambda c=case: _forward(model, c, prompt, inputs))
            say("speed: inspection forward per configuration (kept tokens, memory, FLOPs)")
            for case in cases:
                run(case, lambda c=case: _inspect(model, c, prompt, inputs, measure_cpu_memory))
                if (
                    case.config is not None
                    and case.config.needs_prior
                    and not case.config.blank_pass_each_prefill
                    and case.info["layer0_calls"] != 1
                ):
                    say(f"speed: warning: {case.name} still ran the PosC prior pass; its cache was not reused")
            for r in range(options.repeats):
                say(f"speed: timed repeat {r + 1}/{options.repeats}")
                shift = r % len(cases)
                for case in cases[shift:] + cases[:shift]:
                    timed = run(case, lambda c=case: _timed(device, lambda: _forward(model, c, prompt, inputs)))
                    elapsed, delta, peak = timed
                    case.times.append(elapsed)
                    if delta is not None:
                        case.peak_delta.append(delta)
                        case.peak_abs.append(peak)
        finally:
            for case in cases:
                case.detach()

    payload = _payload(options, model, prompt, cases, device)
    out_dir = Path(options.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{options.stem}.json"
    files: dict[str, str | None] = {"json": str(json_path), "png": None}
    if options.plot:
        png_path = out_dir / f"{options.stem}.png"
        try:
            plot_speed(payload, png_path)
            files["png"] = str(png_path)
        except ImportError as err:
            say(f"speed: no plot ({err}); install matplotlib")
    payload["files"] = files
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    print(format_table(payload))
    print(f"\nwrote {json_path}" + (f" and {files['png']}" if files["png"] else ""))
    return payload


def _payload(
    options: SpeedOptions, model: PreTrainedModel, prompt: SpeedPrompt, cases: list[_Case], device: torch.device
) -> dict[str, Any]:
    base = statistics.median(cases[0].times)
    results = []
    for case in cases:
        median = statistics.median(case.times)
        memory, peak = case.cpu_peak, None
        if case.peak_delta:
            memory, peak = max(case.peak_delta), max(case.peak_abs)
        flops_ratio = case.info.get("flops_ratio")
        results.append(
            {
                "name": case.name,
                "method": case.method,
                "retention": case.retention,
                "prune_config": case.config.to_dict() if case.config is not None else None,
                "times_s": case.times,
                "median_s": median,
                "min_s": min(case.times),
                "max_s": max(case.times),
                "time_ratio": median / base,  # median / unpruned median, same process
                "speedup": base / median,
                "peak_delta_bytes": memory,
                "peak_bytes": peak,
                **case.info,
                "speedup_bound": 1.0 / flops_ratio if flops_ratio else None,
            }
        )
    flops_errors = sorted({case.flops_error for case in cases if case.flops_error})
    seq_len = prompt.input_ids.shape[1]
    return {
        "benchmark": "sharp-prune speed",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": options.command_line(),
        "options": asdict(options) | {"resolved_device": device.type},
        "machine": machine_info(device, options.dtype),
        "model": {
            "shape": options.shape,
            "class": type(model).__name__,
            "note": SHAPES[options.shape].note,
            "config": SHAPES[options.shape].config,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "weights_bytes": model_bytes(model),
            "attn_implementation": options.attn_implementation,
            "random_weights": True,
        },
        "prompt": {
            "seq_len": seq_len,
            "prefix_tokens": options.prefix_tokens,
            "frames": options.frames,
            "tokens_per_frame": options.tokens_per_frame,
            "num_visual": prompt.num_visual,
            "suffix_tokens": options.suffix_tokens,
            "scenes": options.scenes,
        },
        "protocol": (
            f"{options.warmup} warm-up + 1 inspection + {options.repeats} timed forwards per configuration, "
            "round-robin (repeat r starts at configuration r mod n), torch.no_grad, one forward of the prompt "
            "with logits_to_keep=1 and a KV cache = time to first token; "
            + ("CUDA events + synchronize" if device.type == "cuda" else "time.perf_counter")
        ),
        "memory_measure": MEMORY_MEASURES[device.type] if (device.type == "cuda" or options.memory) else None,
        "flops": {
            "available": any(r["flops_ratio"] is not None for r in results[1:]),
            "source": "sharp_prune.measure.flops.prefill_flops(model, record, config).ratio",
            "errors": flops_errors,
        },
        "results": results,
    }
