"""PyramidKV: pyramid allocation over layers, observation-window scoring."""

from __future__ import annotations

from kvpress_lab.presets import Preset
from kvpress_lab.strategies.snapkv import PAPER_SNAPKV_SCORER

__all__ = ["PYRAMIDKV"]

PYRAMIDKV = Preset(
    name="pyramidkv",
    description="PyramidKV: pyramid budgets (beta=20, budget conserved), observation-window scoring (W=8, max pool 7)",
    recipe={"allocator": "pyramid", "scorer": "snapkv_window", "window": 8,
            "allocator_kwargs": {"beta": 20, "rounding": "conserve"}, "scorer_kwargs": dict(PAPER_SNAPKV_SCORER)},
    paper="https://arxiv.org/abs/2406.02069",
)
