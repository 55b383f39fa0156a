"""Model adapters are data: where the decoder layers are and how visual tokens are found.

An adapter never changes model code; the engine reads it to place hooks and to build a
`VisualLayout` from the inputs of each forward call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputError, UnsupportedModelError
from ..hf_protocol import ModelCall
from ..layout import VisualLayout

# (model, the top-level forward call, frame map declared on the handle) -> layout or None
LocateFn = Callable[[nn.Module, ModelCall, "torch.Tensor | None"], "VisualLayout | None"]
# (model, layout, blank token id or None) -> [P, D] input embeddings of one content-free frame
BlankFrameFn = Callable[[nn.Module, VisualLayout, "int | None"], torch.Tensor]


@dataclass(frozen=True)
class ModelAdapter:
    """How to prune one model family.

    Attributes:
        name: short name shown in records and errors.
        class_names: model class names this adapter handles (the class itself or its `*Model` base).
        decoder_paths: attribute paths, tried in order, to the text decoder that owns `.layers`.
        locate: builds the `VisualLayout` of a forward call (None when it has no visual tokens).
        position_layout: "1d" (plain RoPE) or "mrope" (3-D M-RoPE, positions [3, b, L]).
        needs_declared_frames: the caller declares visual positions per call (generic adapter).
        blank_frame: input embeddings of one content-free (black) frame, for PosC's prior.
        blank_frame_needs_grid: the blank frame is built at the layout's frame size, so every video of a batch
            must have the same one (checked before layer 0).
    """

    name: str
    class_names: tuple[str, ...]
    decoder_paths: tuple[str, ...]
    locate: LocateFn
    blank_frame: BlankFrameFn | None = None
    position_layout: str = "1d"
    needs_declared_frames: bool = False
    blank_frame_needs_grid: bool = False

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


def mixed_frame_sizes(adapter_name: str) -> str:
    """Why a batch whose videos differ in frame size cannot get PosC's black frame, and what to do."""
    return (
        f"{adapter_name}: the videos of this batch have different frame sizes, and PosC's black frame is built at "
        "one size; resize the videos to one size (e.g. the processor's min_pixels / max_pixels), run them one at a "
        "time, or prune without PosC (posc=False)."
    )


def black_pixels(mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Normalised value of a black pixel per channel: (0 - mean) / std."""
    return -torch.tensor(mean) / torch.tensor(std)
