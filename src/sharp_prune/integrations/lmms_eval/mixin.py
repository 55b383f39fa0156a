"""What the pruned lmms-eval models add to the upstream wrappers: `SharpPruneMixin`.

Parse the pruning config out of the model args and check it against config.json, let the upstream wrapper
load, apply `sharp_prune.apply`, and collect a statistics row per request. The model classes live in one
module per upstream wrapper, so that asking for one does not import the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ... import __version__
from ...config import check_layer
from ...engine.handle import apply
from ...errors import ModelLoadError, UnsupportedModelError
from .model_args import split_model_args
from .stats import PrefillStats

logger = logging.getLogger(__name__)


def _torchvision_works() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or a build that does not match torch (ImportError / RuntimeError)
        return False
    return True


class _TorchFreeAutoProcessor:
    """Stands in for `AutoProcessor` in an upstream module while it loads, on machines without torchvision:
    transformers cannot build any video processor there, sharp-prune's torch-only one can (LLaVA-OneVision)."""

    @staticmethod
    def from_pretrained(source: Any, *args: Any, **kwargs: Any) -> Any:
        from ...models.loading import load_processor

        return load_processor(source)


@contextlib.contextmanager
def _processor_without_torchvision(module_name: str) -> Iterator[None]:
    """Where torchvision works, nothing changes; else the upstream module loads the torch-only processor."""
    module = sys.modules[module_name]
    if _torchvision_works() or not hasattr(module, "AutoProcessor"):
        yield
        return
    original = module.AutoProcessor
    module.AutoProcessor = _TorchFreeAutoProcessor
    try:
        yield
    finally:
        module.AutoProcessor = original


