"""What `sharp-prune speed` measures: its options, validated before any model is built."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import check_layer, variants
from ..errors import ConfigError
from ..steps.sliding import check_linear_layer_k
from .shapes import SHAPES

BASELINE = "none"
DEFAULT_METHODS = ("fastv", "feather", "sharp", "sharp-cached")
DEFAULT_RETENTIONS = (0.1, 0.2, 0.3)
SPEED_DTYPES = ("bf16", "fp32")  # names in `sharp_prune.models.loading.DTYPES`


@dataclass(frozen=True)
class SpeedOptions:
    """Everything `run_speed` measures; echoed into the JSON file.

    Args:
        shape: a key of `SHAPES`.
        frames, tokens_per_frame: the video, F x T visual tokens.
        prefix_tokens, suffix_tokens: text before the video and the question after it.
        scenes: None (every frame has its own random tokens) or S (frames repeat within S equal scenes).
        methods: in-LLM methods to time against the unpruned baseline (`none`, always run); names of
            any method or named variant (`sharp_prune.config.variants()`: `sharp` with the PosC prior per input,
            `sharp-cached` with the cached prior, ...).
        retentions: retention values r in (0, 1] for every method.
        layer: K, the first decoder layer that sees only the kept tokens.
        warmup, repeats: untimed and timed forwards per configuration.
        dtype: "bf16" or "fp32". device: "cpu", "cuda" or "auto" (cuda when available).
        attn_implementation: "sdpa", "eager" or "flash_attention_2".
        threads: torch CPU threads (None: torch's default).
        seed: seed of the weights and token ids.
        memory: measure CPU memory with an extra, untimed forward under `LiveTensorBytes`.
        out: folder of the JSON and PNG files (created).
        plot: write the PNG (needs matplotlib).
    """

    shape: str = "smollm2-135m"
    frames: int = 32
    tokens_per_frame: int = 196
    prefix_tokens: int = 14
    suffix_tokens: int = 20
    scenes: int | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    retentions: tuple[float, ...] = DEFAULT_RETENTIONS
    layer: int = 2
    warmup: int = 2
    repeats: int = 5
    dtype: str = "bf16"
    device: str = "auto"
    attn_implementation: str = "sdpa"
    threads: int | None = None
    seed: int = 0
    memory: bool = True
    out: str = "outputs/speed"
    plot: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "retentions", tuple(float(r) for r in self.retentions))
        if self.shape not in SHAPES:
            raise ConfigError(f"unknown shape {self.shape!r}; choose one of {', '.join(SHAPES)}.")
        for name in ("frames", "tokens_per_frame", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("prefix_tokens", "warmup"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.suffix_tokens < 1:
            raise ConfigError("suffix_tokens must be >= 1: ShaRP scores with the question after the video.")
        if self.scenes is not None and not 1 <= self.scenes <= self.frames:
            raise ConfigError(f"scenes must be in [1, frames={self.frames}], got {self.scenes}.")
        known = set(variants())
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise ConfigError(f"unknown methods {unknown}; choose from {', '.join(sorted(known))}.")
        if not self.retentions or not all(math.isfinite(r) and 0.0 < r <= 1.0 for r in self.retentions):
            raise ConfigError(f"retentions must be numbers in (0, 1], got {list(self.retentions)}.")
        if self.dtype not in SPEED_DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(SPEED_DTYPES)}, got {self.dtype!r}.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device cuda was asked for but torch sees no CUDA GPU; use --device cpu.")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}.")
        check_layer(self.layer, SHAPES[self.shape].config["num_hidden_layers"], f"the {self.shape} shape")
        kinds = SHAPES[self.shape].layer_types
        check_linear_layer_k(kinds, self.layer, f"the {self.shape} shape")  # before building a model

    @property
    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    @property
    def stem(self) -> str:
        """File name stem of this run's outputs."""
        return f"speed_{self.shape}_{self.resolved_device}_{self.dtype}_{self.frames}x{self.tokens_per_frame}"

    def command_line(self) -> str:
        """The `sharp-prune speed` command that reproduces these options."""
        parts = [
            "sharp-prune speed",
            f"--shape {self.shape}",
            f"--frames {self.frames}",
            f"--tokens-per-frame {self.tokens_per_frame}",
            f"--prefix-tokens {self.prefix_tokens}",
            f"--suffix-tokens {self.suffix_tokens}",
            f"--methods {','.join(self.methods)}",
            f"--retentions {','.join(f'{r:g}' for r in self.retentions)}",
            f"--layer {self.layer}",
            f"--warmup {self.warmup}",
            f"--repeats {self.repeats}",
            f"--dtype {self.dtype}",
            f"--device {self.device}",
            f"--attn {self.attn_implementation}",
            f"--seed {self.seed}",
            f"--out {self.out}",
        ]
        if self.scenes is not None:
            parts.append(f"--scenes {self.scenes}")
        if self.threads is not None:
            parts.append(f"--threads {self.threads}")
        if not self.memory:
            parts.append("--no-memory")
        if not self.plot:
            parts.append("--no-plot")
        return " ".join(parts)
