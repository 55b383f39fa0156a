"""``sharp_qwen2_vl``: lmms-eval's ``qwen2_vl``, pruned."""

from __future__ import annotations

from lmms_eval.models.simple.qwen2_vl import Qwen2_VL as _Qwen2_VL

from .mixin import SharpPruneMixin


class SharpQwen2VL(SharpPruneMixin, _Qwen2_VL):
    """lmms-eval's ``qwen2_vl``, pruned. Model id ``sharp_qwen2_vl``."""

    _sharp_model_id = "sharp_qwen2_vl"
    _sharp_model_types = ("qwen2_vl",)
    _sharp_default_pretrained = "Qwen/Qwen2-VL-7B-Instruct"
    _sharp_needs_torchvision = True


__all__ = ["SharpQwen2VL"]
