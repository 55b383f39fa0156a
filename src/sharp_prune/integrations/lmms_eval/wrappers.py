"""The pruned lmms-eval wrappers, built from the model families' entries (`ModelAdapter.lmms`).

Each family names the upstream wrapper it runs behind (simple and chat); the class lmms-eval loads is that
wrapper with `SharpPruneMixin` in front, made here on first use (lmms-eval imports a model's class only when
the model is asked for). Class names: `Sharp<Upstream>` and `Sharp<Upstream>Chat`, e.g. ``SharpLlavaHf``.
Adding a family with an lmms-eval wrapper touches nothing here.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from ...models import lmms_wrappers
from .mixin import SharpPruneMixin


def class_names() -> dict[str, tuple[str | None, str | None]]:
    """lmms-eval model id -> (simple class name or None, chat class name or None) in this module."""
    names = {}
    for model_id, (_, wrapper) in lmms_wrappers().items():
        upstream = wrapper.simple or wrapper.chat  # a family with a chat wrapper only is named after it
        if upstream is None:
            continue
        stem = "Sharp" + upstream.rsplit(":", 1)[1].replace("_", "")
        names[model_id] = (stem if wrapper.simple else None, stem + "Chat" if wrapper.chat else None)
    return names


def _build(name: str) -> type:
    for model_id, (family, wrapper) in lmms_wrappers().items():
        simple, chat = class_names()[model_id]
        if name not in (simple, chat):
            continue
        module_name, class_name = str(wrapper.chat if name == chat else wrapper.simple).split(":")
        upstream = getattr(importlib.import_module(module_name), class_name)
        attributes: dict[str, Any] = {
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"lmms-eval's {module_name}.{class_name}, pruned by sharp-prune. Model id ``{model_id}``.",
            "_sharp_model_id": model_id,
            "_sharp_model_types": family.model_types,
            "_sharp_default_pretrained": wrapper.default_pretrained,
        }
        cls = type(name, (SharpPruneMixin, upstream), attributes)
        setattr(sys.modules[__name__], name, cls)  # built once; pickling finds it by name
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __getattr__(name: str) -> type:
    return _build(name)
