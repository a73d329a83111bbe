"""Model loading for kvpress_lab: :func:`load_model` and the embedded default model (SmolLM2-135M-Instruct).

The names of :mod:`.locate` and :mod:`.sources` (no torch) are imported here; those of :mod:`.checkpoint` and
:mod:`.load` (which import torch) on first access (PEP 562), so that the command line can read
``EMBEDDED_MODEL_NAME`` while building its parser without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import locate, sources
from .locate import *  # noqa: F403  (its own __all__)
from .sources import *  # noqa: F403

if TYPE_CHECKING:
    from .checkpoint import CACHE_DIR_ENV, embedded_checkpoint_dir
    from .load import EMBEDDED_MODEL_ALIASES, is_embedded_model_name, load_model

#: Public names of the modules that import torch (or transformers), by module.
_LAZY = {
    "CACHE_DIR_ENV": "checkpoint",
    "embedded_checkpoint_dir": "checkpoint",
    "EMBEDDED_MODEL_ALIASES": "load",
    "is_embedded_model_name": "load",
    "load_model": "load",
}

__all__ = sorted([*locate.__all__, *sources.__all__, *_LAZY])


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        if name in ("checkpoint", "load", "convert"):  # submodules, e.g. ``kvpress_lab.models.checkpoint``
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
