"""sharp-prune: training-free visual-token pruning inside Hugging Face video LLMs.

import sharp_prune as sp
handle = sp.apply(model, sp.PruneConfig(method="fastv", retention=0.25, layer=2))
out = model.generate(**inputs, max_new_tokens=16)   # prunes once, in prefill
handle.last.keep_positions                            # what continued past layer K
handle.remove()                                       # the model is as before
"""

from .config import PruneConfig, available_methods, config_for, register_method
from .engine import PruneHandle, apply
from .errors import (
    AlreadyAppliedError,
    ConfigError,
    ConfigTypeError,
    InputError,
    ModelLoadError,
    ProtocolError,
    SharpPruneError,
    UnsupportedModelError,
    VideoError,
)
from .methods import (  # importing the methods registers them
    DivPruneConfig,
    FastVConfig,
    FeatherConfig,
    NoneConfig,
    RandomConfig,
    Selector,
    ShaRPConfig,
    UniformConfig,
)
from .models import SUPPORTED_MODELS, ModelAdapter
from .record import PruneRecord
from .steps.locate import VisualLayout, frame_map_for_span

__version__ = "0.2.0"

__all__ = [
    "DivPruneConfig",
    "FastVConfig",
    "FeatherConfig",
    "NoneConfig",
    "RandomConfig",
    "ShaRPConfig",
    "UniformConfig",
    "config_for",
    "SUPPORTED_MODELS",
    "AlreadyAppliedError",
    "ConfigError",
    "ConfigTypeError",
    "InputError",
    "ModelAdapter",
    "ModelLoadError",
    "ProtocolError",
    "PruneConfig",
    "PruneHandle",
    "PruneRecord",
    "Selector",
    "SharpPruneError",
    "UnsupportedModelError",
    "VideoError",
    "VisualLayout",
    "__version__",
    "apply",
    "available_methods",
    "frame_map_for_span",
    "register_method",
]
