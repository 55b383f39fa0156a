"""Pruning methods, one selector class each, looked up by `PruneConfig.method`."""

from . import divprune, fastv, feather, sharp, simple  # noqa: F401  (registers the methods)
from .base import (
    Selection,
    SelectionInput,
    Selector,
    available_methods,
    build_selector,
    register_method,
    top_k_sorted,
)

__all__ = [
    "Selection",
    "SelectionInput",
    "Selector",
    "available_methods",
    "build_selector",
    "register_method",
    "top_k_sorted",
]
