"""A model family is one entry: everything sharp-prune knows about it, as data.

An entry (`ModelAdapter`) says where the text decoder's layers are, how a forward call's video tokens and
frames are found (`locate`), the content-free frame PosC needs (`blank_frame`, through the model's own vision
tower), the vision tower's FLOPs, which checkpoints (`model_types`) and processor class `run` loads, which
lmms-eval wrapper it extends, and the tiny random configuration of its real class that the tests use. Every
other module asks the entry (through `sharp_prune.models`); none names a family. An adapter never changes
model code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputError, UnsupportedModelError
from ..hf_protocol import ModelCall
from ..steps.locate import VisualLayout

# (model, the top-level forward call, frame map declared on the handle) -> layout or None
LocateFn = Callable[[nn.Module, ModelCall, "torch.Tensor | None"], "VisualLayout | None"]
# (model, layout, blank token id or None) -> [P, D] input embeddings of one content-free frame
BlankFrameFn = Callable[[nn.Module, VisualLayout, "int | None"], torch.Tensor]
# (model config, frames, video_grid_thw or None) -> FLOPs of the vision tower (+ projector) on one video
VisionFlopsFn = Callable[[Any, int, "tuple[int, int, int] | None"], int]


@dataclass(frozen=True)
class LmmsWrapper:
    """The lmms-eval model a family runs behind, pruned (see `sharp_prune.integrations.lmms_eval`).

    Attributes:
        model_id: the `--model` name lmms-eval knows the pruned wrapper by.
        simple: "module:Class" of upstream's simple wrapper, or None (upstream has a chat wrapper only).
        chat: "module:Class" of upstream's chat wrapper, or None.
        default_pretrained: the checkpoint upstream loads by default.
    """

    model_id: str
    simple: str | None
    chat: str | None
    default_pretrained: str


@dataclass(frozen=True)
class TinyModel:
    """A tiny random-weight model of the family's real class, and inputs for it (tests, timing shapes).

    Attributes:
        build: (num_layers, attn_implementation, dtype, seed) -> the model, in eval mode.
        inputs: (model, prefix_lens, suffix_lens, video, padding_side, seed) -> a padded batch of
            text + video + text samples (see `sharp_prune.testing.tiny_inputs`); None: the caller declares
            its own (generic adapter).
    """

    build: Callable[[int, str, torch.dtype, int], nn.Module]
    inputs: Callable[..., dict[str, torch.Tensor]] | None = None


@dataclass(frozen=True)
class ModelAdapter:
    """How to prune one model family.

    Attributes:
        name: short name shown in records and errors.
        class_names: model classes this entry handles; the first is the one `run` loads checkpoints with.
        decoder_paths: attribute paths, tried in order, to the text decoder that owns `.layers`.
        locate: builds the `VisualLayout` of a forward call (None when it has no visual tokens).
        blank_frame: input embeddings of one content-free (black) frame, for PosC's prior.
        blank_frame_needs_grid: the blank frame is built at the layout's frame size, so every video of a batch
            must have the same one (checked before layer 0).
        grid_hint: said after the refusal when the frame size is unknown (the family's own case).
        blank_deepstack: [levels, P, D] DeepStack features of the same black frame (Qwen3-VL), which the blank
            pass adds where the real pass adds the video's; None for a family without DeepStack.
        model_types: `config.model_type` of this family's checkpoints (`run`, the lmms-eval wrapper).
        processor_class: the transformers processor class of its checkpoints.
        video_processors: () -> torch-only video processor classes, for checkpoints whose transformers video
            processor cannot run without torchvision (matched by class name; see `sharp_prune.models.processors`).
        vision_flops: the vision tower's FLOPs on one video (in-LLM pruning leaves them as they are).
        lmms: the lmms-eval wrapper it extends, or None.
        tiny: the tiny random configuration of its real class, or None.
    """

    name: str
    class_names: tuple[str, ...]
    decoder_paths: tuple[str, ...]
    locate: LocateFn
    blank_frame: BlankFrameFn | None = None
    blank_frame_needs_grid: bool = False
    grid_hint: str = ""
    blank_deepstack: BlankFrameFn | None = None
    model_types: tuple[str, ...] = ()
    processor_class: str | None = None
    video_processors: Callable[[], tuple[type, ...]] | None = None
    vision_flops: VisionFlopsFn | None = None
    lmms: LmmsWrapper | None = None
    tiny: TinyModel | None = None

    def decoder(self, model: nn.Module) -> nn.Module:
        """The text decoder module (has `.layers` and `.config`)."""
        for path in self.decoder_paths:
            module: Any = model
            for part in filter(None, path.split(".")):
                module = getattr(module, part, None)
                if module is None:
                    break
            if module is not None and isinstance(getattr(module, "layers", None), nn.ModuleList):
                return module
        raise UnsupportedModelError(
            f"{type(model).__name__}: found no decoder with `.layers` at {list(self.decoder_paths)}."
        )

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.decoder(model).layers


def input_ids_or_raise(adapter_name: str, call: ModelCall) -> torch.Tensor:
    """VLM adapters find video tokens by their token id, so they need `input_ids`."""
    input_ids = call.input_ids
    if input_ids is None:
        raise InputError(
            f"{adapter_name}: sharp-prune locates video tokens from `input_ids`; call the model with input_ids "
            "(not inputs_embeds) while pruning is applied."
        )
    return input_ids


def mixed_frame_sizes(adapter_name: str, hint: str = "") -> str:
    """Why a batch whose frame size is unknown or differs between videos cannot get PosC's black frame, and what
    to do (`hint`: the family's own case, `ModelAdapter.grid_hint`)."""
    return (
        f"{adapter_name}: the videos of this batch have different frame sizes (or the call does not say the size), "
        "and PosC's black frame is built at one known size; resize the videos to one size (e.g. the processor's "
        f"min_pixels / max_pixels), run them one at a time, or prune without PosC (posc=False).{hint}"
    )


def black_pixels(mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Normalised value of a black pixel per channel: (0 - mean) / std."""
    return -torch.tensor(mean) / torch.tensor(std)
