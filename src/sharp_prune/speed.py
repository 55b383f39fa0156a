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

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary
from transformers import PreTrainedModel

from . import hf_protocol as hf
from .cli_args import comma_list, decoder_layer, fraction, nonnegative_int, output_dir, positive_int
from .config import PruneConfig, check_layer
from .engine import PruneHandle, apply
from .errors import ConfigError
from .layout import frame_map_for_span
from .record import PruneRecord
from .selectors import available_methods
from .speed_models import SHAPES, build_model
from .speed_report import format_table, plot_speed

BASELINE = "none"
CACHED = "sharp-cached"
DEFAULT_METHODS = ("fastv", "feather", "sharp", CACHED)
DEFAULT_RETENTIONS = (0.1, 0.2, 0.3)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MEMORY_MEASURES = {
    "cuda": "torch.cuda.max_memory_allocated during each timed forward (reset before it), minus the bytes "
    "allocated just before it; the largest over the repeats. peak_bytes is the absolute peak (weights included).",
    "cpu": "peak of live bytes of tensor storages allocated during one untimed forward (TorchDispatchMode, "
    "storages tracked until freed): activations, KV cache and logits above what existed before the call "
    "(weights, inputs). Kernel-internal scratch buffers and allocator overhead are not seen.",
}


@dataclass(frozen=True)
class SpeedOptions:
    """Everything `run_speed` measures; echoed into the JSON file.

    Args:
        shape: a key of `SHAPES`.
        frames, tokens_per_frame: the video, F x T visual tokens.
        prefix_tokens, suffix_tokens: text before the video and the question after it.
        scenes: None (every frame has its own random tokens) or S (frames repeat within S equal scenes).
        methods: in-LLM methods to time against the unpruned baseline (`none`, always run); names of
            `available_methods()`, `sharp` (PosC prior per input) and `sharp-cached` (cached prior).
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
        known = set(available_methods()) | {CACHED}
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise ConfigError(f"unknown methods {unknown}; choose from {', '.join(sorted(known))}.")
        if not self.retentions or not all(math.isfinite(r) and 0.0 < r <= 1.0 for r in self.retentions):
            raise ConfigError(f"retentions must be numbers in (0, 1], got {list(self.retentions)}.")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}.")
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


# --------------------------------------------------------------------------------------------- memory
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


def _model_bytes(model: torch.nn.Module) -> int:
    seen: dict[int, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


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
            extra = {"method": "sharp", "posc_prior": "cached"} if method == CACHED else {"method": method}
            config = PruneConfig(retention=retention, layer=options.layer, seed=options.seed, **extra)
            cases.append(_Case(f"{method}@{retention:g}", method, retention, config))
    return cases


class _Timer:
    """Times one call: CUDA events + synchronize on GPU, `time.perf_counter` on CPU; CUDA peak memory."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, int | None, int | None]:
        # Python's cyclic GC stays off inside the timed region (as in `timeit`); tensors are freed by refcount.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._time(fn)
        finally:
            if enabled:
                gc.enable()

    def _time(self, fn: Callable[[], Any]) -> tuple[float, int | None, int | None]:
        if not self.cuda:
            start = time.perf_counter()
            out = fn()
            elapsed = time.perf_counter() - start
            del out
            return elapsed, None, None
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        del out
        return start.elapsed_time(end) / 1000.0, peak - before, peak


def _forward(model: PreTrainedModel, case: _Case, prompt: SpeedPrompt, inputs: dict[str, torch.Tensor]) -> Any:
    if case.handle is None:
        return model(**inputs, logits_to_keep=1)
    with case.handle.visual_frames(prompt.frame_map):
        return model(**inputs, logits_to_keep=1)


def _flops(model: PreTrainedModel, record: PruneRecord | None, config: PruneConfig | None) -> tuple[Any, str | None]:
    """(report, None) from `sharp_prune.flops.prefill_flops`, or (None, why not)."""
    if config is None or record is None:
        return None, None
    try:
        from . import flops
    except ImportError as err:
        return None, f"sharp_prune.flops is not available ({err})"
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


