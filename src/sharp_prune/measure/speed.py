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
from ..config import PruneConfig, config_for
from ..engine import PruneHandle, apply
from ..models import resolve_adapter
from ..models.loading import DTYPES
from ..record import PruneRecord
from .machine import machine_info
from .memory import MEMORY_MEASURES, LiveTensorBytes, cuda_peak, model_bytes
from .shapes import SHAPES, SpeedPrompt, build_model, build_prompt
from .speed_options import BASELINE, DEFAULT_METHODS, DEFAULT_RETENTIONS, SPEED_DTYPES, SpeedOptions  # noqa: F401
from .speed_report import format_table, plot_speed
from .timing import time_call


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

    hook = resolve_adapter(model).layers(model)[0].register_forward_pre_hook(count)
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
