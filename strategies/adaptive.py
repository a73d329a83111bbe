"""Adaptive (CAKE-style): SnapKV with per-layer budgets from each prompt's own attention entropy."""

from __future__ import annotations

from kvpress_lab.presets import Preset
from kvpress_lab.strategies.snapkv import PAPER_SNAPKV_SCORER

__all__ = ["ADAPTIVE"]

ADAPTIVE = Preset(
    name="adaptive",
    description="Adaptive (CAKE-style): layer budgets proportional to each prompt's window-attention entropy, W=8, max pool 7",
    recipe={"allocator": "adaptive", "scorer": "snapkv_window", "window": 8,
            "allocator_kwargs": {"statistic": "entropy", "floor": 0.2}, "scorer_kwargs": dict(PAPER_SNAPKV_SCORER)},
    paper="https://arxiv.org/abs/2503.12491",
)
