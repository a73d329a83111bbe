"""kvpress_lab: composable KV-cache compression for transformers models.

A compression method is a :class:`Recipe` of three roles, each a plugin registered by name:
an *allocator* (entries per layer), a *scorer* (which entries matter) and an *executor*
(selection and gather). Importing this package patches nothing and loads no model; the names
whose modules need torch (:class:`Recipe`, :class:`LayerView`, the protocols) are imported on
first use. :func:`cache_report` describes what a (compressed) KV cache holds.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

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
from kvpress_lab.cache_reports import CacheReport, LayerReport, cache_report
from kvpress_lab.hookspecs import hookimpl
from kvpress_lab.presets import Preset
from kvpress_lab.registry import (
    available,
    get_registry,
    register,
    register_plugin,
    reload_registry,
    unregister,
    unregister_plugin,
)

if TYPE_CHECKING:
    from kvpress_lab.layer_view import LayerView
    from kvpress_lab.protocols import Allocator, BudgetRequest, Executor, Scorer, Selection
    from kvpress_lab.answers import Answer, ask
    from kvpress_lab.engine.shared_prefill import compress_many
    from kvpress_lab.recipe import Recipe

#: Public names whose modules import torch: loaded on first access (PEP 562), so that importing
#: ``kvpress_lab`` (and ``kvpress-lab --help``) stays light.
_LAZY = {
    "Recipe": "kvpress_lab.recipe",
    "LayerView": "kvpress_lab.layer_view",
    "BudgetRequest": "kvpress_lab.protocols",
    "Selection": "kvpress_lab.protocols",
    "Allocator": "kvpress_lab.protocols",
    "Scorer": "kvpress_lab.protocols",
    "Executor": "kvpress_lab.protocols",
    "ask": "kvpress_lab.answers",
    "compress_many": "kvpress_lab.engine.shared_prefill",
    "Answer": "kvpress_lab.answers",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kvpress_lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


try:
    __version__ = version("kvpress-lab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    "Recipe",
    "Preset",
    "cache_report",
    "CacheReport",
    "LayerReport",
    "ask",
    "Answer",
    "compress_many",
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
