"""What the pruned lmms-eval models add to the upstream wrappers: `SharpPruneMixin`.

Parse the pruning config out of the model args and check it against config.json, let the upstream wrapper
load, apply `sharp_prune.apply`, and collect a statistics row per request. The model classes are built from
the model families' entries (`wrappers.py`).

Upstream's `generate_until` runs one request at a time; a document whose video cannot be read (a missing or
broken file) raises `VideoError`, which fails it alone: the error goes to lmms-eval's log and to its
statistics row, the document is answered "", and the run goes on.
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
from ...errors import InputError, ModelLoadError, UnsupportedModelError, VideoError
from .model_args import split_model_args
from .stats import PrefillStats, new_run_id

logger = logging.getLogger(__name__)


def _torchvision_works() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or a build that does not match torch (ImportError / RuntimeError)
        return False
    return True


class _TorchFreeAutoProcessor:
    """Stands in for `AutoProcessor` in an upstream module while it loads, on machines without torchvision:
    transformers cannot build any video processor there, sharp-prune's torch-only ones can (LLaVA-OneVision,
    Qwen2-VL, Qwen2.5-VL)."""

    @staticmethod
    def from_pretrained(source: Any, *args: Any, **kwargs: Any) -> Any:
        from ...models.loading import load_processor

        return load_processor(source, **kwargs)


def _quiet_tqdm(*args: Any, **kwargs: Any) -> Any:
    """Upstream's progress bar, silenced: the wrapper runs upstream one request at a time and shows its own."""
    from tqdm import tqdm

    return tqdm(*args, **{**kwargs, "disable": True})


@contextlib.contextmanager
def _patched(modules: list[str], replacements: dict[str, Any]) -> Iterator[None]:
    """`replacements` set on each module (only where it has that name) for the block; restored after."""
    saved = []
    for module in (sys.modules[name] for name in dict.fromkeys(modules)):
        for name, value in replacements.items():
            if hasattr(module, name):
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in reversed(saved):
            setattr(module, name, value)


def _without_torchvision() -> dict[str, Any]:
    """Where torchvision does not load, upstream's processor loading and qwen-vl-utils' video reading are
    replaced by sharp-prune's torch-only ones; elsewhere nothing is."""
    if _torchvision_works():
        return {}
    from .qwen_vision_info import process_vision_info

    return {"AutoProcessor": _TorchFreeAutoProcessor, "process_vision_info": process_vision_info}


def _upstream_modules(cls: type) -> list[str]:
    return [c.__module__ for c in cls.__mro__ if c.__module__.startswith("lmms_eval.models.")]


def _precheck(pretrained: str, model_types: tuple[str, ...], layer: int) -> None:
    """Checks that need only the checkpoint's config.json, before the weights load."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(pretrained)
    except Exception as err:
        raise ModelLoadError(f"cannot read the config of {pretrained!r}: {err}") from err
    model_type = getattr(config, "model_type", None)
    if model_type not in model_types:
        from ...models import lmms_wrappers

        wrappers = ", ".join(
            f"{model_id}: {'/'.join(family.model_types)}" for model_id, (family, _) in lmms_wrappers().items()
        )
        raise UnsupportedModelError(
            f"{pretrained!r} is a {model_type!r} checkpoint; this model wrapper runs {' or '.join(model_types)} "
            f"checkpoints (the pruned wrappers and their checkpoints: {wrappers})."
        )
    text = getattr(config, "text_config", config)
    num_layers = getattr(text, "num_hidden_layers", None)
    if num_layers is not None:
        check_layer(layer, num_layers, repr(pretrained))


def _check_videos(visuals: Any) -> None:
    """Every video path among a document's visuals opens as a video (PyAV), before upstream reads it: a missing
    or broken file raises `VideoError` here, and the document fails alone (upstream Qwen wrappers would drop
    the video silently, or stop the whole run)."""
    from ...video import probe_video

    for visual in visuals if isinstance(visuals, (list, tuple)) else [visuals]:
        if isinstance(visual, (list, tuple)):
            _check_videos(visual)
        elif isinstance(visual, (str, os.PathLike)):
            probe_video(visual)


class _VideoFailure:
    """A video that could not be read, carried to the processor call, which raises its error: upstream
    `llava_hf`'s own try around `load_video` would answer the document twice."""

    def __init__(self, message: str) -> None:
        self.message = message