# --------------------------------------------------------------------------------------------- machine
def machine_info(device: torch.device, dtype: str) -> dict[str, Any]:
    """Where the numbers come from: CPU / GPU, library versions, dtype, threads, git commit."""
    import transformers

    from . import __version__

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sharp_prune": __version__,
        "device": device.type,
        "dtype": dtype,
        "git_commit": _git_commit(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_bytes=props.total_memory,
            gpu_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
        )
    return info


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        result = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


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
    timer = _Timer(device)
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
                if case.method == CACHED and case.info["layer0_calls"] != 1:
                    say(f"speed: warning: {case.name} still ran the PosC prior pass; its cache was not reused")
            for r in range(options.repeats):
                say(f"speed: timed repeat {r + 1}/{options.repeats}")
                shift = r % len(cases)
                for case in cases[shift:] + cases[:shift]:
                    elapsed, delta, peak = run(case, lambda c=case: timer(lambda: _forward(model, c, prompt, inputs)))
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
            "weights_bytes": _model_bytes(model),
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
            "source": "sharp_prune.flops.prefill_flops(model, record, config).ratio",
            "errors": flops_errors,
        },
        "results": results,
    }


# --------------------------------------------------------------------------------------------- output
def options_from_args(args: argparse.Namespace) -> SpeedOptions:
    """`SpeedOptions` from the parsed `speed` subcommand."""
    return SpeedOptions(
        shape=args.shape,
        frames=args.frames,
        tokens_per_frame=args.tokens_per_frame,
        prefix_tokens=args.prefix_tokens,
        suffix_tokens=args.suffix_tokens,
        scenes=args.scenes,
        methods=args.methods,
        retentions=args.retentions,
        layer=args.layer,
        warmup=args.warmup,
        repeats=args.repeats,
        dtype=args.dtype,
        device=args.device,
        attn_implementation=args.attn,
        threads=args.threads,
        seed=args.seed,
        memory=args.memory,
        out=str(args.out),
        plot=args.plot,
    )


def _speed_command(args: argparse.Namespace) -> int:
    run_speed(options_from_args(args), progress=not args.quiet)
    return 0


def add_speed_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `speed` subcommand on `subparsers` (from `add_subparsers`); its `func` returns an exit code."""
    defaults = SpeedOptions()
    parser = subparsers.add_parser(
        "speed",
        help="prefill latency (time to first token) and peak memory, pruned vs unpruned, on random-weight models",
        description=(__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--shape", choices=list(SHAPES), default=defaults.shape, help="model shape (random weights)")
    parser.add_argument(
        "--frames", type=positive_int, default=defaults.frames, help="video frames (default %(default)s)"
    )
    parser.add_argument(
        "--tokens-per-frame",
        type=positive_int,
        default=defaults.tokens_per_frame,
        help="visual tokens per frame (default %(default)s)",
    )
    parser.add_argument(
        "--prefix-tokens", type=nonnegative_int, default=defaults.prefix_tokens, help="text before the video"
    )
    parser.add_argument(
        "--suffix-tokens", type=positive_int, default=defaults.suffix_tokens, help="question after the video"
    )
    parser.add_argument(
        "--scenes",
        type=positive_int,
        default=None,
        help="frames repeat within this many scenes (default: every frame differs)",
    )
    parser.add_argument(
        "--methods",
        type=comma_list(str),
        default=defaults.methods,
        help=f"comma-separated methods, timed against the unpruned baseline (default {','.join(defaults.methods)}; "
        f"any of {', '.join(m for m in available_methods() if m != BASELINE)}, {CACHED})",
    )
    parser.add_argument(
        "--retentions",
        type=comma_list(fraction),
        default=defaults.retentions,
        help=f"comma-separated retentions (default {','.join(f'{r:g}' for r in defaults.retentions)})",
    )
    parser.add_argument(
        "--layer", type=decoder_layer, default=defaults.layer, help="decoder layer K (default %(default)s)"
    )
    parser.add_argument(
        "--warmup",
        type=nonnegative_int,
        default=defaults.warmup,
        help="untimed forwards per configuration (default %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=defaults.repeats,
        help="timed forwards per configuration (default %(default)s)",
    )
    parser.add_argument(
        "--dtype", choices=list(DTYPES), default=defaults.dtype, help="weights dtype (default %(default)s)"
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=defaults.device,
        help="auto (default): cuda if torch sees one",
    )
    parser.add_argument(
        "--attn",
        choices=["sdpa", "eager", "flash_attention_2"],
        default=defaults.attn_implementation,
        help="attention implementation (default %(default)s)",
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of weights and token ids")
    parser.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the CPU memory forward (CUDA memory is free)"
    )
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="do not write the PNG")
    parser.add_argument("--out", type=output_dir, default=defaults.out, help="output folder (default %(default)s)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=_speed_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sharp_prune.speed ...`: the `speed` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="sharp-prune")
    add_speed_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["speed", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
