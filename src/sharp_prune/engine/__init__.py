"""The engine: `apply(model, config)` attaches the hooks that run each prefill's steps in order."""

from .handle import PruneHandle, apply

__all__ = ["PruneHandle", "apply"]
