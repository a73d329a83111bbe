"""Model loading for kvpress_lab, including the embedded default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

from . import checkpoint, load, locate
from .checkpoint import *  # noqa: F403  (each module's own __all__)
from .load import *  # noqa: F403
from .locate import *  # noqa: F403

__all__ = sorted([*locate.__all__, *checkpoint.__all__, *load.__all__])