def _precheck(pretrained: str, model_types: tuple[str, ...], layer: int, needs_torchvision: bool) -> None:
    """Checks that need only the checkpoint's config.json, before the weights load."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(pretrained)
    except Exception as err:
        raise ModelLoadError(f"cannot read the config of {pretrained!r}: {err}") from err
    model_type = getattr(config, "model_type", None)
    if model_type not in model_types:
        raise UnsupportedModelError(
            f"{pretrained!r} is a {model_type!r} checkpoint; this model wrapper runs {' or '.join(model_types)} "
            "checkpoints (sharp_llava_onevision: LLaVA-OneVision, sharp_qwen2_vl: Qwen2-VL, "
            "sharp_qwen2_5_vl: Qwen2.5-VL)."
        )
    text = getattr(config, "text_config", config)
    num_layers = getattr(text, "num_hidden_layers", None)
    if num_layers is not None:
        check_layer(layer, num_layers, repr(pretrained))
    if needs_torchvision and not _torchvision_works():
        raise ModelLoadError(
            f"{model_type}'s processor and qwen-vl-utils need torchvision, which does not import here; install "
            "the torchvision build that matches your torch (e.g. `pip install torchvision` next to a CUDA torch)."
        )


class _EvalProcessor:
    """The upstream processor, with two fixes for lmms-eval's LLaVA-OneVision wrappers under transformers 5.

    - ``images=[]`` (sent with video-only requests by the chat wrapper) becomes ``images=None``: transformers 5's
      LLaVA-OneVision image processor reads ``images[0]``.
    - Video files (the chat wrapper passes paths) are decoded here with PyAV, ``num_frames`` frames evenly over
      the video as the simple wrapper samples them, instead of by the processor, which decodes every frame and
      needs torchcodec.
    """

    def __init__(self, processor: Any, num_frames: int) -> None:
        self._processor = processor
        self._num_frames = num_frames

    def _frames(self, video: Any) -> Any:
        if not isinstance(video, (str, os.PathLike)):
            return video
        from ...video import probe_video, read_video

        total = probe_video(video).total_frames
        return read_video(video, min(self._num_frames, total)).frames

    def __call__(self, *args: Any, images: Any = None, videos: Any = None, **kwargs: Any) -> Any:
        if isinstance(images, (list, tuple)) and len(images) == 0:
            images = None
        if isinstance(videos, (list, tuple)):
            videos = [self._frames(v) for v in videos] or None
        return self._processor(*args, images=images, videos=videos, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)


class SharpPruneMixin:
    """Shared by the pruned wrappers: parse the pruning args, load upstream, apply, collect statistics.

    Attributes set after loading:
        prune_config: the `PruneConfig` in use.
        prune_handle: the `PruneHandle` on the model (``prune_handle.last`` is the latest prefill's record).
        prune_stats: the `PrefillStats` collector (rows, summary, file paths).
    """

    _sharp_model_id: str
    _sharp_model_types: tuple[str, ...]
    _sharp_default_pretrained: str
    _sharp_needs_torchvision: bool = False
    _sharp_visual_arg: int = 2  # index of doc_to_visual in a simple request's args (chat: doc_to_messages)

    def __init__(self, **kwargs: Any) -> None:
        upstream = next(c for c in type(self).__mro__ if c.__module__.startswith("lmms_eval."))
        config, options, rest = split_model_args(kwargs, upstream=upstream)
        rest.setdefault("pretrained", self._sharp_default_pretrained)
        if "device_map" in inspect.signature(upstream.__init__).parameters and "device_map" not in rest:
            # llava_hf's default device_map="" means "one device" to it but is rejected by transformers 5's
            # from_pretrained; on one process, name the device instead (data parallel sets its own).
            from accelerate import PartialState

            if PartialState().num_processes == 1 and upstream.__init__.__module__.endswith("llava_hf"):
                rest["device_map"] = str(rest.get("device", "cuda"))
        _precheck(str(rest["pretrained"]), self._sharp_model_types, config.layer, self._sharp_needs_torchvision)
        with _processor_without_torchvision(upstream.__init__.__module__):
            super().__init__(**rest)
        if hasattr(self, "_image_processor"):
            self._image_processor = _EvalProcessor(self._image_processor, int(getattr(self, "max_frames_num", 32)))
        self.prune_config = config
        self.prune_handle = apply(self.model, config)
        try:
            lmms_version = importlib.metadata.version("lmms-eval")
        except importlib.metadata.PackageNotFoundError:  # a source checkout
            lmms_version = None
        self.prune_stats = PrefillStats(
            self.model,
            self.prune_handle,
            options.log_dir,
            self._sharp_model_id,
            rank=int(getattr(self, "rank", 0)),
            timing=options.timing,
            meta={
                "model": self._sharp_model_id,
                "pretrained": str(rest["pretrained"]),
                "sharp_prune_version": __version__,
                "lmms_eval_version": lmms_version,
            },
        )
        logger.info("sharp-prune: %s; per-sample stats in %s", config, self.prune_stats.samples_path)

    def _tracked(self, request: Any) -> Any:
        """A copy of `request` whose visuals callable first tells the statistics which request runs."""
        args = list(request.args)
        index = self._sharp_visual_arg if getattr(self, "is_simple", True) else 1
        original: Callable[..., Any] = args[index]
        doc_id, task, split = args[-3], args[-2], args[-1]
        stats = self.prune_stats

        def visuals(*a: Any, **k: Any) -> Any:
            stats.begin(task, split, doc_id)
            return original(*a, **k)

        args[index] = visuals
        return dataclasses.replace(request, arguments=tuple(args))

    def generate_until(self, requests: list[Any]) -> list[Any]:
        """Upstream's `generate_until`, with one statistics row per request (per batch when batch_size > 1:
        upstream reads a batch's visuals through its first request, so rows cannot name their docs)."""
        if int(getattr(self, "batch_size", 1)) > 1:
            with self.prune_stats.request_scope():
                return super().generate_until(requests)
        with self.prune_stats.request_scope():
            return super().generate_until([self._tracked(r) for r in requests])

    def loglikelihood(self, requests: list[Any]) -> list[Any]:
        """Not available pruned: scoring a continuation needs logits at every position, and layers >= K
        only see the kept tokens. Run loglikelihood tasks with the upstream wrapper."""
        raise NotImplementedError(
            f"{self._sharp_model_id} runs generate_until tasks only: loglikelihood scoring needs logits at every "
            "position, which pruning inside the LLM does not keep; use the upstream model for those tasks."
        )


__all__ = ["SharpPruneMixin"]
