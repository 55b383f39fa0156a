"""``sharp_llava_onevision``: lmms-eval's ``llava_hf`` (simple and chat) on LLaVA-OneVision checkpoints, pruned."""

from __future__ import annotations

from lmms_eval.models.chat.llava_hf import LlavaHf as _LlavaHfChat
from lmms_eval.models.simple.llava_hf import LlavaHf as _LlavaHf

from .mixin import SharpPruneMixin


class SharpLlavaOneVision(SharpPruneMixin, _LlavaHf):
    """lmms-eval's ``llava_hf`` (LLaVA-OneVision checkpoints), pruned. Model id ``sharp_llava_onevision``."""

    _sharp_model_id = "sharp_llava_onevision"
    _sharp_model_types = ("llava_onevision",)
    _sharp_default_pretrained = "llava-hf/llava-onevision-qwen2-7b-ov-hf"


class SharpLlavaOneVisionChat(SharpPruneMixin, _LlavaHfChat):
    """lmms-eval's chat ``llava_hf`` (LLaVA-OneVision checkpoints), pruned."""

    _sharp_model_id = "sharp_llava_onevision"
    _sharp_model_types = ("llava_onevision",)
    _sharp_default_pretrained = "llava-hf/llava-onevision-qwen2-7b-ov-hf"


__all__ = ["SharpLlavaOneVision", "SharpLlavaOneVisionChat"]