class _EvalProcessor:
    """The upstream processor, with two fixes for lmms-eval's LLaVA-OneVision wrappers under transformers 5.

    - ``images=[]`` (sent with video-only requests by the chat wrapper) becomes ``images=None``: transformers 5's
      LLaVA-OneVision image processor reads ``images[0]``.
    - Video files (the chat wrapper passes paths) are decoded here with PyAV, ``num_frames`` frames evenly over
      the video as the simple wrapper samples them, instead of by the processor, which decodes every frame and
      needs torchcodec.
    """

    def __init__(self, processor: Any, read: Callable[[Any], Any]) -> None:
        self._processor = processor
        self._read = read

    def __call__(self, *args: Any, images: Any = None, videos: Any = None, **kwargs: Any) -> Any:
        if isinstance(images, (list, tuple)) and len(images) == 0:
            images = None
        if isinstance(videos, (list, tuple)):
            videos = [self._read(v) if isinstance(v, (str, os.PathLike)) else v for v in videos] or None
            failed = [v for v in videos or () if isinstance(v, _VideoFailure)]
            if failed:  # outside upstream's try blocks: `generate_until` fails this document alone
                raise VideoError(failed[0].message)
        return self._processor(*args, images=images, videos=videos, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)


class _SamplingEvalProcessor(_EvalProcessor):
    """The upstream processor, for wrappers that hand it video files and let it sample the frames (lmms-eval's
    `internvl_hf`: ``do_sample_frames=True`` with ``num_frames`` / ``fps``; `gemma4`: the same in ``videos_kwargs``
    of `apply_chat_template`, which collects the files from the messages). transformers 5 decodes a file with
    torchcodec only (torchvision's video decoding is gone); here each file is decoded with PyAV at the frames the
    checkpoint's own video processor samples (its `sample_frames`, from the file's frame count and rate), and the
    processor gets those frames with ``do_sample_frames=False`` and their metadata (frame indices, fps: Gemma 4
    writes each frame's timestamp from them): the same frames, without torchcodec."""

    def __call__(self, *args: Any, images: Any = None, videos: Any = None, **kwargs: Any) -> Any:
        options = kwargs  # the video options go where the caller put them: `apply_chat_template` nests them
        if isinstance(kwargs.get("videos_kwargs"), dict):
            options = kwargs["videos_kwargs"] = dict(kwargs["videos_kwargs"])
        if isinstance(videos, (list, tuple)) and any(_is_path(v) for v in _leaves(videos)):
            sample = {key: options.get(key) for key in ("num_frames", "fps")}
            metadata: list[Any] = []

            def read(video: Any) -> Any:
                if isinstance(video, (list, tuple)):  # one sample's videos (`apply_chat_template`), or frames
                    return [read(v) for v in video]
                if not _is_path(video):
                    metadata.append(None)
                    return video
                clip = self._read(video, **sample)
                if isinstance(clip, _VideoFailure):  # `generate_until` fails this document alone
                    raise VideoError(clip.message)
                metadata.append(clip.metadata())
                return clip.frames

            videos = [read(v) for v in videos]
            options["do_sample_frames"] = False
            if all(m is not None for m in metadata) and "video_metadata" not in options:
                options["video_metadata"] = metadata
        return super().__call__(*args, images=images, videos=videos, **kwargs)

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        """The processor's own, calling this wrapper (not the processor) for the inputs it builds, so the video
        files it collects from the messages are decoded here."""
        return type(self._processor).apply_chat_template(self, *args, **kwargs)


def _is_path(video: Any) -> bool:
    return isinstance(video, (str, os.PathLike))


def _leaves(videos: Any) -> Iterator[Any]:
    for video in videos:
        if isinstance(video, (list, tuple)):
            yield from _leaves(video)
        else:
            yield video


# Upstream wrappers whose processor gets video files and samples their frames itself (see `_SamplingEvalProcessor`).
_SAMPLING_PROCESSOR_WRAPPERS = ("internvl_hf", "gemma4")


