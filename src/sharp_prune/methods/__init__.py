"""Pruning methods: one module each, with its config class (fields, checks, variants, costs) and selector.

Adding a method is one module here, imported below, plus its tests.
"""

from ..config import available_methods, register_method
from . import divprune, fastv, feather, none, random, sharp, uniform  # noqa: F401  (registers the methods)
from .base import Selection, SelectionInput, Selector, top_k_sorted
from .divprune import DivPruneConfig
from .fastv import FastVConfig
from .feather import FeatherConfig
from .none import NoneConfig
from .random import RandomConfig
from .sharp import ShaRPConfig
from .uniform import UniformConfig

__all__ = [
    "DivPruneConfig",
    "FastVConfig",
    "FeatherConfig",
    "NoneConfig",
    "RandomConfig",
    "Selection",
    "SelectionInput",
    "Selector",
    "ShaRPConfig",
    "UniformConfig",
    "available_methods",
    "register_method",
    "top_k_sorted",
]
