"""kvpress_lab: composable KV-cache compression for transformers models.

A compression method is a :class:`Recipe` of three roles, each a plugin registered by name:
an *allocator* (entries per layer), a *scorer* (which entries matter) and an *executor*
(selection and gather). Importing this package patches nothing and loads no model.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from kvpress_lab.errors import (
    CacheReuseError,
    ConfigurationError,
    DuplicateStrategyError,
    KVPressLabError,
    PluginError,
    UnknownStrategyError,
    UnsupportedCacheError,
    UnsupportedModelError,
)
from kvpress_lab.hookspecs import hookimpl
from kvpress_lab.layer_view import LayerView
from kvpress_lab.presets import Preset
from kvpress_lab.protocols import Allocator, BudgetRequest, Executor, Scorer, Selection
from kvpress_lab.recipe import Recipe
from kvpress_lab.registry import (
    available,
    get_registry,
    register,
    register_plugin,
    reload_registry,
    unregister,
    unregister_plugin,
)

try:
    __version__ = version("kvpress-lab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    "Recipe",
    "Preset",
    "hookimpl",
    "available",
    "get_registry",
    "reload_registry",
    "register",
    "register_plugin",
    "unregister",
    "unregister_plugin",
    "LayerView",
    "BudgetRequest",
    "Selection",
    "Allocator",
    "Scorer",
    "Executor",
    "KVPressLabError",
    "UnknownStrategyError",
    "DuplicateStrategyError",
    "PluginError",
    "UnsupportedModelError",
    "ConfigurationError",
    "UnsupportedCacheError",
    "CacheReuseError",
]
