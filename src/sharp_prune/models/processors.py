"""Video processors without torchvision.

In transformers 5.23 every video processor (`BaseVideoProcessor`) is built on the
torchvision backend: `AutoProcessor.from_pretrained` fails for any video LLM when torchvision is missing,
and so does constructing a processor by hand, because `ProcessorMixin` checks its `video_processor` against
`VideoProcessorMixin`, which transformers only exports when torchvision is installed. There is no PIL video
processor (image processors have `*ImageProcessorPil`; `AutoVideoProcessor.register` accepts other backends
but none ships). When torchvision is missing, `load_processor` therefore builds the checkpoint's own
processor class with its own video processor class, changed in two places only: the torchvision kernels of
the video processor (RGB conversion, resize, normalise, centre crop) are replaced by torch ops (resize:
`torch.nn.functional.interpolate`, antialiased, which is the kernel torchvision's tensor resize calls), and
the processor accepts that video processor. Everything else (chat template, token expansion, sizes) is the
checkpoint's processor code. This works for video processors that keep the base `resize` (LLaVA-OneVision,
LLaVA-NeXT-Video). A video processor module that imports torchvision at the top needs a port of its own, named
by the family's entry (`ModelAdapter.video_processors`): Qwen2-VL / Qwen2.5-VL (`qwen_video_processing`),
Qwen3-VL / Qwen3.5 (`qwen3_video_processing`), VideoLLaMA3 (`video_llama_3_video_processing`), GLM-4.1V /
GLM-4.6V, InternVL and Gemma 4 (in their entries). Without one the checkpoint needs torchvision installed, and a
clear `ModelLoadError` says so. The
processor's other parts load with their Auto classes: the tokenizer, the image processor (its PIL backend), and an
audio feature extractor (Gemma 4's), which needs no torchvision.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ModelLoadError


def processor_without_torchvision(
    source: str,
    config: Any,
    default_processor: str | None = None,
    video_processors: tuple[type, ...] = (),
    **kwargs: Any,
) -> Any:
    """The checkpoint's processor class, built with a torch-only video processor (no torchvision).

    Args:
        source: the checkpoint folder or hub id.
        config: its config (for `model_type`).
        default_processor: the processor class when the checkpoint names none.
        video_processors: torch-only video processor classes of the family, used when one has the name of the
            checkpoint's video processor.
        **kwargs: options for the image and video processors, as `AutoProcessor.from_pretrained` takes them
            (e.g. Qwen-VL's ``min_pixels`` / ``max_pixels``).
    """
    import transformers
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer
    from transformers.processing_utils import ProcessorMixin
    from transformers.video_processing_utils import VideoProcessorMixin

    processor_dict, _ = ProcessorMixin.get_processor_dict(source)
    model_type = getattr(config, "model_type", None)
    name = processor_dict.get("processor_class") or default_processor
    if name is None or not hasattr(transformers, name):
        raise ModelLoadError(f"{source} names no processor class this transformers knows ({name!r}).")
    processor_cls = getattr(transformers, name)
    args = []
    for attribute in processor_cls.get_attributes():
        if attribute == "tokenizer":
            args.append(AutoTokenizer.from_pretrained(source))
        elif attribute == "image_processor":
            args.append(AutoImageProcessor.from_pretrained(source, **kwargs))  # falls back to the PIL backend itself
        elif attribute == "video_processor":
            video_dict = processor_dict.get("video_processor")
            if video_dict is None:
                video_dict, _ = VideoProcessorMixin.get_video_processor_dict(source)
            video_cls = _torch_video_processor(video_dict, model_type, video_processors)
            options = {k: v for k, v in kwargs.items() if k in video_cls.valid_kwargs.__annotations__}
            args.append(video_cls.from_dict({**video_dict, **options}))
        elif attribute == "feature_extractor":  # an audio feature extractor (Gemma 4's): needs no torchvision
            args.append(AutoFeatureExtractor.from_pretrained(source))
        else:
            raise ModelLoadError(f"{name} needs a {attribute}, which sharp-prune cannot load without torchvision.")
    return accepting_processor_class(processor_cls).from_args_and_dict(args, processor_dict)


def _torch_video_processor(video_dict: dict[str, Any], model_type: str | None, replacements: tuple[type, ...]) -> type:
    """The family's torch-only class of that name, else the checkpoint's class with torch ops swapped in."""
    name = video_dict.get("video_processor_type")
    if name is None and video_dict.get("image_processor_type"):
        name = video_dict["image_processor_type"].replace("ImageProcessorPil", "VideoProcessor")
        name = name.replace("ImageProcessor", "VideoProcessor")
    if name is None:
        raise ModelLoadError("the checkpoint's processor config names no video processor class.")
    for replacement in replacements:
        if replacement.__name__ == name:
            return replacement
    return torch_video_processor_class(_video_processor_base(name, model_type))


def _video_processor_base(name: str, model_type: str | None) -> type:
    if model_type is None:
        raise ModelLoadError("the checkpoint's config.json names no model_type.")
    module_name = f"transformers.models.{model_type}.video_processing_{model_type}"
    needs_tv = (
        f"{name} needs torchvision (transformers {_transformers_version()} has no torchvision-free video "
        "processor for this model); install the torchvision build that matches your torch "
        f"({torch.__version__}), e.g. `pip install torchvision`."
    )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelLoadError(needs_tv) from err
    base = getattr(module, name, None)
    if base is None:
        raise ModelLoadError(f"{module_name} has no {name}; the checkpoint and this transformers do not match.")
    from transformers.image_processing_backends import TorchvisionBackend

    if base.resize is not TorchvisionBackend.resize:  # a model-specific resize calls torchvision directly
        raise ModelLoadError(needs_tv)
    return base


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


class TorchVideoOps:
    """Torch-only versions of the torchvision calls of transformers' `BaseVideoProcessor` pipeline."""

    def convert_to_rgb(self, video: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if video.shape[-3] == 1:
            return video.expand(*video.shape[:-3], 3, *video.shape[-2:])
        if video.shape[-3] == 4:  # alpha-composite on white, as transformers does
            dtype = video.dtype
            x = video.float() / 255 if dtype == torch.uint8 else video
            x = x[..., :3, :, :] * x[..., 3:, :, :] + (1 - x[..., 3:, :, :])
            return (x * 255).round().clamp(0, 255).to(dtype) if dtype == torch.uint8 else x
        return video

    def resize(
        self,
        image: torch.Tensor,
        size: Any,
        resample: Any = None,
        antialias: bool = True,
        **kwargs: Any,
    ) -> torch.Tensor:
        from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
        from transformers.image_utils import ChannelDimension, get_image_size_for_max_height_width

        if size.shortest_edge and size.longest_edge:
            new_size = get_size_with_aspect_ratio(image.size()[-2:], size.shortest_edge, size.longest_edge)
        elif size.shortest_edge:
            new_size = get_resize_output_image_size(
                image, size=size.shortest_edge, default_to_square=False, input_data_format=ChannelDimension.FIRST
            )
        elif size.max_height and size.max_width:
            new_size = get_image_size_for_max_height_width(image.size()[-2:], size.max_height, size.max_width)
        elif size.height and size.width:
            new_size = (size.height, size.width)
        else:
            raise ValueError(f"size must give height and width, max_height and max_width, or shortest_edge; got {size}")
        return interpolate_frames(image, tuple(new_size), _torch_mode(resample), antialias)

    def normalize(self, image: torch.Tensor, mean: Any, std: Any, inplace: bool = False, **kwargs: Any) -> torch.Tensor:
        mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
        std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
        return (image - mean_t) / std_t

    def center_crop(self, image: torch.Tensor, size: Any, **kwargs: Any) -> torch.Tensor:
        if size.height is None or size.width is None:
            raise ValueError(f"center crop needs height and width, got {size}")
        height, width = image.shape[-2:]
        pad_w, pad_h = max(size.width - width, 0), max(size.height - height, 0)
        if pad_w or pad_h:
            image = F.pad(image, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
            height, width = image.shape[-2:]
        top, left = int((height - size.height) / 2.0), int((width - size.width) / 2.0)
        return image[..., top : top + size.height, left : left + size.width]


def _torch_mode(resample: Any) -> str:
    """PIL resampling filter -> `F.interpolate` mode (LANCZOS -> bicubic and BOX / HAMMING -> bilinear, antialiased:
    the nearest kernels torch has)."""
    if resample is None:
        return "bilinear"
    value = getattr(resample, "value", resample)
    modes = {0: "nearest-exact", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bilinear"}
    if isinstance(value, int) and value in modes:
        return modes[value]
    name = str(getattr(resample, "name", resample)).lower()
    return "nearest-exact" if "nearest" in name else "bilinear" if "bilinear" in name else "bicubic"


def interpolate_frames(image: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool) -> torch.Tensor:
    """torchvision's tensor resize: uint8 frames on CPU go through torch's native uint8 (PIL-compatible) kernel;
    elsewhere float interpolation, then clamp + round back to the input's integer dtype."""
    if tuple(image.shape[-2:]) == size:
        return image
    lead = image.shape[:-3]
    x = image.reshape(-1, *image.shape[-3:])
    dtype = x.dtype
    native = dtype == torch.uint8 and x.device.type == "cpu" and mode in ("bilinear", "bicubic")
    if native:
        x = F.interpolate(x.contiguous(), size=size, mode=mode, align_corners=False, antialias=antialias)
        return x.reshape(*lead, *x.shape[-3:])
    x = x.float() if not x.is_floating_point() else x
    if mode == "nearest-exact":
        x = F.interpolate(x, size=size, mode=mode)
    else:
        x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)
    if not dtype.is_floating_point:
        x = x.clamp(0, 255).round().to(dtype)
    return x.reshape(*lead, *x.shape[-3:])


@cache
def torch_video_processor_class(base: type) -> type:
    """`base` (a transformers video processor class that keeps the base resize) with torch ops in place of its
    torchvision calls; same name, so configs it saves read as `base`'s."""
    return type(base.__name__, (TorchVideoOps, base), {"__module__": __name__, "__doc__": base.__doc__})


@cache
def accepting_processor_class(base: type) -> type:
    """`base` (a transformers processor class) accepting a torch-only video processor: without torchvision,
    transformers cannot resolve `VideoProcessorMixin` for its own argument check."""
    from transformers.video_processing_utils import VideoProcessorMixin

    def check_argument_for_proper_class(self: Any, argument_name: str, argument: Any) -> Any:
        if argument_name == "video_processor" and isinstance(argument, VideoProcessorMixin):
            return type(argument)
        return base.check_argument_for_proper_class(self, argument_name, argument)

    namespace = {"__module__": __name__, "__doc__": base.__doc__}
    namespace["check_argument_for_proper_class"] = check_argument_for_proper_class
    return type(base.__name__, (base,), namespace)


# --------------------------------------------------------------------------------------------------------------
# Prompt, answer, timing
