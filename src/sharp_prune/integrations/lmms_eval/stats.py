"""Per-sample pruning statistics of an lmms-eval run: kept tokens, FLOPs and prefill time of every request.

One row per request (the first prefill after the request's visuals were read), written as JSONL while the
run goes, plus a summary JSON rewritten after every `generate_until` call, both in `PluginOptions.log_dir`:

    <log_dir>/<run>_<model>_rank<r>of<w>_samples.jsonl
    <log_dir>/<run>_<model>_rank<r>of<w>_summary.json

`<run>` (a time stamp and a process id) is rank 0's, shared by every rank of a distributed run (`torchrun`,
`accelerate launch`), and `<r>` is the global rank, so files of different ranks or nodes never collide. With
several ranks, rank 0 also writes the whole run's rows and summary after every `generate_until` call:

    <log_dir>/<run>_<model>_samples.jsonl
    <log_dir>/<run>_<model>_summary.json

(`merge_logs` does the same afterwards, from the rank files.) Rows carry lmms-eval's ``task``, ``split`` and
``doc_id``, so they join with lmms-eval's ``--log_samples``. lmms-eval's padding requests (repeats that even out
the ranks' shares) are not rows.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from torch import nn

from ... import hf_protocol as hf
from ...engine.handle import PruneHandle
from ...errors import UnsupportedModelError
from ...measure.flops import prefill_flops
from ...measure.timing import Stopwatch
from ...record import PruneRecord

logger = logging.getLogger(__name__)


@dataclass
class SampleStats:
    """What one request's prefill kept and cost.

    Attributes:
        task, split, doc_id: lmms-eval's request (None when the prefill came outside `generate_until`).
        batch: samples in the prefill (the counts below are per sample).
        visual_tokens: video tokens found (N); kept_visual_tokens: kept past layer K (B).
        retained_fraction: B / N (1.0 without video).
        seq_len, kept_len: the prefill's sequence length before and after layer K.
        prefill_flops, unpruned_prefill_flops: text-decoder FLOPs of this prefill and of the same prefill
            unpruned (`sharp_prune.measure.flops.prefill_flops`, "executed" convention; the vision tower is the same
            either way and is not counted); 0 for a model whose text stack the FLOPs model refuses (the summary's
            ``flops_not_counted`` says why).
        prefill_s: wall time of the prefill forward in seconds (transformers encodes the video before it);
            None with ``prune_timing=false``.
        error: why the request failed (its video could not be read, it has no video, generation failed), else
            None.
        warning: what to know about a request that ran (fewer frames than `max_frames_num`), else None.
    """

    task: str | None
    split: str | None
    doc_id: int | str | None
    batch: int = 1
    visual_tokens: int = 0
    kept_visual_tokens: int = 0
    retained_fraction: float = 1.0
    seq_len: int = 0
    kept_len: int = 0
    prefill_flops: int = 0
    unpruned_prefill_flops: int = 0
    prefill_s: float | None = None
    error: str | None = None
    warning: str | None = None


def _is_prefill(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return hf.read_model_call(hf.forward_parameters(module), args, kwargs).is_prefill


class PrefillStats:
    """Collects a `SampleStats` per request from forward hooks on `model` (pruned by `handle`).

    Args:
        model: the model `handle` prunes.
        handle: its `PruneHandle` (the record of each prefill is `handle.last`).
        log_dir: output folder (created on the first write).
        model_id: name used in the file names (e.g. ``sharp_llava_onevision``).
        rank: global process rank (one pair of files per rank under data parallelism).
        world_size: processes of the run; run_id: the run's name in the file names, the same on every rank.
        timing: time each prefill.
        meta: extra JSON-able facts echoed in the summary (checkpoint, lmms-eval version, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        handle: PruneHandle,
        log_dir: str | Path,
        model_id: str,
        rank: int = 0,
        world_size: int = 1,
        run_id: str | None = None,
        timing: bool = True,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.handle = handle
        self.timing = timing
        self.meta = dict(meta or {})
        self.rows: list[SampleStats] = []
        self.rank, self.world_size = rank, world_size
        self.run_id = run_id or new_run_id()
        self.folder, self.model_id = Path(log_dir), model_id
        self.samples_path = self.folder / f"{self.run_id}_{model_id}_rank{rank}of{world_size}_samples.jsonl"
        self.summary_path = self.folder / f"{self.run_id}_{model_id}_rank{rank}of{world_size}_summary.json"
        self._written = 0
        self._local = threading.local()  # the request a thread is running
        self._hooks = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after, with_kwargs=True),
        ]

    # ------------------------------------------------------------------ request bookkeeping
    def begin(self, task: str | None, split: str | None, doc_id: int | str | None, padding: bool = False) -> None:
        """The next prefill belongs to this request (called when lmms-eval reads its visuals); a padding request
        (lmms-eval's repeat that evens out the ranks) is run but not counted."""
        self._close_pending()
        self._local.marked = True
        self._local.pending = SampleStats(task=task, split=split, doc_id=doc_id, error="no prefill ran")
        self._local.padding = padding

    def note(self, message: str) -> None:
        """A warning about the running request (a short video, say): kept in its row and counted."""
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.warning = message

    def fail(self, message: str) -> None:
        """The running request failed before its prefill (a missing video, say): the reason goes in its row."""
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.error = message

    def _close_pending(self) -> None:
        pending = getattr(self._local, "pending", None)
        if pending is not None:  # read but never prefilled: generation failed before the model ran
            self._keep(pending)
            self._local.pending = None

    def _keep(self, row: SampleStats) -> None:
        if getattr(self._local, "padding", False):
            return
        if row.error is None and row.visual_tokens == 0 and row.task is not None:
            row.error = "no video in the document: answered unpruned"
            logger.warning("sharp-prune: %s doc %s has no video tokens: answered without pruning", row.task, row.doc_id)
        self.rows.append(row)

    # ------------------------------------------------------------------ hooks
    def _before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not _is_prefill(module, args, kwargs):
            return
        pending = getattr(self._local, "pending", None)
        if pending is None and getattr(self._local, "in_request", False) and getattr(self._local, "marked", False):
            return  # a later forward of a request already counted (use_cache=False re-runs full prefills)
        device = next(module.parameters()).device
        self._local.timer = Stopwatch(device) if self.timing else None
        self._local.timing_prefill = True

    def _after(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        # The cache is filled by now: whether this was a prefill is what `_before` saw.
        if not getattr(self._local, "timing_prefill", False):
            return
        self._local.timing_prefill = False
        timer = self._local.timer
        seconds = timer.stop() if timer is not None else None
        pending = getattr(self._local, "pending", None)
        row = pending if pending is not None else SampleStats(task=None, split=None, doc_id=None)
        self._local.pending = None
        self._fill(row, self.handle.last, seconds)
        self._keep(row)

    def _fill(self, row: SampleStats, record: PruneRecord | None, seconds: float | None) -> None:
        if row.error not in (None, "no prefill ran"):
            return  # the request failed before the model ran (a later prefill is not its own)
        row.error = None
        row.prefill_s = seconds
        if record is None:
            return
        row.batch = len(record.num_visual)
        row.visual_tokens = int(record.num_visual[0]) if record.num_visual else 0
        row.kept_visual_tokens = int(record.budget[0]) if record.budget else 0
        row.retained_fraction = record.retained_fraction[0] if record.num_visual else 1.0
        row.seq_len, row.kept_len = record.seq_len, record.kept_len
        if row.visual_tokens and "flops_not_counted" not in self.meta:
            try:
                report = prefill_flops(self.model, record)
            except UnsupportedModelError as err:  # a text stack the FLOPs model refuses: 0, and the summary says why
                self.meta["flops_not_counted"] = str(err)
                logger.warning("sharp-prune: no FLOPs in the statistics: %s", err)
                return
            row.prefill_flops, row.unpruned_prefill_flops = report.total, report.unpruned

    # ------------------------------------------------------------------ output
    def request_scope(self) -> _RequestScope:
        """Context for one `generate_until` call: marks requests, writes rows and the summary at the end."""
        return _RequestScope(self)

    def flush(self) -> None:
        """Append new rows to the JSONL file and rewrite the summary."""
        self._close_pending()
        self.samples_path.parent.mkdir(parents=True, exist_ok=True)
        with self.samples_path.open("a", encoding="utf-8") as fh:
            for row in self.rows[self._written :]:
                fh.write(json.dumps(asdict(row)) + "\n")
        self._written = len(self.rows)
        self.summary_path.write_text(json.dumps(self.summary(), indent=2) + "\n", encoding="utf-8")
        if self.world_size > 1:
            _barrier()  # every rank has written its files (every rank runs each generate_until call)
            if self.rank == 0:
                merge_logs(self.folder, self.run_id, self.model_id)

    def summary(self) -> dict[str, Any]:
        """Totals and means over the rows so far, overall and per task (token and FLOP figures over the
        requests with video)."""
        tasks = sorted({r.task for r in self.rows if r.task is not None})
        return {
            **self.meta,
            "config": self.handle.config.to_dict(),
            **_aggregate(self.rows),
            "per_task": {task: _aggregate([r for r in self.rows if r.task == task]) for task in tasks},
            "samples_file": self.samples_path.name,
        }

    def remove(self) -> None:
        """Detach the hooks (the rows stay)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def new_run_id() -> str:
    """A run's name in the log file names: a time stamp and the process id (rank 0's, on every rank)."""
    return f"{datetime.now().strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def merge_logs(folder: str | Path, run_id: str, model_id: str) -> dict[str, Any]:
    """Merge the per-rank files of one run into `<run>_<model>_samples.jsonl` and `<run>_<model>_summary.json`.

    Rows are sorted by task, split and doc id; the summary has the run's totals (the request count of the whole
    evaluation, not of one rank) and `ranks`, the rank files merged. Returns the summary.
    """
    folder = Path(folder)
    rank_files = sorted(folder.glob(f"{run_id}_{model_id}_rank*_samples.jsonl"))
    rows = [SampleStats(**json.loads(line)) for path in rank_files for line in path.read_text().splitlines() if line]
    rows.sort(key=lambda r: (str(r.task), str(r.split), str(r.doc_id)))
    first = sorted(folder.glob(f"{run_id}_{model_id}_rank*_summary.json"))
    meta = json.loads(first[0].read_text()) if first else {}
    tasks = sorted({r.task for r in rows if r.task is not None})
    summary = {
        **{k: v for k, v in meta.items() if k not in ("per_task", "samples_file") and k not in _aggregate([])},
        **_aggregate(rows),
        "per_task": {task: _aggregate([r for r in rows if r.task == task]) for task in tasks},
        "ranks": [path.name for path in rank_files],
        "samples_file": f"{run_id}_{model_id}_samples.jsonl",
    }
    (folder / summary["samples_file"]).write_text("".join(json.dumps(asdict(r)) + "\n" for r in rows), encoding="utf-8")
    (folder / f"{run_id}_{model_id}_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _aggregate(rows: list[SampleStats]) -> dict[str, Any]:
    ran = [r for r in rows if r.error is None]
    video = [r for r in ran if r.visual_tokens > 0]
    times = [r.prefill_s for r in ran if r.prefill_s is not None]
    flops = sum(r.prefill_flops for r in video)
    unpruned = sum(r.unpruned_prefill_flops for r in video)
    return {
        "requests": len(rows),
        "failed": len(rows) - len(ran),
        "warnings": sum(r.warning is not None for r in rows),
        "with_video": len(video),
        "mean_visual_tokens": statistics.fmean(r.visual_tokens for r in video) if video else None,
        "mean_kept_visual_tokens": statistics.fmean(r.kept_visual_tokens for r in video) if video else None,
        "mean_retained_fraction": statistics.fmean(r.retained_fraction for r in video) if video else None,
        "prefill_tflops": flops / 1e12,
        "unpruned_prefill_tflops": unpruned / 1e12,
        "flops_reduction": 1.0 - flops / unpruned if unpruned else None,
        "mean_prefill_s": statistics.fmean(times) if times else None,
        "median_prefill_s": statistics.median(times) if times else None,
    }


class _RequestScope:
    def __init__(self, stats: PrefillStats) -> None:
        self.stats = stats

    def __enter__(self) -> PrefillStats:
        self.stats._local.in_request = True
        self.stats._local.marked = False
        return self.stats

    def __exit__(self, *exc: object) -> None:
        self.stats._local.in_request = False
        self.stats.flush()


__all__ = ["PrefillStats", "SampleStats", "merge_logs", "new_run_id"]
