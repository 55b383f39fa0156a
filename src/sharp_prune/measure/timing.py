"""Prefill time: one stopwatch for the whole library (run, speed, bench, the lmms-eval statistics).

On a GPU it records CUDA events around the work and synchronises once, when read (no host sync on the way
in, so timing does not slow the timed work down); elsewhere it reads `time.perf_counter`. `time_call` pauses
Python's cyclic garbage collector for the call (as `timeit` does): tensors are freed by reference counting.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


class Stopwatch:
    """Times one piece of work on `device`: ``watch = Stopwatch(device); ...; seconds = watch.stop()``.

    `pause_gc` pauses the cyclic garbage collector until `stop` (only where `stop` is sure to run).
    """

    def __init__(self, device: torch.device | str = "cpu", pause_gc: bool = False) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._gc = pause_gc and gc.isenabled()
        if self._gc:
            gc.disable()
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._started = time.perf_counter()

    def stop(self) -> float:
        """Seconds since the stopwatch was made (waits for the GPU's queued work)."""
        try:
            if self.cuda:
                self._end.record()
                self._end.synchronize()
                return self._start.elapsed_time(self._end) / 1000.0
            return time.perf_counter() - self._started
        finally:
            if self._gc:
                gc.enable()


def time_call(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[float, Any]:
    """(seconds, result) of one call of `fn`."""
    watch = Stopwatch(device, pause_gc=True)
    try:
        result = fn()
    finally:
        seconds = watch.stop()
    return seconds, result


def median_seconds(fn: Callable[[], Any], device: torch.device | str = "cpu", repeats: int = 3) -> float:
    """Median time of `repeats` calls of `fn`, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        seconds, result = time_call(fn, device)
        del result
        times.append(seconds)
    return statistics.median(times)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (where its forward runs)."""
    return next(model.parameters()).device
