"""`sharp-prune bench`: what pruning keeps, on a real pretrained LM and the captioned-video task.

For every item, the unpruned model answers first; then every (layer K, method, retention) runs on the
same item, in the same process, and is compared with it: accuracy, agreement with the unpruned answer,
KL divergence of the answer distribution from the unpruned one, recall of the needle scene's tokens,
whether the answer word survived in the needle scene, and the prefill time ratio to the unpruned run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..config import PruneConfig, ablations, config_for
from ..engine import apply
from ..measure.timing import model_device, time_call
from .intervals import bootstrap_interval, paired_difference
from .task import Item, TaskConfig, candidate_log_probs, make_items

DEFAULT_METHODS = ("random", "uniform", "fastv", "feather", "divprune", "sharp")


@dataclass(frozen=True)
class BenchOptions:
    """What `sharp-prune bench` runs. Method names: registered methods and their named variants
    (`sharp_prune.config.variants()`: e.g. "sharp-segm", ShaRP with SegM off); `ablation` adds every method's
    ablation variants."""

    items: int = 16
    split: str = "test"
    methods: tuple[str, ...] = DEFAULT_METHODS
    retentions: tuple[float, ...] = (0.1, 0.2, 0.3)
    layers: tuple[int, ...] = (2,)
    ablation: bool = False
    task: TaskConfig = field(default_factory=TaskConfig)
    task_variant: str = "redundant"
    model: str = "smollm2"
    dtype: str = "bf16"
    threads: int | None = None

    def method_list(self) -> tuple[str, ...]:
        extra = ablations() if self.ablation else ()
        return tuple(dict.fromkeys(self.methods + extra))


def method_config(name: str, retention: float, layer: int) -> PruneConfig:
    """The `PruneConfig` of a bench method or variant name (ablation names switch one component off)."""
    return config_for(name, retention=retention, layer=layer, record_scores=True)


@dataclass
class Trial:
    """One (item, layer, method, retention) run."""

    item: int
    question_type: str
    layer: int
    method: str
    retention: float
    correct: bool
    agrees: bool
    kl: float
    needle_recall: float
    answer_kept: bool
    time_ratio: float
    kept: int


def _forward(model, item: Item) -> tuple[torch.Tensor, float]:
    """The candidates' log-probabilities from one prefill (timed), and the seconds it took."""
    seconds, log_probs = time_call(lambda: candidate_log_probs(model, item), model_device(model))
    return log_probs, seconds


def _kept_tokens(record) -> torch.Tensor:
    """Kept positions that hold their own token (registers are summaries, not the token)."""
    keep = record.keep_positions[0]
    if record.is_register is not None:
        keep = keep[~record.is_register[0]]
    return keep


def _frame_profile(record, frames: int) -> dict[str, list[float]] | None:
    """Mean score per frame (raw, prior, calibrated), for the analysis of what the scores see."""
    if record.raw_scores is None:
        return None
    frame_ids = record.frame_ids[0]
    out = {}
    for name, values in (("raw", record.raw_scores), ("prior", record.prior), ("calibrated", record.scores)):
        if values is None:
            continue
        sums = torch.zeros(frames).index_add_(0, frame_ids, values[0].float())
        counts = torch.bincount(frame_ids, minlength=frames).clamp(min=1)
        out[name] = (sums / counts).tolist()
    return out


