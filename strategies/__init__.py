"""Built-in named presets (installed as ``kvpress_lab.strategies``)."""

from __future__ import annotations

from kvpress_lab.hookspecs import hookimpl
from kvpress_lab.presets import Preset
from kvpress_lab.strategies.snapkv import SNAPKV

__all__ = ["PRESETS", "kvpress_lab_register_presets"]

PRESETS: tuple[Preset, ...] = (SNAPKV,)


@hookimpl
def kvpress_lab_register_presets() -> list[Preset]:
    """Register the built-in presets."""
    return list(PRESETS)
