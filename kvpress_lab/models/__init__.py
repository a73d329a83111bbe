"""Model loading for kvpress_lab, including the embedded default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

from . import embedded
from .embedded import *  # noqa: F403  (the public names are embedded's own __all__)

__all__ = list(embedded.__all__)