def run_bench(
    model,
    tokenizer,
    options: BenchOptions,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-able result (options, per-trial rows, summary)."""
    items = make_items(tokenizer, options.items, options.split, options.task)
    methods = options.method_list()
    total = len(items) * (1 + len(options.layers) * len(methods) * len(options.retentions))
    done = 0
    trials: list[Trial] = []
    baseline_correct: list[bool] = []
    baseline_times: list[float] = []
    profiles: dict[str, list[dict[str, list[float]]]] = {}
    for index, item in enumerate(items):
        reference, reference_time = _forward(model, item)
        baseline_correct.append(int(reference.argmax()) == item.answer)
        baseline_times.append(reference_time)
        done += 1
        if progress:
            progress(done, total, f"item {index + 1}/{len(items)} unpruned")
        needle = set(item.needle_positions.tolist())
        answer_positions = set(item.answer_positions.tolist())
        for layer in options.layers:
            for method in methods:
                for retention in options.retentions:
                    handle = apply(model, method_config(method, retention, layer))
                    try:
                        with handle.visual_frames(item.frame_map):
                            log_probs, elapsed = _forward(model, item)
                    finally:
                        handle.remove()
                    record = handle.last
                    kept = set(_kept_tokens(record).tolist())
                    reference_probs = reference.exp()
                    trials.append(
                        Trial(
                            item=index,
                            question_type=item.question_type,
                            layer=layer,
                            method=method,
                            retention=retention,
                            correct=int(log_probs.argmax()) == item.answer,
                            agrees=int(log_probs.argmax()) == int(reference.argmax()),
                            kl=float((reference_probs * (reference - log_probs)).sum()),
                            needle_recall=len(kept & needle) / max(1, len(needle)),
                            answer_kept=bool(kept & answer_positions),
                            time_ratio=elapsed / reference_time,
                            kept=record.budget[0],
                        )
                    )
                    profile = _frame_profile(record, options.task.frames)
                    if profile is not None and retention == options.retentions[0]:
                        profile["needle_frames"] = sorted({int(f) for f in item.frame_map[0][item.needle_positions]})
                        profiles.setdefault(f"{method}@K={layer}", []).append(profile)
                    done += 1
                    if progress:
                        progress(done, total, f"item {index + 1}/{len(items)} {method} r={retention} K={layer}")
    return {
        "options": _options_dict(options),
        "model": options.model,
        "task_variant": options.task_variant,
        "num_visual": items[0].num_visual if items else 0,
        "seq_len": int(items[0].input_ids.shape[1]) if items else 0,
        "baseline": {
            "accuracy": statistics.fmean(baseline_correct) if items else 0.0,
            "prefill_s_median": statistics.median(baseline_times) if items else 0.0,
            "by_type": _by_type(items, baseline_correct),
        },
        "summary": summarise(trials, baseline_correct),
        "comparisons": compare(trials),
        "score_profiles": {key: _mean_profile(value) for key, value in profiles.items()},
        "trials": [asdict(t) for t in trials],
    }


def _options_dict(options: BenchOptions) -> dict[str, Any]:
    data = asdict(options)
    data["methods"] = list(options.method_list())
    data["method_configs"] = {
        m: method_config(m, 0.0 + options.retentions[0], options.layers[0]).to_dict() for m in options.method_list()
    }
    return data


def _by_type(items: Sequence[Item], correct: Sequence[bool]) -> dict[str, float]:
    groups: dict[str, list[bool]] = {}
    for item, ok in zip(items, correct, strict=True):
        groups.setdefault(item.question_type, []).append(ok)
    return {kind: statistics.fmean(values) for kind, values in sorted(groups.items())}


def _mean_profile(profiles: list[dict[str, list[float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("raw", "prior", "calibrated"):
        rows = [p[key] for p in profiles if key in p]
        if rows:
            out[key] = torch.tensor(rows).mean(0).tolist()
    # how the needle frames score against the rest, per item, with the score the method selects on
    key = "calibrated" if all("calibrated" in p for p in profiles) else "raw"
    ratios = []
    for p in profiles:
        frames = torch.tensor(p[key])
        needle = torch.zeros_like(frames, dtype=torch.bool)
        needle[p["needle_frames"]] = True
        rank = (frames.argsort(descending=True).argsort()[needle].float().mean() / len(frames)).item()
        ratios.append(rank)
    out["needle_frame_rank"] = statistics.fmean(ratios) if ratios else None  # 0 = top, 1 = bottom
    return out


def summarise(trials: Sequence[Trial], baseline_correct: Sequence[bool]) -> list[dict[str, Any]]:
    """Aggregate trials per (layer, method, retention), with 95% bootstrap intervals over items: the accuracy's,
    and the paired difference from the unpruned model on the same items."""
    baseline_accuracy = statistics.fmean(baseline_correct) if baseline_correct else 0.0
    groups: dict[tuple[int, str, float], list[Trial]] = {}
    for t in trials:
        groups.setdefault((t.layer, t.method, t.retention), []).append(t)
    rows = []
    for (layer, method, retention), group in groups.items():
        outcomes = [float(t.correct) for t in group]
        accuracy = statistics.fmean(outcomes)
        unpruned = [float(baseline_correct[t.item]) for t in group]
        rows.append(
            {
                "layer": layer,
                "method": method,
                "retention": retention,
                "items": len(group),
                "accuracy": accuracy,
                "accuracy_ci": list(bootstrap_interval(outcomes)),
                "relative_accuracy": accuracy / baseline_accuracy if baseline_accuracy else None,
                "vs_unpruned": paired_difference(outcomes, unpruned),
                "agreement": statistics.fmean(t.agrees for t in group),
                "kl": statistics.fmean(t.kl for t in group),
                "needle_recall": statistics.fmean(t.needle_recall for t in group),
                "answer_kept": statistics.fmean(t.answer_kept for t in group),
                "time_ratio_median": statistics.median(t.time_ratio for t in group),
                "kept": group[0].kept,
            }
        )
    return rows


# The paired comparisons every bench reports, where both methods ran: (method, against).
COMPARISONS = (("sharp", "fastv"), ("sharp", "random"), ("sharp", "uniform"))


def compare(trials: Sequence[Trial]) -> list[dict[str, Any]]:
    """Paired accuracy differences between methods on the same items (`COMPARISONS`), per layer and retention,
    with 95% bootstrap intervals: {"layer", "retention", "method", "against", "mean", "low", "high"}."""
    outcome: dict[tuple[int, float, str], dict[int, float]] = {}
    for t in trials:
        outcome.setdefault((t.layer, t.retention, t.method), {})[t.item] = float(t.correct)
    rows = []
    for layer, retention in sorted({(t.layer, t.retention) for t in trials}):
        for method, against in COMPARISONS:
            a, b = outcome.get((layer, retention, method)), outcome.get((layer, retention, against))
            if a is None or b is None:
                continue
            shared = sorted(set(a) & set(b))
            difference = paired_difference([a[i] for i in shared], [b[i] for i in shared])
            rows.append({"layer": layer, "retention": retention, "method": method, "against": against, **difference})
    return rows


def smallest_layer(
    summary: Sequence[dict[str, Any]], retention: float = 0.2, keep: float = 0.97
) -> dict[str, int | None]:
    """Per method, the smallest K at which accuracy is >= `keep` of the unpruned accuracy at `retention`."""
    out: dict[str, int | None] = {}
    for row in sorted(summary, key=lambda r: r["layer"]):
        if abs(row["retention"] - retention) > 1e-9:
            continue
        out.setdefault(row["method"], None)
        if out[row["method"]] is None and (row["relative_accuracy"] or 0) >= keep:
            out[row["method"]] = row["layer"]
    return out