def _place(upstream: type, rest: dict[str, Any]) -> None:
    """Where the model goes: a `device_map` without a `device` names the device too (upstream `llava_hf` would
    otherwise use "cuda"); upstream `llava_hf`'s default device_map="" is rejected by transformers 5's
    from_pretrained, so on one process, or on CPU, it names the device instead."""
    parameters = inspect.signature(upstream.__init__).parameters
    if "device_map" in rest and "device" not in rest and rest["device_map"] not in ("", "auto"):
        rest["device"] = str(rest["device_map"])
    if "device_map" not in parameters or "device_map" in rest or not upstream.__init__.__module__.endswith("llava_hf"):
        return
    from accelerate import PartialState

    device = str(rest.get("device", "cuda"))
    if PartialState().num_processes == 1 or device.startswith("cpu"):
        rest["device_map"] = device


def _distributed_run() -> tuple[int, int, str]:
    """(global rank, world size, run id): from the process group when there is one (the run id is rank 0's,
    sent to every rank), else from torchrun's RANK / WORLD_SIZE, else a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        run_id = [new_run_id()]
        dist.broadcast_object_list(run_id, src=0)
        return dist.get_rank(), dist.get_world_size(), run_id[0]
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    elastic = os.environ.get("TORCHELASTIC_RUN_ID")  # the same on every rank torchrun started
    return rank, world, f"torchrun-{elastic}" if world > 1 and elastic else new_run_id()


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
    _sharp_visual_arg: int = 2  # index of doc_to_visual in a simple request's args (chat: doc_to_messages)

    def __init__(self, **kwargs: Any) -> None:
        upstream = next(c for c in type(self).__mro__ if c.__module__.startswith("lmms_eval."))
        config, options, rest = split_model_args(kwargs, upstream=upstream)
        rest.setdefault("pretrained", self._sharp_default_pretrained)
        _place(upstream, rest)
        _precheck(str(rest["pretrained"]), self._sharp_model_types, config.layer)
        with _patched(_upstream_modules(type(self)), _without_torchvision()):
            super().__init__(**rest)
        if hasattr(self, "_image_processor"):
            self._image_processor = _EvalProcessor(self._image_processor, self._read_video)
        elif upstream.__module__.rsplit(".", 1)[-1] in _SAMPLING_PROCESSOR_WRAPPERS:
            self.processor = _SamplingEvalProcessor(self.processor, self._read_sampled_video)
        self.prune_config = config
        self.prune_handle = apply(self.model, config)
        try:
            lmms_version = importlib.metadata.version("lmms-eval")
        except importlib.metadata.PackageNotFoundError:  # a source checkout
            lmms_version = None
        rank, world_size, run_id = _distributed_run()
        self.prune_stats = PrefillStats(
            self.model,
            self.prune_handle,
            options.log_dir,
            self._sharp_model_id,
            rank=rank,
            world_size=world_size,
            run_id=run_id,
            timing=options.timing,
            meta={
                "model": self._sharp_model_id,
                "pretrained": str(rest["pretrained"]),
                "sharp_prune_version": __version__,
                "lmms_eval_version": lmms_version,
            },
        )
        logger.info("sharp-prune: %s; per-sample stats in %s", config, self.prune_stats.samples_path)

    def _read_video(self, video: Any) -> Any:
        """`max_frames_num` frames evenly over a video file (PyAV); a `_VideoFailure` when it cannot be read."""
        from ...video import probe_video, read_video

        wanted = int(getattr(self, "max_frames_num", 32))
        path = video[0] if isinstance(video, (list, tuple)) else video
        try:
            total = probe_video(path).total_frames
            if total < wanted:
                logger.warning(
                    "sharp-prune: %s has %d frames, fewer than max_frames_num=%d: all %d are used",
                    path,
                    total,
                    wanted,
                    total,
                )
                self.prune_stats.note(f"{total} frames, fewer than max_frames_num={wanted}")
            return read_video(path, min(wanted, total)).frames
        except VideoError as err:
            return _VideoFailure(str(err))

    def _read_sampled_video(self, video: Any, num_frames: int | None = None, fps: float | None = None) -> Any:
        """The frames of a video file the checkpoint's video processor would sample (`num_frames`, else `fps` a
        second), decoded with PyAV: a `VideoClip` (uint8 frames [F, H, W, 3], their indices, the video's rate), or a
        `_VideoFailure` when it cannot be read. A video with fewer frames than `num_frames` gives all of them, with
        a warning (transformers would refuse it)."""
        from transformers.video_utils import VideoMetadata

        from ...video import probe_video, read_video_at

        path = video[0] if isinstance(video, (list, tuple)) else video
        try:
            info = probe_video(path)
            total = info.total_frames
            if num_frames is not None and num_frames > total:
                logger.warning(
                    "sharp-prune: %s has %d frames, fewer than num_frames=%d: all %d are used",
                    path,
                    total,
                    num_frames,
                    total,
                )
                self.prune_stats.note(f"{total} frames, fewer than num_frames={num_frames}")
                num_frames = total
            metadata = VideoMetadata(
                total_num_frames=total, fps=info.fps, duration=info.duration_s, video_backend="pyav"
            )
            indices = self.processor.video_processor.sample_frames(metadata, num_frames=num_frames, fps=fps)
            return read_video_at(path, [int(i) for i in indices])
        except (VideoError, ValueError) as err:  # ValueError: the video processor cannot sample this video
            return _VideoFailure(str(err))

    def load_video(self, video_path: Any, max_frames_num: int) -> Any:
        """Upstream's own video loading (the simple wrappers), through PyAV: never raises (see `_VideoFailure`)."""
        return self._read_video(video_path)  # uint8 [F, H, W, 3], or a `_VideoFailure`

    def _tracked(self, request: Any) -> Any:
        """Tell the statistics which request runs next; returns a copy of `request` whose visuals callable checks
        the video files first (simple requests).

        The request is marked here, on the thread that runs the model, not when upstream reads the visuals:
        upstream `qwen3_vl` reads them on a worker thread (its `_preprocess_chunk` runs in a thread pool), and
        the statistics keep the running request per thread."""
        args = list(request.args)
        index = self._sharp_visual_arg if getattr(self, "is_simple", True) else 1
        original: Callable[..., Any] = args[index]
        doc_id, task, split = args[-3], args[-2], args[-1]
        padding = bool((getattr(request, "metadata", None) or {}).get("__padding_only__", False))
        self.prune_stats.begin(task, split, doc_id, padding=padding)

        def visuals(*a: Any, **k: Any) -> Any:
            result = original(*a, **k)
            if index == self._sharp_visual_arg:  # a simple request's visuals: paths or images
                _check_videos(result)
            return result

        args[index] = visuals
        return dataclasses.replace(request, arguments=tuple(args))

    def generate_until(self, requests: list[Any]) -> list[Any]:
        """Upstream's `generate_until`, one request at a time, with one statistics row per request; a document
        whose video cannot be read (`VideoError`), or whose input the engine refuses (`InputError`: Gemma 4's
        non-square frames under PosC, say), is answered "" and counted failed with its reason, and the run goes on.
        With batch_size > 1 upstream runs whole batches (one row per batch: upstream reads a batch's visuals
        through its first request, so rows cannot name their documents)."""
        patches = _without_torchvision()
        modules = _upstream_modules(type(self))
        if int(getattr(self, "batch_size", 1)) > 1:
            with self.prune_stats.request_scope(), _patched(modules, patches):
                return super().generate_until(requests)
        from tqdm import tqdm

        answers: list[Any] = []
        quiet = {**patches, "tqdm": _quiet_tqdm}
        with self.prune_stats.request_scope(), _patched(modules, quiet):
            for request in tqdm(requests, disable=int(getattr(self, "rank", 0)) != 0, desc="Model Responding"):
                try:
                    answers.extend(super().generate_until([self._tracked(request)]))
                except InputError as err:  # its video cannot be read, or the engine refuses its input (VideoError too)
                    logger.error("sharp-prune: %s", err)
                    self.prune_stats.fail(str(err))
                    answers.append("")
        return answers

    def loglikelihood(self, requests: list[Any]) -> list[Any]:
        """Not available pruned: scoring a continuation needs logits at every position, and layers >= K
        only see the kept tokens. Run loglikelihood tasks with the upstream wrapper."""
        raise NotImplementedError(
            f"{self._sharp_model_id} runs generate_until tasks only: loglikelihood scoring needs logits at every "
            "position, which pruning inside the LLM does not keep; use the upstream model for those tasks."
        )


__all__ = ["SharpPruneMixin"]
