"""Count the host-device synchronisations that sharp-prune's own code asks for during a forward.

On a GPU, every `.item()`, `.tolist()`, `bool(tensor)`, `nonzero()` ... makes the host wait for the device
to finish everything queued so far; a pruned prefill that does it in a loop stalls the device for each.
On a CPU the same calls cost nothing, so a rule like "no syncs on the pruning path" would go untested
without a GPU. `count_host_syncs` catches every such call through torch's function-override hook
(`TorchFunctionMode`, which sees Tensor methods and torch functions alike, on any device) and keeps those
whose caller is a file of this package: the calls transformers makes itself happen unpruned too.

    with count_host_syncs() as syncs:
        model(**inputs)
    print(syncs.sites())   # {"steps/locate.py:from_frame_map": 1, ...}
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_PACKAGE = Path(__file__).resolve().parents[1]
_THIS = Path(__file__).resolve()
_TORCH = Path(torch.__file__).resolve().parent

# Calls whose result the host must read, or whose output size depends on tensor values (on CUDA they wait for
# the device). Tensor methods and torch functions alike; dunder methods are what bool()/int()/float() call.
_ALWAYS = frozenset(
    {
        "item",
        "tolist",
        "__bool__",
        "__int__",
        "__float__",
        "__index__",
        "numpy",
        "nonzero",
        "argwhere",
        "masked_select",
        "unique",
        "unique_consecutive",
        "bincount",
        "equal",
        "allclose",
        "cpu",
    }
)


def _is_mask(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dtype == torch.bool
    if isinstance(value, (tuple, list)):
        return any(_is_mask(v) for v in value)
    return False


def _is_sync(func: Any, args: tuple, kwargs: dict) -> str | None:
    """The name of a synchronising call, or None."""
    name = getattr(func, "__name__", "")
    if name in _ALWAYS:
        return name
    if name in ("__getitem__", "__setitem__", "index_put", "index_put_") and len(args) > 1 and _is_mask(args[1]):
        return f"{name}[bool mask]"  # boolean indexing is nonzero() underneath
    if name == "where" and len(args) == 1 and not kwargs:
        return "where(cond)"  # the one-argument form is nonzero()
    if name == "repeat_interleave" and kwargs.get("output_size") is None:
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        if isinstance(repeats, torch.Tensor):
            return "repeat_interleave(tensor repeats)"
    if name == "to" and args and isinstance(args[0], torch.Tensor):
        source_on_device = args[0].device.type != "cpu"
        if any(_names_cpu(a, source_on_device) for a in (*args[1:], *kwargs.values())):
            return "to(cpu)"
    return None


def _names_cpu(value: Any, source_on_device: bool) -> bool:
    """A copy to the host: "cpu" spelled out, or a CPU device object while the tensor is elsewhere (a tensor
    moved to `other.device` stays where it is when both are on the GPU, so on a CPU-only run it is not counted)."""
    if isinstance(value, torch.device):
        return value.type == "cpu" and source_on_device
    return isinstance(value, str) and value.startswith("cpu")


@dataclass
class HostSyncs:
    """The synchronising calls seen: one (site, call) pair per call, site as `path/in/package.py:function`."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    def sites(self) -> Counter:
        """How many synchronising calls each site made."""
        return Counter(site for site, _ in self.calls)

    def __len__(self) -> int:
        return len(self.calls)


def _caller_site() -> str | None:
    """`relative/path.py:function` of the first frame outside torch and this module, when it is in the package."""
    frame = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path == _THIS or path.is_relative_to(_TORCH):
            frame = frame.f_back
            continue
        if path.is_relative_to(_PACKAGE):
            return f"{path.relative_to(_PACKAGE).as_posix()}:{frame.f_code.co_name}"
        return None
    return None


class _Counter(TorchFunctionMode):
    def __init__(self, record: HostSyncs) -> None:
        super().__init__()
        self.record = record

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = _is_sync(func, args, kwargs)
        if name is not None:
            site = _caller_site()
            if site is not None:
                self.record.calls.append((site, name))
        return func(*args, **kwargs)


class count_host_syncs:  # noqa: N801 - used as a context manager, like torch's modes
    """Context manager: collect the synchronising calls sharp-prune's code makes inside it (`HostSyncs`)."""

    def __init__(self) -> None:
        self.record = HostSyncs()
        self._mode = _Counter(self.record)

    def __enter__(self) -> HostSyncs:
        self._mode.__enter__()
        return self.record

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)


# The host syncs a pruned prefill makes, by site, with why each one is there. Everything else on the pruning
# path (scores, calibration, dedup rounds, picks, merge, registers' states, the keep plan, slicing, the record)
# stays on the device. `tests/test_host_syncs.py` holds every method's forward to this list.
PRUNING_PATH_SYNCS: dict[str, str] = {
    "steps/locate.py:from_frame_map": "once: the visual token count N, the frame count and the frame-order check; "
    "N sets every shape after it (budget, keep plan)",
    "steps/locate.py:locate": "once: padding inside the video, whether the prompt ends in a video token, and the "
    "text rows after the video (the query rows' shape)",
    "models/gemma4.py:_frame_grid": "once (Gemma 4): each frame's token count, the frames, and with "
    "`video_position_ids` each frame's patch rows and columns, to find the frame size and check it",
    "models/glm4v.py:_grid_from_grids": "once (GLM-4V): `video_grid_thw` and each sample's video tokens, frames "
    "and frame sizes, to check the frames against the grids",
    "models/glm4v.py:_grid_from_positions": "under `generate` only (GLM-4V, no grid): the frame size, from the first "
    "frame's M-RoPE positions",
    "models/llava_onevision.py:locate_llava_onevision": "once (LLaVA-OneVision): video tokens per sample, to cut "
    "them into frames",
    "models/internvl.py:locate_internvl": "once (InternVL): whether a run of image-context tokens is not a whole "
    "number of tiles (it would put two tiles in one frame)",
    "models/qwen_vl.py:_frames_from_grids": "once (Qwen-VL): `video_grid_thw` and the video tokens per sample",
    "models/video_llama_3.py:_check_frames_against_grids": "once (VideoLLaMA3, when `video_grid_thw` is passed): "
    "the frames the grids describe against the runs of video tokens",
    "models/qwen_vl.py:_frames_from_positions": "under `generate` only (Qwen-VL, no grid): frames from M-RoPE "
    "positions, per sample",
    "methods/sharp/segm.py:plan_segments": "once (ShaRP): segment sizes and the text around them, the shapes of "
    "the attention blocks of layers < K",
    "methods/sharp/regd.py:dedup_greedy": "per sample, once per block of 256 candidates visited (ShaRP RegD; a "
    "block whose duplicate chains are long needs another check every 4 rounds): the walk is decided and how many "
    "it accepted (the walk stops at its budget)",
    "methods/diversity.py:farthest_point_sampling": "per sample, once per block of up to 128 picks (RegD "
    "replenishment, divprune): how many picks of the block stood (a pick that left the block ends it early)",
    "methods/sharp/regd.py:segment_registers": "per sample, once (ShaRP RegD; again after a shortfall is picked): "
    "which segments still have dropped tokens decides how many registers there are",
    "methods/uniform.py:frame_sizes": "once (uniform, feather): the frame sizes, from which the even stride is "
    "worked out on the host",
    "methods/sharp/posc.py:layout_key": "once (ShaRP with `posc_prior='cached'`): the cache key is hashed on the host",
}
