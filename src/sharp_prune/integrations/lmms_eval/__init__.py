"""lmms-eval plugin: pruned video LLMs behind lmms-eval's own model wrappers.

Installed with ``pip install 'sharp-prune[eval]'``, it registers one model per family entry that names an
upstream wrapper (`ModelAdapter.lmms`) through lmms-eval's entry-point group ``lmms_eval.models`` (no fork,
nothing vendored); today:

- ``sharp_llava_onevision``: lmms-eval's ``llava_hf`` (the Hugging Face LLaVA-OneVision path),
- ``sharp_qwen2_vl``: lmms-eval's ``qwen2_vl``; ``sharp_qwen2_5_vl``: ``qwen2_5_vl``,
- ``sharp_qwen3_vl``: ``qwen3_vl``; ``sharp_qwen3_5``: ``qwen3_5``,
- ``sharp_internvl``: ``internvl_hf`` (chat only); ``sharp_gemma4``: ``gemma4`` (simple),

each a subclass of the upstream wrapper that prunes with `sharp_prune.apply` right after the model loads and
reads the pruning config from ``--model_args``::

    python -m lmms_eval --model sharp_llava_onevision \\
        --model_args pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf,method=sharp,retention=0.2,layer=2 \\
        --tasks videomme --batch_size 1 --output_path ./logs

Per-sample kept-token counts, FLOPs and prefill times go to ``prune_log`` (see `stats.PrefillStats`).
This module imports nothing heavy: lmms-eval reads the manifests below at start-up and imports a wrapper
class (built from the family's entry, `wrappers.py`) only when its model is asked for.
"""

from __future__ import annotations

from typing import Any

from .model_args import PLUGIN_OPTIONS, PluginOptions, split_model_args


def _models() -> dict[str, tuple[str | None, str | None]]:
    from .wrappers import class_names

    path = f"{__name__}.wrappers."
    return {
        model_id: (path + simple if simple else None, path + chat if chat else None)
        for model_id, (simple, chat) in class_names().items()
    }


#: model id -> (simple class or None, chat class or None), as import paths (at least one of them).
MODELS: dict[str, tuple[str | None, str | None]] = _models()


def manifests() -> list[Any]:
    """lmms-eval entry point (group ``lmms_eval.models``): one `ModelManifest` per pruned model.

    Like the upstream wrappers they extend, a model with a chat class resolves to it by default; lmms-eval's
    ``--force_simple`` picks the simple one.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(
            model_id=model_id,
            simple_class_path=simple,
            chat_class_path=chat,
        )
        for model_id, (simple, chat) in MODELS.items()
    ]


__all__ = ["MODELS", "PLUGIN_OPTIONS", "PluginOptions", "manifests", "split_model_args"]
