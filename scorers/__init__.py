"""Built-in token scorers (installed as ``kvpress_lab.scorers``)."""

from __future__ import annotations

from kvpress_lab.hookspecs import hookimpl
from kvpress_lab.scorers.snapkv_window import SnapKVWindowScorer

__all__ = ["SnapKVWindowScorer", "kvpress_lab_register_scorers"]


@hookimpl
def kvpress_lab_register_scorers() -> list[type]:
    """Register the built-in scorers."""
    return [SnapKVWindowScorer]
