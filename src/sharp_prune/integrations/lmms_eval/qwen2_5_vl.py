"""``sharp_qwen2_5_vl``: lmms-eval's ``qwen2_5_vl`` (simple and chat), pruned."""

from __future__ import annotations

from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL as _Qwen2_5_VLChat
from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL as _Qwen2_5_VL

from .mixin import SharpPruneMixin


class SharpQwen2_5_VL(SharpPruneMixin, _Qwen2_5_VL):
    """lmms-eval's ``qwen2_5_vl``, pruned. Model id ``sharp_qwen2_5_vl``."""

    _sharp_model_id = "sharp_qwen2_5_vl"
    _sharp_model_types = ("qwen2_5_vl",)
    _sharp_default_pretrained = "Qwen/Qwen2.5-VL-7B-Instruct"
    _sharp_needs_torchvision = True


class SharpQwen2_5_VLChat(SharpPruneMixin, _Qwen2_5_VLChat):
    """lmms-eval's chat ``qwen2_5_vl``, pruned."""

    _sharp_model_id = "sharp_qwen2_5_vl"
    _sharp_model_types = ("qwen2_5_vl",)
    _sharp_default_pretrained = "Qwen/Qwen2.5-VL-7B-Instruct"
    _sharp_needs_torchvision = True


__all__ = ["SharpQwen2_5_VL", "SharpQwen2_5_VLChat"]
